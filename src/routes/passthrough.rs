//! `POST /cgi/*` (design §9): any Fxiaoke interface through fxgate. The caller's JSON body
//! (at most `[passthrough] max_body`) goes to the corp's `base_url` + the same path with a
//! fresh `thirdTraceId` per attempt; its credential members are dropped and the corp's token
//! injected in the caller's style, every other byte untouched (`members`). The user the call
//! acts as must be one of the caller's `act_as`. Fxiaoke's answer comes back byte for byte.
//! The body is in hand, so a token rejection refreshes that token once and retries once.

use http::{header, HeaderValue, Response};
use tracing::Instrument as _;

use super::members::Members;
use crate::body::full;
use crate::error::GatewayError;
use crate::middleware::access_log::LogContext;
use crate::middleware::auth::Principal;
use crate::middleware::{Req, Resp};
use crate::route::{ApiStyle, RouteMatch};
use crate::state::AppState;
use crate::upstream::token::{rejects, CorpToken};
use crate::upstream::Corp;

/// Members never forwarded from a caller's body: fxgate sets the credentials, and the user
/// only after checking it against `act_as` (in the OAuth style it travels in a header).
const CREDENTIAL_KEYS: [&str; 3] = ["corpAccessToken", "corpId", "currentOpenUserId"];

/// Handles one passthrough call.
pub async fn call(
    state: &AppState,
    req: Req,
    principal: &Principal,
    log: &LogContext,
) -> Result<Resp, GatewayError> {
    let path = req.uri().path().to_string();
    let label = req
        .extensions()
        .get::<RouteMatch>()
        .map_or("other", |m| m.label());
    let corp = state.corp(&principal.client.corp)?;
    let style = principal.style;
    let user_header = req
        .headers()
        .get("x-fs-userid")
        .map(|v| v.to_str().map(str::to_owned))
        .transpose()
        .map_err(|_| GatewayError::BadRequest {
            detail: "`x-fs-userid` must be ASCII".into(),
        })?;
    let raw = super::caller_json(req, state.cfg.passthrough.max_body, label).await?;
    let body = Members::parse(&raw).map_err(|e| GatewayError::BadRequest { detail: e.into() })?;
    let asked = match style {
        ApiStyle::Legacy => body.str_value("currentOpenUserId"),
        ApiStyle::OAuth => user_header,
    };
    let user = acting_user(principal, asked)?;
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
        let answer = corp.read_answer(label, resp).instrument(span).await?;
        log.set_upstream_trace_id(answer.env.trace_id());
        log.add_upstream_time(answer.took);
        if rejects(style, answer.code) {
            corp.provider(style).invalidate(&token);
            if attempt == 0 {
                continue;
            }
            // Refreshed and refused again (Fxiaoke can hand back the same token): answered,
            // never looped (fxiaoke.md §1).
            return Err(GatewayError::TokenRejected);
        }
        if let Some(e) = answer.code.throttled() {
            return Err(e);
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

/// The user a call acts as: the one asked for, if the caller may act as it; else the caller's
/// default (the first of `act_as`), if any.
fn acting_user(
    principal: &Principal,
    asked: Option<String>,
) -> Result<Option<String>, GatewayError> {
    let act_as = &principal.client.act_as;
    match asked {
        Some(u) if act_as.contains(&u) => Ok(Some(u)),
        Some(u) => Err(GatewayError::UserForbidden {
            client: principal.client.name.clone(),
            user: u,
        }),
        None => Ok(act_as.first().cloned()),
    }
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
                self.body.rebuild(&CREDENTIAL_KEYS, &inject)
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
                self.body.rebuild(&CREDENTIAL_KEYS, &[])
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
