//! `oneshot` tests of the auth layer.
use super::*;
use crate::clock::{ManualClock, SystemClock};
use crate::config::ClientKey;
use crate::middleware::testing::{caller, registry, sessions, with_body, TestBody};

fn limit(max_body: u64) -> Arc<ArcSwap<crate::config::PassthroughConfig>> {
    Arc::new(ArcSwap::from_pointee(crate::config::PassthroughConfig {
        max_body,
        max_answer: 1 << 20,
    }))
}

fn pool() -> PreAuthPool {
    PreAuthPool::new(crate::config::Unauthenticated {
        max_requests: 4,
        max_bytes: 4096,
        timeout: Duration::from_secs(1),
    })
}
use crate::route::RouteMatch;
use std::time::Duration;
use tower::ServiceExt as _;

/// An inner service answering with the name of the principal it saw, and whether any
/// credential header reached it.
fn echo(
) -> impl Service<http::Request<TestBody>, Response = Resp, Error = GatewayError, Future = impl Send>
       + Clone
       + Send
       + 'static {
    tower::service_fn(|req: http::Request<TestBody>| async move {
        let name = req
            .extensions()
            .get::<Principal>()
            .map(|p| p.client.name.clone())
            .unwrap_or_default();
        let leaked = req.headers().contains_key(header::AUTHORIZATION)
            || req.headers().contains_key("x-api-key");
        Ok(http::Response::new(crate::body::full(format!(
            "{name} {leaked}"
        ))))
    })
}

async fn seen(req: http::Request<TestBody>) -> Result<String, GatewayError> {
    let layer = AuthLayer::new(
        registry(&[caller("alpha"), caller("beta")]),
        sessions(),
        limit(1024),
        pool(),
        SystemClock::shared(),
    );
    let resp = layer.layer(echo()).oneshot(req).await?;
    let body = crate::middleware::testing::body(resp).await;
    Ok(String::from_utf8(body.to_vec()).unwrap())
}

#[tokio::test]
async fn a_key_in_either_header_names_the_caller_and_never_goes_further() {
    let bearer = with_body("/x", &[("authorization", "Bearer beta-key")], "");
    assert_eq!(seen(bearer).await.unwrap(), "beta false");
    let api_key = with_body("/x", &[("x-api-key", "alpha-key")], "");
    assert_eq!(seen(api_key).await.unwrap(), "alpha false");
}

#[tokio::test]
async fn no_key_or_a_wrong_one_is_refused_even_with_a_certificate() {
    assert!(matches!(
        seen(with_body("/x", &[], "")).await,
        Err(GatewayError::Unauthenticated)
    ));
    let mut wrong = with_body("/x", &[("authorization", "Bearer nope")], "");
    let mut cert_caller = caller("gamma");
    cert_caller.cert_subject = Some("CN=gamma".into());
    wrong.extensions_mut().insert(PeerIdentity {
        subject: "CN=gamma".into(),
        common_name: Some("gamma".into()),
        fingerprint: String::new(),
    });
    let layer = AuthLayer::new(
        registry(&[cert_caller]),
        sessions(),
        limit(1024),
        pool(),
        SystemClock::shared(),
    );
    let err = layer.layer(echo()).oneshot(wrong).await.unwrap_err();
    assert!(matches!(err, GatewayError::Unauthenticated));
}

#[tokio::test]
async fn a_verified_certificate_names_its_caller_without_a_key() {
    let mut c = caller("gamma");
    c.keys.clear();
    c.cert_subject = Some("CN=gamma".into());
    let mut req = with_body("/x", &[], "");
    req.extensions_mut().insert(PeerIdentity {
        subject: "CN=gamma, O=Example".into(),
        common_name: Some("gamma".into()),
        fingerprint: String::new(),
    });
    let resp = AuthLayer::new(
        registry(&[c]),
        sessions(),
        limit(1024),
        pool(),
        SystemClock::shared(),
    )
    .layer(echo())
    .oneshot(req)
    .await
    .unwrap();
    assert_eq!(crate::middleware::testing::body(resp).await, "gamma false");
}

#[tokio::test]
async fn an_issued_token_names_its_caller_in_any_place_and_an_unknown_one_is_20016() {
    let sessions = sessions();
    let token = sessions
        .issue(
            "beta",
            ApiStyle::OAuth,
            Duration::from_secs(60),
            MintedBy::Key {
                sha256: hex::encode(crate::config::hash_key("beta-key")),
            },
        )
        .await
        .unwrap();
    let t = token.expose().to_string();
    let layer = AuthLayer::new(
        registry(&[caller("alpha"), caller("beta")]),
        sessions,
        limit(1024),
        pool(),
        SystemClock::shared(),
    );
    let bearer = format!("Bearer {t}");
    let query = format!("/media/upload/message?corpAccessToken={t}&corpId=x");
    let body: &'static str = Box::leak(format!(r#"{{"corpAccessToken":"{t}","x":1}}"#).into());
    let mut in_body = with_body("/cgi/message/send", &[], body);
    in_body
        .extensions_mut()
        .insert(RouteMatch::of("/cgi/message/send"));
    for req in [
        with_body("/cgi/x", &[("authorization", &bearer)], ""),
        with_body(&query, &[], ""),
        in_body,
    ] {
        let resp = layer.clone().layer(echo()).oneshot(req).await.unwrap();
        assert_eq!(crate::middleware::testing::body(resp).await, "beta false");
    }
    let unknown = with_body("/cgi/x", &[("authorization", "Bearer fxg_nope")], "");
    let err = layer.layer(echo()).oneshot(unknown).await.unwrap_err();
    assert!(matches!(err, GatewayError::TokenUnknown));
    assert_eq!(err.status_and_code(), (http::StatusCode::OK, 20016));
}

#[tokio::test]
async fn an_sdk_proves_itself_at_a_token_endpoint_with_name_and_key_in_the_body() {
    let layer = AuthLayer::new(
        registry(&[caller("alpha")]),
        sessions(),
        limit(1024),
        pool(),
        SystemClock::shared(),
    );
    let good = r#"{"appId":"alpha","appSecret":"alpha-key","permanentCode":"any"}"#;
    let wrong_name = r#"{"appId":"beta","appSecret":"alpha-key","permanentCode":"any"}"#;
    for (body, ok) in [(good, true), (wrong_name, false)] {
        let mut req = with_body("/oauth2.0/token", &[], body);
        req.extensions_mut()
            .insert(RouteMatch::of("/oauth2.0/token"));
        let r = layer.clone().layer(echo()).oneshot(req).await;
        assert_eq!(r.is_ok(), ok, "{body}");
    }
}

#[tokio::test]
async fn during_a_rotation_both_keys_work_until_the_old_ones_not_after() {
    let clock = ManualClock::new(1_000_000);
    let mut c = caller("alpha");
    c.keys = vec![
        ClientKey {
            sha256: crate::config::hash_key("old-key"),
            not_after_ms: Some(1_060_000),
        },
        ClientKey {
            sha256: crate::config::hash_key("new-key"),
            not_after_ms: None,
        },
    ];
    let layer = AuthLayer::new(
        registry(&[c]),
        sessions(),
        limit(1024),
        pool(),
        clock.clone(),
    );
    let ask = |key: &'static str| {
        let svc = layer.layer(echo());
        async move {
            svc.oneshot(with_body("/x", &[("x-api-key", key)], ""))
                .await
        }
    };
    assert!(ask("old-key").await.is_ok());
    assert!(ask("new-key").await.is_ok());
    clock.advance(Duration::from_millis(59_999));
    assert!(ask("old-key").await.is_ok(), "still inside the overlap");
    clock.advance(Duration::from_millis(1));
    assert!(matches!(
        ask("old-key").await,
        Err(GatewayError::KeyExpired)
    ));
    assert!(ask("new-key").await.is_ok());
    assert!(matches!(
        ask("unknown").await,
        Err(GatewayError::Unauthenticated)
    ));
}
