//! `POST /media/download` and `POST /media/delete`: small JSON calls. The caller's body is
//! read (≤ 64 KiB), stripped of any `corpAccessToken`/`corpId`, given the corp's own, and
//! sent on. A download's file streams back untouched; a JSON answer passes through unchanged.
//! Unlike an upload, the body is in hand, so a 20016 is retried once when a check of the
//! token brings a new one.

use std::sync::Arc;

use http::{header, HeaderValue, Response};
use hyper::body::Incoming;
use serde_json::{Map, Value};

use super::members::{named_user, Credential};
use crate::body::full;
use crate::error::GatewayError;
use crate::middleware::access_log::LogContext;
use crate::middleware::auth::Principal;
use crate::middleware::{Req, Resp};
use crate::route::{Route, JSON_BODY_MAX};
use crate::state::AppState;
use crate::upstream::corp::took;
use crate::upstream::envelope::{UpstreamCode, MAX_ENVELOPE_BYTES};
use crate::upstream::token::{CorpToken, Recheck};
use crate::upstream::Corp;
use tracing::Instrument as _;

/// Handles one download or delete (`route` is `Download` or `Delete`).
pub async fn json_call(
    state: &AppState,
    req: Req,
    route: Route,
    principal: &Principal,
    log: &LogContext,
) -> Result<Resp, GatewayError> {
    let corp = state.corp(&principal.client.corp)?;
    let body = caller_body(req, route, principal).await?;
    for attempt in 0..2 {
        let (resp, token, span) = send_once(&corp, route, &body, log).await?;
        if route == Route::Download && is_file(&resp) {
            log.add_upstream_time(took(&resp));
            // The file itself: stream it back as it comes.
            corp.count(route.label(), UpstreamCode::Success);
            return Ok(stream_back(resp, corp.timing.upstream_timeout()));
        }
        let answer = corp
            .read_answer(route.label(), resp)
            .instrument(span)
            .await?;
        log.set_upstream_trace_id(answer.env.trace_id());
        log.add_upstream_time(answer.took);
        // As for the passthrough: only a token the check replaced earns the one retry.
        if attempt == 0 && answer.code == UpstreamCode::TokenExpired {
            if let Recheck::New(_) = corp.tokens.recheck(&token).await {
                continue;
            }
        }
        if let Some(e) = answer.code.throttled() {
            return Err(e);
        }
        if route == Route::Delete && answer.code == UpstreamCode::Success {
            if let Some(id) = body.get("mediaId").and_then(Value::as_str) {
                state.forget_media(&principal.client.corp, id).await;
            }
        }
        let mut out = Response::new(full(answer.env.raw));
        *out.status_mut() = answer.status;
        out.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        return Ok(out);
    }
    Err(GatewayError::TokenRejected)
}

/// The caller's JSON object, without any Fxiaoke credentials of its own (never forwarded, in
/// any spelling); a user it names must be a string and one of the caller's `act_as`, and is
/// forwarded as `currentOpenUserId`.
async fn caller_body(
    req: Req,
    route: Route,
    principal: &Principal,
) -> Result<Map<String, Value>, GatewayError> {
    let raw = super::caller_json(req, JSON_BODY_MAX as u64, route.label()).await?;
    let mut body = match serde_json::from_slice::<Value>(&raw) {
        Ok(Value::Object(map)) => map,
        _ => {
            return Err(GatewayError::BadRequest {
                detail: "the body must be a JSON object".into(),
            })
        }
    };
    let named = named_user(body.iter().map(|(k, v)| {
        let user = v.as_str().map(str::to_owned).ok_or(());
        (k.as_str(), user)
    }));
    let asked = named.map_err(|e| GatewayError::BadRequest { detail: e.into() })?;
    let user = match asked {
        Some(u) => super::acting_user(principal, Some(u))?,
        None => None,
    };
    body.retain(|k, _| Credential::of(k).is_none());
    if let Some(u) = user {
        body.insert("currentOpenUserId".into(), u.into());
    }
    if !body.get("mediaId").is_some_and(Value::is_string) {
        return Err(GatewayError::BadRequest {
            detail: "`mediaId` (a string) is required".into(),
        });
    }
    Ok(body)
}

/// One attempt: budget, token, a fresh `thirdTraceId`, the corp's credentials in the body; the
/// answer's head, and the span the call runs in (for reading the rest of the answer).
async fn send_once(
    corp: &Corp,
    route: Route,
    body: &Map<String, Value>,
    log: &LogContext,
) -> Result<(Response<Incoming>, Arc<CorpToken>, tracing::Span), GatewayError> {
    corp.take_budget(route.path()).await?;
    let token = corp.tokens.get().await?;
    let target = corp.target(route.path(), Some(&token), &[])?;
    log.set_third_trace_id(&target.third_trace_id);
    let mut with_token = body.clone();
    // Legacy-style calls carry the token in the body; the query has it too (fxiaoke.md §1a).
    with_token.insert("corpAccessToken".into(), token.access_token.expose().into());
    with_token.insert("corpId".into(), token.corp_id.clone().into());
    let req = target
        .post()
        .header(header::CONTENT_TYPE, "application/json; charset=utf-8")
        .body(full(Value::Object(with_token).to_string()))
        .map_err(|e| GatewayError::Internal {
            detail: format!("building upstream request: {e}"),
        })?;
    let resp = corp
        .send(route.label(), req)
        .instrument(target.span.clone())
        .await?;
    Ok((resp, token, target.span))
}

/// Whether a download answer is the file rather than Fxiaoke's (small JSON) envelope.
fn is_file(resp: &Response<Incoming>) -> bool {
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.contains("json"));
    let small = resp
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
        .is_none_or(|n| n <= MAX_ENVELOPE_BYTES);
    !(is_json && small)
}

/// The file, passed on as it arrives; a pause longer than `idle` (`upstream_timeout`) ends it.
fn stream_back(resp: Response<Incoming>, idle: std::time::Duration) -> Resp {
    let (parts, body) = resp.into_parts();
    let mut out = Response::new(crate::body::idle_bounded(body, idle));
    *out.status_mut() = parts.status;
    for name in [
        header::CONTENT_TYPE,
        header::CONTENT_LENGTH,
        header::CONTENT_DISPOSITION,
        header::ETAG,
        header::LAST_MODIFIED,
    ] {
        if let Some(v) = parts.headers.get(&name) {
            out.headers_mut().insert(name, v.clone());
        }
    }
    out
}
