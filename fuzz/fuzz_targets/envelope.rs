//! Fxiaoke's answer read and passed through with `deduplicated` spliced in: whatever the
//! answer, no panic; a JSON object stays the same object plus the flag (keys, values, order).
#![no_main]

use bytes::Bytes;
use http_body_util::BodyExt as _;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let env = fxgate::upstream::envelope::Envelope::from_bytes(Bytes::copy_from_slice(data));
    let _ = env.code().label();
    let _ = env.trace_id();
    let original = env.json.clone();
    let resp =
        fxgate::upload::answer::passthrough(http::StatusCode::OK, env, Some(([7; 32], false)));
    let body = futures_util::FutureExt::now_or_never(resp.into_body().collect())
        .expect("a whole body is ready at once")
        .expect("a whole body does not fail")
        .to_bytes();
    match original {
        Some(mut map) => {
            let out: serde_json::Map<String, serde_json::Value> =
                serde_json::from_slice(&body).expect("the answer stays a JSON object");
            map.entry("deduplicated")
                .or_insert(serde_json::Value::Bool(false));
            // The splice keeps Fxiaoke's own `deduplicated`, if it sent one, as the caller's
            // value only when it rewrites; either way every other member is unchanged.
            for (k, v) in &map {
                if k != "deduplicated" {
                    assert_eq!(out.get(k), Some(v), "member {k} changed");
                }
            }
            assert_eq!(out.len(), map.len());
        }
        None => assert_eq!(&body[..], data, "a non-object is passed through unchanged"),
    }
});
