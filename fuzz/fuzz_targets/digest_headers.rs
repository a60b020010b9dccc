//! The digest headers a caller may claim (`Repr-Digest`, `Content-Digest`,
//! `X-Content-SHA256`): any values, never a panic; a digest accepted is one the headers spell.
#![no_main]

use base64::Engine as _;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut headers = http::HeaderMap::new();
    // Values separated by NUL, spread over the three names.
    let names = ["repr-digest", "content-digest", "x-content-sha256"];
    for (i, raw) in data.split(|b| *b == 0).enumerate().take(8) {
        if let Ok(v) = http::HeaderValue::from_bytes(raw) {
            headers.append(names[i % names.len()], v);
        }
    }
    if let Ok(Some(d)) = fxgate::upload::digest::claimed(&headers) {
        let b64 = base64::engine::general_purpose::STANDARD.encode(d);
        let hex: String = d.iter().map(|b| format!("{b:02x}")).collect();
        let spelled = headers.iter().any(|(_, v)| {
            let v = String::from_utf8_lossy(v.as_bytes()).to_ascii_lowercase();
            v.contains(&b64.to_ascii_lowercase()) || v.contains(&hex)
        });
        assert!(spelled, "accepted a digest no header spells");
    }
});
