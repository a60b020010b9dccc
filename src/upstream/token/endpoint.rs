//! The token endpoint's side of a fetch: the request (URL, `thirdTraceId`, the secrets in the
//! body) and what its answer holds. The refresher decides when to call and what follows.

use std::time::Duration;

use http::{header, Request};

use super::ApiStyle;
use crate::body::{full, Body};
use crate::config::CorpConfig;
use crate::upstream::envelope::Envelope;

/// What a fetch gave.
pub(super) enum Fetched {
    Token {
        token: String,
        corp_id: String,
        expires_in: Duration,
    },
    Failed(String),
}

/// The call to `flow`'s token endpoint of the corp at `base`, with a fresh `thirdTraceId` and
/// the current trace's headers. Holds the app secret: never log it.
pub(super) fn request(
    base: &str,
    cfg: &CorpConfig,
    flow: ApiStyle,
) -> Result<Request<Body>, String> {
    let trace = uuid::Uuid::new_v4();
    let uri = format!("{}{}?thirdTraceId={trace}", base, flow.token_path())
        .parse::<http::Uri>()
        .map_err(|_| "invalid base_url".to_string())?;
    let mut body = serde_json::json!({
        "appId": cfg.app_id,
        "appSecret": cfg.app_secret.expose(),
        "permanentCode": cfg.permanent_code.expose(),
    });
    if flow == ApiStyle::OAuth {
        body["grantType"] = "app_secret".into();
    }
    let mut b = Request::post(uri);
    if let Some(h) = b.headers_mut() {
        crate::trace::inject(h);
    }
    b.header(header::CONTENT_TYPE, "application/json; charset=utf-8")
        .body(full(body.to_string()))
        .map_err(|e| format!("cannot build request: {e}"))
}

/// What the token endpoint's successful answer holds.
pub(super) fn parse(env: &Envelope, flow: ApiStyle) -> Fetched {
    let (token_field, account_field) = flow.fields();
    let json = env.json.as_ref();
    let token = json
        .and_then(|j| j.get(token_field))
        .and_then(|v| v.as_str())
        .filter(|t| !t.is_empty());
    let corp_id = json
        .and_then(|j| j.get(account_field))
        .and_then(|v| v.as_str());
    let expires_in = json
        .and_then(|j| j.get("expiresIn"))
        .and_then(|v| v.as_u64())
        .filter(|e| *e > 0);
    match (token, corp_id, expires_in) {
        (Some(t), Some(c), Some(e)) => Fetched::Token {
            token: t.to_string(),
            corp_id: c.to_string(),
            expires_in: Duration::from_secs(e.min(7200)),
        },
        _ => Fetched::Failed(format!(
            "token answer lacks {token_field}, {account_field} or a positive expiresIn"
        )),
    }
}
