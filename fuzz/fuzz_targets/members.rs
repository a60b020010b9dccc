//! The credential splice of JSON passthrough calls: for any caller body that is a JSON object,
//! the body sent on holds exactly one `corpAccessToken` and one `corpId`, fxgate's, no other
//! member naming a credential in any spelling (`Credential::of`: lowercased, `_` and `-`
//! removed), and every other member is the caller's, unchanged. The user it names is a string
//! or the body is refused.
#![no_main]

use fxgate::routes::members::{Credential, Members};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(members) = Members::parse(data) else {
        return;
    };
    let _ = members.user();
    let out = members.without_credentials(&[("corpAccessToken", "TOKEN"), ("corpId", "CORP")]);
    let again = Members::parse(&out).expect("the rebuilt body is a JSON object");
    assert_eq!(again.str_value("corpAccessToken").as_deref(), Some("TOKEN"));
    assert_eq!(again.str_value("corpId").as_deref(), Some("CORP"));
    assert_eq!(again.user(), Ok(None), "no user survives the splice");
    // serde_json's `Value` refuses what Fxiaoke may take (numbers beyond f64, say), which
    // fxgate passes on untouched; the member-by-member check runs where it can parse.
    let Ok(serde_json::Value::Object(before)) = serde_json::from_slice(data) else {
        return;
    };
    let parsed: serde_json::Value = serde_json::from_slice(&out).expect("valid JSON");
    let obj = parsed.as_object().expect("an object");
    assert_eq!(obj["corpAccessToken"], "TOKEN");
    assert_eq!(obj["corpId"], "CORP");
    for k in obj.keys() {
        let injected = k == "corpAccessToken" || k == "corpId";
        assert!(injected || Credential::of(k).is_none(), "{k} forwarded");
    }
    // Exactly once each: no caller spelling (escaped, repeated, re-cased) survives.
    let kept = before.keys().filter(|k| Credential::of(k).is_none());
    assert_eq!(obj.len(), kept.count() + 2);
    for (k, v) in &before {
        if Credential::of(k).is_none() {
            assert_eq!(obj.get(k), Some(v), "member {k} changed");
        }
    }
});
