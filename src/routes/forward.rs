//! `POST /media/download` and `POST /media/delete`: small JSON calls. The caller's body is
//! read (≤ 64 KiB), stripped of any `corpAccessToken`/`corpId`, given the corp's own, and
//! sent on. A download's file streams back untouched; a JSON answer passes through unchanged.
//! Unlike an upload, the body is in hand, so a 20016 is retried once with the fresh token.

use http::{header, HeaderValue, Request, Response};
use http_body_util::BodyExt;

use crate::state::AppState;
use crate::body::{full, Body};
use crate::error::GatewayError;
use crate::middleware::access_log::LogContext;
use crate::middleware::auth::Principal;
use crate::middleware::{Req, Resp};
use crate::upload::source::read_small;
use crate::upstream::envelope::{Envelope, MAX_ENVELOPE_BYTES, TOKEN_EXPIRED};
use crate::upstream::Corp;

/// Largest JSON body a caller may send to these routes.
const MAX_JSON_BODY: usize = 64 * 1024;

/// Which JSON call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JsonRoute {
    /// `/media/download`
    Download,
    /// `/media/delete`
    Delete,
}

impl JsonRoute {
    fn path(self) -> &'static str {
        match self {
            Self::Download => "/media/download",
            Self::Delete => "/media/delete",
        }
    }
}

/// Handles one download or delete.
pub async fn json_call(
    state: &AppState,
    req: Req,
    route: JsonRoute,
    principal: &Principal,
    log: &LogContext,
) -> Result<Resp, GatewayError> {
    let corp = state.corp(&principal.client.corp)?;
    let raw = read_small(req.into_body(), MAX_JSON_BODY).await?;
    let mut body = match serde_json::from_slice::<serde_json::Value>(&raw) {
        Ok(serde_json::Value::Object(map)) => map,
        _ => {
            return Err(GatewayError::BadRequest {
                detail: "the body must be a JSON object".into(),
            })
        }
    };
    // The caller's own Fxiaoke credentials are never forwarded.
    body.remove("corpAccessToken");
    body.remove("corpId");
    if !body.get("mediaId").is_some_and(|v| v.is_string()) {
        return Err(GatewayError::BadRequest {
            detail: "`mediaId` (a string) is required".into(),
        });
    }

    for attempt in 0..2 {
        corp.take_budget(route.path()).await?;
        let token = corp.tokens.get().await?;
        let target = corp.target(route.path(), Some(&token), &[])?;
        log.set_third_trace_id(&target.third_trace_id);
        let mut with_token = body.clone();
        // Legacy-style calls carry the token in the body; the query has it too (fxiaoke.md §1a).
        with_token.insert("corpAccessToken".into(), token.access_token.expose().into());
        with_token.insert("corpId".into(), token.corp_id.clone().into());
        let req = Request::post(target.uri)
            .header(header::CONTENT_TYPE, "application/json; charset=utf-8")
            .body(full(serde_json::Value::Object(with_token).to_string()))
            .map_err(|e| GatewayError::Internal {
                detail: format!("building upstream request: {e}"),
            })?;
        let resp = corp.send(route.path(), req).await?;
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
        if route == JsonRoute::Download && !(is_json && small) {
            // The file itself: stream it back as it comes.
            corp.count(route.path(), "0");
            return Ok(stream_back(resp));
        }
        let status = resp.status();
        let env = Envelope::read(resp.into_body()).await?;
        log.set_upstream_trace_id(env.trace_id());
        let code = env.error_code();
        corp.count(route.path(), &code.map_or("none".into(), |c| c.to_string()));
        if code == Some(TOKEN_EXPIRED) {
            corp.tokens.invalidate(&token);
            if attempt == 0 {
                continue;
            }
            return Err(GatewayError::TokenRejected);
        }
        if let Some(e) = Corp::rate_limited(code) {
            return Err(e);
        }
        if route == JsonRoute::Delete && code == Some(0) {
            if let Some(id) = body.get("mediaId").and_then(|v| v.as_str()) {
                state.forget_media(&principal.client.corp, id).await;
            }
        }
        let mut out = Response::new(full(env.raw));
        *out.status_mut() = status;
        out.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        return Ok(out);
    }
    Err(GatewayError::TokenRejected)
}

fn stream_back(resp: Response<hyper::body::Incoming>) -> Resp {
    let (parts, body) = resp.into_parts();
    let mut out = Response::new(Body::new(
        body.map_err(|e| -> crate::BoxError { Box::new(e) }),
    ));
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
