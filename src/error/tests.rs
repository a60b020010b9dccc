//! Every variant: its code, status, description, `Retry-After` and its row in docs/api.md.

use super::*;

/// One of each variant. The `match` in the test has no wildcard: a new variant fails to
/// compile until it is listed here too.
fn every() -> Vec<GatewayError> {
    use GatewayError::*;
    let s = || String::from("x");
    vec![
        MalformedBody { detail: s() },
        BadRequest { detail: s() },
        DigestMismatch { computed: s() },
        PathNotCanonical { reason: "x" },
        Unauthenticated,
        TokenCannotMint,
        KeyExpired,
        TokenUnknown,
        RouteForbidden { client: s() },
        UserForbidden {
            client: s(),
            user: s(),
        },
        NotFound,
        MethodNotAllowed,
        PayloadTooLarge {
            seen: 2,
            limit: 1,
            route: "/media/upload",
        },
        UnsupportedType { detected: "x" },
        QuotaExceeded {
            kind: "bytes_per_day",
            retry_after: Duration::from_secs(1),
        },
        QuotaStoreDown,
        UpstreamBudget {
            retry_after: Duration::from_secs(1),
            daily: true,
            upstream_code: None,
        },
        UpstreamUnreachable { source: "x".into() },
        UpstreamInvalid { detail: s() },
        NoToken { corp: s() },
        TokenRejected,
        UpstreamTimeout {
            after: Duration::from_secs(3),
        },
        Overloaded,
        BodyInterrupted,
        Internal { detail: s() },
        LengthRequired,
        NoFileUser { client: s() },
        FileServiceRefused {
            step: 2,
            code: s(),
            message: s(),
        },
        UploadHostRefused { host: s() },
    ]
}

#[test]
fn every_variant_has_a_code_that_embeds_its_status_and_is_documented() {
    use GatewayError::*;
    let all = every();
    let mut seen = std::collections::BTreeSet::new();
    for err in &all {
        let index = match err {
            MalformedBody { .. } => 0,
            BadRequest { .. } => 1,
            DigestMismatch { .. } => 2,
            PathNotCanonical { .. } => 3,
            Unauthenticated => 4,
            TokenCannotMint => 5,
            KeyExpired => 6,
            TokenUnknown => 7,
            RouteForbidden { .. } => 8,
            UserForbidden { .. } => 9,
            NotFound => 10,
            MethodNotAllowed => 11,
            PayloadTooLarge { .. } => 12,
            UnsupportedType { .. } => 13,
            QuotaExceeded { .. } => 14,
            QuotaStoreDown => 15,
            UpstreamBudget { .. } => 16,
            UpstreamUnreachable { .. } => 17,
            UpstreamInvalid { .. } => 18,
            NoToken { .. } => 19,
            TokenRejected => 20,
            UpstreamTimeout { .. } => 21,
            Overloaded => 22,
            BodyInterrupted => 23,
            Internal { .. } => 24,
            LengthRequired => 25,
            NoFileUser { .. } => 26,
            FileServiceRefused { .. } => 27,
            UploadHostRefused { .. } => 28,
        };
        seen.insert(index);
    }
    assert_eq!(seen.len(), 29, "every() lists each variant once");
    let docs = include_str!("../../docs/api.md");
    for err in all {
        let (status, code) = err.status_and_code();
        // TokenUnknown alone is Fxiaoke's code, not ours: an SDK must recognise it.
        if !matches!(err, TokenUnknown) {
            assert_eq!((code / 100) % 1000, u32::from(status.as_u16()), "{err:?}");
            assert_eq!(code / 100_000, 9, "{err:?}");
        }
        assert!(
            docs.contains(&format!("| {code} |")),
            "{code} ({err:?}) is not in docs/api.md's table"
        );
        assert!(!err.description().is_empty(), "{err:?}");
        let retry = err.retry_after().is_some();
        let resp = err.into_response("r1");
        assert_eq!(resp.status(), status);
        assert_eq!(
            resp.headers().contains_key(http::header::RETRY_AFTER),
            retry
        );
    }
}

#[test]
fn every_upload_413_says_the_routes_limit_in_upload_limit() {
    let too_large = |route| GatewayError::PayloadTooLarge {
        seen: 11,
        limit: 10,
        route,
    };
    let resp = too_large("/media/upload/file").into_response("r");
    assert_eq!(resp.headers()["upload-limit"], "max-size=10");
    let resp = too_large("/media/upload/message").into_response("r");
    assert_eq!(resp.headers()["upload-limit"], "max-size=10");
    // A JSON body over its limit is not an upload: no Upload-Limit.
    let resp = too_large("/cgi/*").into_response("r");
    assert!(!resp.headers().contains_key("upload-limit"));
}
