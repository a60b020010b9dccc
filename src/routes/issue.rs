//! `POST /cgi/corpAccessToken/get/V2` and `POST /oauth2.0/token` at fxgate (SDK drop-in,
//! design §9): an SDK configured with `appId = <client name>`, `appSecret = <gateway key>`
//! (or a caller with its key in a header) gets an opaque `fxg_` token bound to it, with the
//! corp's real `corpId` / `ea` and an `expiresIn` no longer than the real token's. The real
//! token never leaves fxgate; later calls carrying the `fxg_` token are authenticated as the
//! caller (`AuthLayer`) and get the real one injected.

use std::time::Duration;

use http::{header, HeaderValue, Response};
use serde_json::json;

use crate::body::full;
use crate::error::GatewayError;
use crate::middleware::auth::Principal;
use crate::middleware::Resp;
use crate::route::ApiStyle;
use crate::state::AppState;

/// Issues a token of `style` to the caller.
pub async fn issue(
    state: &AppState,
    style: ApiStyle,
    principal: &Principal,
    request_id: &str,
) -> Result<Resp, GatewayError> {
    // Only a key or a certificate mints (the auth layer refuses a token here already).
    let by = principal
        .credential
        .clone()
        .ok_or(GatewayError::TokenCannotMint)?;
    let corp = state.corp(&principal.client.corp)?;
    let real = corp.provider(style).get().await?;
    // Whole seconds, rounded down, so ours never outlives the real token.
    let left = real
        .expires_at
        .saturating_duration_since(state.clock.now())
        .as_secs();
    if left == 0 {
        return Err(GatewayError::NoToken {
            corp: corp.cfg.name.clone(),
        });
    }
    let token = state
        .sessions
        .issue(&principal.client.name, style, Duration::from_secs(left), by)
        .await
        .map_err(|_| GatewayError::QuotaStoreDown)?;
    let body = match style {
        ApiStyle::Legacy => json!({
            "errorCode": 0,
            "errorMessage": "success",
            "errorDescription": "success",
            "corpAccessToken": token.expose(),
            "corpId": real.corp_id,
            "expiresIn": left,
            "traceId": request_id,
        }),
        ApiStyle::OAuth => json!({
            "errorCode": 0,
            "errorMessage": "success",
            "errorDescription": "success",
            "accessToken": token.expose(),
            "expiresIn": left,
            "appId": principal.client.name,
            "ea": real.corp_id,
            "traceId": request_id,
        }),
    };
    let mut resp = Response::new(full(body.to_string()));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    // A token in the body: no cache may keep it.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(resp)
}
