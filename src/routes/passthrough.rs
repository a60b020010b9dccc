//! `POST /cgi/*` (design §9): any Fxiaoke interface through fxgate. The caller's JSON body
//! (at most `[passthrough] max_body`) goes to the corp's `base_url` + the same path with a
//! fresh `thirdTraceId` per attempt; its credential members are dropped and the corp's token
//! injected in the caller's style, every other byte untouched (`members`). The user the call
//! acts as must be one of the caller's `act_as`. Fxiaoke's answer comes back byte for byte.
//! The body is in hand, so a token rejection that a check shows was about the token (a new
//! one came back) is retried once with the new one.

use http::{header, HeaderValue, Response};

use super::members::Members;
use crate::body::full;
use crate::error::GatewayError;
use crate::middleware::access_log::LogContext;
use crate::middleware::auth::Principal;
use crate::middleware::{Req, Resp};
use crate::route::{ApiStyle, Route, RouteMatch};
use crate::state::AppState;
use crate::upstream::call::{JsonCall, Reply, Take};
use crate::upstream::token::CorpToken;

/// Handles one passthrough call.
pub async fn call(
    state: &AppState,
    req: Req,
    principal: &Principal,
    log: &LogContext,
) -> Result<Resp, GatewayError> {
    let path = req.uri().path().to_string();
    // The canonical-path layer refused every other spelling; the URL is built from this one.
    crate::route::canonical(&path).map_err(|reason| GatewayError::PathNotCanonical { reason })?;
    let label = req
        .extensions()
        .get::<RouteMatch>()
        .map_or("other", |m| m.label());
    let corp = state.corp(&principal.client.corp)?;
    let style = principal.style;
    let user_header = user_header(&req)?;
    let limits = state.passthrough.load_full();
    let raw = super::caller_json(req, Route::Passthrough, limits.max_body).await?;
    let body = Members::parse(&raw).map_err(|e| GatewayError::BadRequest { detail: e.into() })?;
    let user = user_of(principal, &body, user_header)?;
    let build = |token: &CorpToken, head: http::request::Builder| {
        with_credentials(head, token, style, user.as_deref(), &body)
    };
    let call = JsonCall {
        path: &path,
        label,
        style,
        token_in_query: false,
        take: Take::JsonOrLarge,
        build: &build,
    };
    match corp.call(&call, log).await? {
        Reply::Json(answer) => Ok(super::json_answer(answer.status, answer.env.raw)),
        Reply::Large { status, head, rest } => {
            let idle = corp.timing.upstream_timeout();
            stream_large(status, head, rest, limits.max_answer, idle)
        }
        Reply::File(_) => Err(internal("a file where none is taken")),
    }
}

/// `X-Fs-Userid`, the user an OAuth-style caller acts as, if sent (ASCII only).
fn user_header(req: &Req) -> Result<Option<String>, GatewayError> {
    req.headers()
        .get("x-fs-userid")
        .map(|v| v.to_str().map(str::to_owned))
        .transpose()
        .map_err(|_| GatewayError::BadRequest {
            detail: "`x-fs-userid` must be ASCII".into(),
        })
}

/// The user a call acts as. Every member naming a user, in any spelling, must be a string and
/// agree (400); legacy callers pick their user so, OAuth ones by `X-Fs-Userid`; it must be
/// one of the caller's `act_as` (403).
fn user_of(
    principal: &Principal,
    body: &Members<'_>,
    header: Option<String>,
) -> Result<Option<String>, GatewayError> {
    let in_body = body
        .user()
        .map_err(|e| GatewayError::BadRequest { detail: e.into() })?;
    let asked = match principal.style {
        ApiStyle::Legacy => in_body,
        ApiStyle::OAuth => header,
    };
    principal.acting_user(asked)
}

/// An answer over 1 MiB (a large query result: never a token or rate-limit envelope), passed
/// on as it comes: at most `cap` bytes (refused with 502 when its length says so up front,
/// cut off when it crosses), and a pause of `idle` ends it.
fn stream_large(
    status: http::StatusCode,
    head: bytes::Bytes,
    rest: hyper::body::Incoming,
    cap: u64,
    idle: std::time::Duration,
) -> Result<Resp, GatewayError> {
    use futures_util::StreamExt as _;
    use http_body_util::BodyExt as _;
    let announced = http_body::Body::size_hint(&rest).exact();
    if let Some(total) = announced
        .map(|n| n + head.len() as u64)
        .filter(|t| *t > cap)
    {
        return Err(GatewayError::UpstreamInvalid {
            detail: format!("an answer of {total} bytes, over `passthrough.max_answer` ({cap})"),
        });
    }
    let mut seen = 0u64;
    let first = futures_util::stream::once(async move { Ok(http_body::Frame::data(head)) });
    let rest = http_body_util::BodyStream::new(crate::body::idle_bounded(rest, idle));
    let frames = first.chain(rest).map(move |frame| {
        let frame = frame?;
        seen += frame.data_ref().map_or(0, |d| d.len() as u64);
        match seen > cap {
            true => Err(format!("the answer passed `passthrough.max_answer` ({cap} bytes)").into()),
            false => Ok(frame),
        }
    });
    let mut out = Response::new(http_body_util::StreamBody::new(frames).boxed_unsync());
    *out.status_mut() = status;
    out.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Ok(out)
}

/// One attempt's request: the caller's body without credentials of its own, and the corp's
/// token where `style` puts it (legacy: body members; OAuth: `Authorization`, `X-Fs-Ea`).
fn with_credentials(
    mut head: http::request::Builder,
    token: &CorpToken,
    style: ApiStyle,
    user: Option<&str>,
    body: &Members<'_>,
) -> Result<http::Request<crate::body::Body>, GatewayError> {
    head = head.header(header::CONTENT_TYPE, "application/json; charset=utf-8");
    let secret = token.access_token.expose();
    let body = match style {
        ApiStyle::Legacy => {
            let mut inject = vec![("corpAccessToken", secret), ("corpId", &token.corp_id)];
            if let Some(u) = user {
                inject.push(("currentOpenUserId", u));
            }
            body.without_credentials(&inject)
        }
        ApiStyle::OAuth => {
            let mut bearer = HeaderValue::try_from(format!("Bearer {secret}"))
                .map_err(|_| internal("the OAuth token is not a header value"))?;
            bearer.set_sensitive(true);
            head = head.header(header::AUTHORIZATION, bearer);
            head = head.header("x-fs-ea", &token.corp_id);
            if let Some(u) = user {
                head = head.header("x-fs-userid", u);
            }
            body.without_credentials(&[])
        }
    };
    head.body(full(body))
        .map_err(|e| internal(&format!("building upstream request: {e}")))
}

fn internal(detail: &str) -> GatewayError {
    GatewayError::Internal {
        detail: detail.into(),
    }
}
