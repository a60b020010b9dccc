//! `POST /cgi/*` (design §9): any Fxiaoke interface through fxgate. The caller's JSON body
//! (at most `[passthrough] max_body`) goes to the corp's `base_url` + the same path with a
//! fresh `thirdTraceId` per attempt; its credential members are dropped and the corp's token
//! injected in the caller's style, every other byte untouched (`members`). The user the call
//! acts as must be one of the caller's `act_as`. Fxiaoke's answer comes back byte for byte.
//! The body is in hand, so a token rejection that a check shows was about the token (a new
//! one came back) is retried once with the new one.

use http::{header, HeaderValue, Response};
use tracing::Instrument as _;

use super::members::Members;
use crate::body::full;
use crate::error::GatewayError;
use crate::middleware::access_log::LogContext;
use crate::middleware::auth::Principal;
use crate::middleware::{Req, Resp};
use crate::route::{ApiStyle, Route, RouteMatch};
use crate::state::AppState;
use crate::upstream::corp::Passing;
use crate::upstream::token::{rejects, CorpToken, Recheck};
use crate::upstream::Corp;

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
    let max_body = limits.max_body;
    let raw = super::caller_json(req, max_body, Route::Passthrough.label()).await?;
    let body = Members::parse(&raw).map_err(|e| GatewayError::BadRequest { detail: e.into() })?;
    let user = user_of(principal, &body, user_header)?;
    let call = Call {
        corp: &corp,
        path: &path,
        label,
        style,
        user: user.as_deref(),
        body: &body,
    };
    for attempt in 0..2 {
        let (resp, token, span) = call.send_once(log).await?;
        let answer = match corp
            .read_answer_or_large(label, resp)
            .instrument(span)
            .await?
        {
            Passing::Whole(answer) => answer,
            Passing::Large { status, head, rest } => {
                let cap = limits.max_answer;
                return stream_large(status, head, rest, cap, corp.timing.upstream_timeout());
            }
        };
        log.set_upstream_trace_id(answer.env.trace_id());
        log.add_upstream_time(answer.took);
        // A rejection is checked, not believed: the token everyone uses stays in use. Only a
        // new token earns the one retry; otherwise the rejection was about this call and its
        // answer goes back as Fxiaoke gave it (never looped, fxiaoke.md §1).
        if attempt == 0 && rejects(style, answer.code) {
            if let Recheck::New(_) = corp.provider(style).recheck(&token).await {
                continue;
            }
        }
        if let Some(e) = answer.code.throttled() {
            return Err(e);
        }
        return Ok(json_answer(answer.status, answer.env.raw));
    }
    Err(GatewayError::TokenRejected)
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

/// Fxiaoke's JSON answer, passed back as it came.
fn json_answer(status: http::StatusCode, raw: bytes::Bytes) -> Resp {
    let mut out = Response::new(full(raw));
    *out.status_mut() = status;
    out.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    out
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
    super::acting_user(principal, asked)
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

/// One passthrough call's fixed parts.
struct Call<'a> {
    corp: &'a Corp,
    path: &'a str,
    label: &'static str,
    style: ApiStyle,
    user: Option<&'a str>,
    body: &'a Members<'a>,
}

impl Call<'_> {
    /// One attempt: the path's budget, the style's token, a fresh `thirdTraceId`; the answer's
    /// head and the span the call runs in.
    async fn send_once(
        &self,
        log: &LogContext,
    ) -> Result<
        (
            Response<hyper::body::Incoming>,
            std::sync::Arc<CorpToken>,
            tracing::Span,
        ),
        GatewayError,
    > {
        self.corp.take_budget(self.path).await?;
        let token = self.corp.provider(self.style).get().await?;
        let target = self.corp.target(self.path, None, &[])?;
        log.set_third_trace_id(&target.third_trace_id);
        let secret = token.access_token.expose();
        let mut b = target
            .post()
            .header(header::CONTENT_TYPE, "application/json; charset=utf-8");
        let body = match self.style {
            ApiStyle::Legacy => {
                let mut inject = vec![("corpAccessToken", secret), ("corpId", &token.corp_id)];
                if let Some(u) = self.user {
                    inject.push(("currentOpenUserId", u));
                }
                self.body.without_credentials(&inject)
            }
            ApiStyle::OAuth => {
                let mut bearer = HeaderValue::try_from(format!("Bearer {secret}"))
                    .map_err(|_| internal("the OAuth token is not a header value"))?;
                bearer.set_sensitive(true);
                b = b.header(header::AUTHORIZATION, bearer);
                b = b.header("x-fs-ea", &token.corp_id);
                if let Some(u) = self.user {
                    b = b.header("x-fs-userid", u);
                }
                self.body.without_credentials(&[])
            }
        };
        let req = b
            .body(full(body))
            .map_err(|e| internal(&format!("building upstream request: {e}")))?;
        let resp = self
            .corp
            .send(self.label, req)
            .instrument(target.span.clone())
            .await?;
        Ok((resp, token, target.span))
    }
}

fn internal(detail: &str) -> GatewayError {
    GatewayError::Internal {
        detail: detail.into(),
    }
}
