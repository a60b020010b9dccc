//! Config loading on any text after a secret: never a panic, and whatever the error, it never
//! quotes the secret (an unterminated `app_secret = "…` included).
#![no_main]

use libfuzzer_sys::fuzz_target;

const SECRET: &str = "Zq8sEcReT4fUzZ";

fuzz_target!(|data: &[u8]| {
    let Ok(rest) = std::str::from_utf8(data) else {
        return;
    };
    if rest.contains(SECRET) {
        return;
    }
    let text = format!("[corps.default]\napp_secret = \"{SECRET}{rest}");
    if let Err(e) = fxgate::Config::from_toml(&text, Default::default()) {
        assert!(
            !e.to_string().contains(SECRET),
            "the error quotes the secret: {e}"
        );
    }
});
