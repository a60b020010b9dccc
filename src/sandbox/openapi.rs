//! The sandbox's business calls under `/cgi/` (fxiaoke.md §1, §4, §5), as strict as its token
//! endpoints: either token style (legacy `corpAccessToken`/`corpId` in the body, or
//! `authorization: Bearer` + `x-fs-ea` + `x-fs-userid`, never both), a UUIDv4 `thirdTraceId`,
//! Fxiaoke's per-interface limit (100 calls per 20 s per path → 14001), and two interfaces:
//! `/cgi/message/send` (an image message must name a `mediaId` the sandbox issued) and a small
//! `/cgi/crm/v2/data/query`. Every call is kept as received (`GET /_sandbox/received`), so
//! tests can compare what fxgate forwarded byte for byte.

use http::{HeaderMap, Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde_json::{json, Map, Value};

use super::state::{self, Endpoint, Received, SentMessage, State};
use super::{authorize, fx_error, json as answer, valid_trace_id};
use crate::body::Body;

/// Largest business body the sandbox reads.
const MAX_BODY: usize = 4 * 1024 * 1024;

/// Who a call authenticated as.
struct Caller {
    style: &'static str,
    user: Option<String>,
}

pub(super) async fn call(state: &State, req: Request<Incoming>) -> Response<Body> {
    state.stats.bump(|s| &s.cgi_calls);
    let trace_ok = valid_trace_id(&req);
    let (parts, body) = req.into_parts();
    let raw = match http_body_util::Limited::new(body, MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return fx_error(10002, "body unreadable or too large"),
    };
    let path = parts.uri.path().to_string();
    state.remember(Received {
        path: path.clone(),
        query: parts.uri.query().unwrap_or_default().to_string(),
        headers: parts
            .headers
            .iter()
            .map(|(k, v)| (k.to_string(), String::from_utf8_lossy(v.as_bytes()).into()))
            .collect(),
        body: String::from_utf8_lossy(&raw).into_owned(),
    });
    if !trace_ok {
        return fx_error(10002, "thirdTraceId must be a UUID v4");
    }
    let Ok(Value::Object(body)) = serde_json::from_slice::<Value>(&raw) else {
        return fx_error(10002, "the body must be a JSON object");
    };
    let caller = match authenticate(state, &parts.headers, &body) {
        Ok(c) => c,
        Err(resp) => return resp,
    };
    let rejected = {
        let mut faults = state.faults.lock();
        faults.take_call_rejection() || faults.rejects_user(caller.user.as_deref())
    };
    if rejected {
        state.stats.bump(|s| &s.token_rejected);
        return fx_error(
            20016,
            "the cropId,cropAccessToken or authorization is error",
        );
    }
    if let Some(limit) = state.opts.per_path_limit {
        if !state.take_path_call(&path, limit) {
            state.stats.bump(|s| &s.cgi_rate_limited);
            return fx_error(14001, "interface call limit exceeded");
        }
    }
    match path.as_str() {
        "/cgi/message/send" => send(state, &body, caller),
        "/cgi/crm/v2/data/query" => query(&body, caller),
        "/cgi/crm/v2/generatorFileUploadCredential" => {
            let host = parts
                .headers
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
                .unwrap_or("127.0.0.1");
            super::files::credential(state, &body, host, &trace_id())
        }
        _ => fx_error(10006, "apiName=[null] is not exists"),
    }
}

/// Either style, never both (fxiaoke.md §4: don't mix them in one request).
#[allow(clippy::result_large_err)]
fn authenticate(
    state: &State,
    headers: &HeaderMap,
    body: &Map<String, Value>,
) -> Result<Caller, Response<Body>> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let field = |name: &str| body.get(name).and_then(Value::as_str);
    let Some(auth) = header("authorization") else {
        authorize(state, field("corpAccessToken"), field("corpId"))?;
        return Ok(Caller {
            style: "legacy",
            user: field("currentOpenUserId").map(str::to_owned),
        });
    };
    if body.contains_key("corpAccessToken") || body.contains_key("corpId") {
        return Err(fx_error(
            10002,
            "do not mix the header and body token styles",
        ));
    }
    let bearer = auth.strip_prefix("Bearer ").unwrap_or_default();
    if !state.token_valid(Endpoint::OAuth, bearer) || header("x-fs-ea") != Some(state::EA) {
        state.stats.bump(|s| &s.token_rejected);
        return Err(fx_error(
            20016,
            "the cropId,cropAccessToken or authorization is error",
        ));
    }
    let Some(user) = header("x-fs-userid").filter(|u| !u.is_empty()) else {
        return Err(fx_error(10002, "x-fs-userid is required"));
    };
    Ok(Caller {
        style: "oauth",
        user: Some(user.to_owned()),
    })
}

fn trace_id() -> String {
    format!("E-O.sandbox.{}", uuid::Uuid::new_v4().simple())
}

/// `/cgi/message/send`: `toUser`, `msgType` and, per type, `text.content` or `image.mediaId`.
fn send(state: &State, body: &Map<String, Value>, caller: Caller) -> Response<Body> {
    let to_user = body.get("toUser").cloned().unwrap_or(Value::Null);
    if !to_user
        .as_array()
        .is_some_and(|a| !a.is_empty() && a.len() <= 500)
    {
        return fx_error(10002, "toUser must list 1 to 500 users");
    }
    let msg_type = body.get("msgType").and_then(Value::as_str).unwrap_or("");
    let media_id = match msg_type {
        "text" => None,
        "image" => {
            let id = body
                .get("image")
                .and_then(|i| i.get("mediaId"))
                .and_then(Value::as_str)
                .unwrap_or("");
            if !state.media.lock().contains_key(id) {
                return fx_error(10010, "mediaId does not exist");
            }
            Some(id.to_string())
        }
        _ => return fx_error(10002, "msgType must be text or image"),
    };
    state.messages.lock().push(SentMessage {
        to_user,
        msg_type: msg_type.to_string(),
        media_id,
        sender: caller.user,
        style: caller.style,
    });
    state.stats.bump(|s| &s.messages_sent);
    answer(json!({
        "errorCode": 0,
        "errorMessage": "success",
        "errorDescription": "success",
        "messageId": uuid::Uuid::new_v4().simple().to_string(),
        "traceId": trace_id(),
    }))
}

/// Largest `data.padBytes` the sandbox fills an answer with.
const MAX_PAD: u64 = 64 * 1024 * 1024;

/// A small `/cgi/crm/v2/data/query`: one record of the asked object, owned by the caller.
/// `data.padBytes` (the sandbox's own) gives the record a `remark` that long, for answers
/// larger than an envelope.
fn query(body: &Map<String, Value>, caller: Caller) -> Response<Body> {
    let Some(object) = body
        .get("data")
        .and_then(|d| d.get("dataObjectApiName"))
        .and_then(Value::as_str)
    else {
        return fx_error(10002, "data.dataObjectApiName is required");
    };
    let pad = body
        .get("data")
        .and_then(|d| d.get("padBytes"))
        .and_then(Value::as_u64)
        .unwrap_or(0)
        .min(MAX_PAD) as usize;
    answer(json!({
        "errorCode": 0,
        "errorMessage": "success",
        "errorDescription": "success",
        "data": {
            "total": 1,
            "dataList": [{
                "_id": "sbx-0001",
                "object_describe_api_name": object,
                "name": "示例客户",
                "owner": [caller.user.unwrap_or_default()],
                "remark": "r".repeat(pad),
            }],
        },
        "traceId": trace_id(),
    }))
}
