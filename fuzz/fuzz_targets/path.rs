//! One spelling per path (design §9, Boundaries): whatever bytes a request path holds, a path
//! `route::canonical` accepts has no dot segment, empty segment, escape, `;` or `\` in it, is
//! bounded, and names a token endpoint only by its exact spelling; one it refuses matches no
//! route. `fuzz/seeds/path/` starts the corpus with dot segments, `%2e`, `..;`, backslashes
//! and token-endpoint spellings.
#![no_main]

use fxgate::route::{canonical, ApiStyle, Route, RouteMatch, MAX_PATH};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(path) = std::str::from_utf8(data) else {
        return;
    };
    let matched = RouteMatch::of(path);
    if canonical(path).is_err() {
        assert!(matched.refused.is_some() && matched.route.is_none(), "{path:?}");
        return;
    }
    assert!(matched.refused.is_none());
    assert!(path.len() <= MAX_PATH && path.starts_with('/'));
    for segment in path[1..].split('/') {
        assert!(!segment.is_empty() && segment != "." && segment != "..", "{path:?}");
        assert!(!segment.contains(['%', ';', '\\']), "{path:?}");
    }
    for style in ApiStyle::ALL {
        let t = style.token_path();
        if path.to_ascii_lowercase().starts_with(&t.to_ascii_lowercase()) {
            assert_eq!(path, t);
            assert_eq!(matched.route, Some(Route::Token(style)));
        }
    }
    if matched.route == Some(Route::Passthrough) {
        assert!(path.starts_with("/cgi/"));
    }
});
