//! The credential splice of JSON passthrough calls: for any caller body that is a JSON object,
//! the body sent on holds exactly one `corpAccessToken` and one `corpId`, fxgate's, and every
//! other member is the caller's, unchanged.
#![no_main]

use fxgate::routes::members::Members;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(members) = Members::parse(data) else {
        return;
    };
    let out = members.rebuild(
        &["corpAccessToken", "corpId"],
        &[("corpAccessToken", "TOKEN"), ("corpId", "CORP")],
    );
    let again = Members::parse(&out).expect("the rebuilt body is a JSON object");
    assert_eq!(again.str_value("corpAccessToken").as_deref(), Some("TOKEN"));
    assert_eq!(again.str_value("corpId").as_deref(), Some("CORP"));
    // serde_json's `Value` refuses what Fxiaoke may take (numbers beyond f64, say), which
    // fxgate passes on untouched; the member-by-member check runs where it can parse.
    let Ok(serde_json::Value::Object(before)) = serde_json::from_slice(data) else {
        return;
    };
    let parsed: serde_json::Value = serde_json::from_slice(&out).expect("valid JSON");
    let obj = parsed.as_object().expect("an object");
    assert_eq!(obj["corpAccessToken"], "TOKEN");
    assert_eq!(obj["corpId"], "CORP");
    // Exactly once each: no caller spelling (escaped, repeated) survives beside fxgate's.
    assert_eq!(
        obj.len(),
        before
            .keys()
            .filter(|k| *k != "corpAccessToken" && *k != "corpId")
            .count()
            + 2
    );
    for (k, v) in &before {
        if k != "corpAccessToken" && k != "corpId" {
            assert_eq!(obj.get(k), Some(v), "member {k} changed");
        }
    }
});
