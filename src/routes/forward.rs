//! `POST /media/download` and `POST /media/delete`: small JSON calls. The caller's body is
//! read (≤ 64 KiB), stripped of any `corpAccessToken`/`corpId`, given the corp's own, and
//! sent on. A download's file streams back untouched; a JSON answer passes through unchanged.
//! Unlike an upload, the body is in hand: `Corp::call` retries a 20016 once when a check of
//! the token brings a new one.

use http::{header, Response};
use hyper::body::Incoming;
use serde_json::{Map, Value};

use super::members::{named_user, Credential};
use crate::body::full;
use crate::error::GatewayError;
use crate::middleware::access_log::LogContext;
use crate::middleware::auth::Principal;
use crate::middleware::{Req, Resp};
use crate::route::Route;
use crate::state::AppState;
use crate::upstream::call::{JsonCall, Reply, Take};
use crate::upstream::envelope::UpstreamCode;
use crate::upstream::token::{ApiStyle, CorpToken};

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
    let build = |token: &CorpToken, head: http::request::Builder| {
        let mut with_token = body.clone();
        // Legacy-style calls carry the token in the body; the query has it too (fxiaoke.md §1a).
        with_token.insert("corpAccessToken".into(), token.access_token.expose().into());
        with_token.insert("corpId".into(), token.corp_id.clone().into());
        head.header(header::CONTENT_TYPE, "application/json; charset=utf-8")
            .body(full(Value::Object(with_token).to_string()))
            .map_err(|e| GatewayError::Internal {
                detail: format!("building upstream request: {e}"),
            })
    };
    let call = JsonCall {
        path: route.path(),
        label: route.label(),
        style: ApiStyle::Legacy,
        token_in_query: true,
        take: match route {
            Route::Download => Take::FileOrJson,
            _ => Take::Json,
        },
        build: &build,
    };
    let answer = match corp.call(&call, log).await? {
        Reply::Json(answer) => answer,
        // The file itself: stream it back as it comes.
        Reply::File(resp) => return Ok(stream_back(resp, corp.timing.upstream_timeout())),
        Reply::Large { .. } => {
            return Err(GatewayError::Internal {
                detail: "a large answer where none is taken".into(),
            })
        }
    };
    if route == Route::Delete && answer.code == UpstreamCode::Success {
        if let Some(id) = body.get("mediaId").and_then(Value::as_str) {
            state.forget_media(&principal.client.corp, id).await;
        }
    }
    Ok(super::json_answer(answer.status, answer.env.raw))
}

/// The caller's JSON object, without any Fxiaoke credentials of its own (never forwarded, in
/// any spelling); a user it names must be a string and one of the caller's `act_as`, and is
/// forwarded as `currentOpenUserId`.
async fn caller_body(
    req: Req,
    route: Route,
    principal: &Principal,
) -> Result<Map<String, Value>, GatewayError> {
    let raw = super::caller_json(req, route, 0).await?;
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
        Some(u) => principal.acting_user(Some(u))?,
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
