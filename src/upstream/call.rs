//! One call to Fxiaoke, decided in one place. Every call starts the same way (`Corp::prepare`:
//! the path's budget, then the style's token, then the URL with a fresh `thirdTraceId`), and a
//! call whose body is in hand (`Corp::call`: download, delete, any passthrough) also ends the
//! same way: sent within the deadline, read, classified, a token rejection checked and — only
//! when the check brings a new token — retried once, a rate limit turned into fxgate's 429.
//! Routes choose the body and what to do with the answer; an upload, whose body is a stream
//! that cannot be sent twice, uses `prepare` and reads its own answer (`media`).

use std::sync::Arc;
use std::time::Duration;

use http::{header, Request, Response, StatusCode};
use hyper::body::Incoming;
use tracing::Instrument as _;

use super::corp::{took, Answer, Corp, Passing, Target};
use super::envelope::{UpstreamCode, MAX_ENVELOPE_BYTES};
use super::token::{rejects, ApiStyle, CorpToken, Recheck};
use crate::body::Body;
use crate::error::GatewayError;

/// What a call tells the request it serves, for its access log line.
pub trait Report: Sync {
    /// Our `thirdTraceId` of the attempt under way.
    fn third_trace_id(&self, id: &str);
    /// Fxiaoke's `traceId` of the answer.
    fn upstream_trace_id(&self, id: Option<String>);
    /// Time Fxiaoke took for one attempt's head (summed over attempts).
    fn upstream_time(&self, took: Duration);
}

/// Builds one attempt's request from its token and the prepared request head (URL and trace
/// headers set): the body, with the corp's credentials where the style puts them.
pub type Build<'a> =
    &'a (dyn Fn(&CorpToken, http::request::Builder) -> Result<Request<Body>, GatewayError> + Sync);

/// Which answers the route takes unread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Take {
    /// Always Fxiaoke's JSON envelope (delete).
    Json,
    /// A file, unless the answer is a small JSON envelope (download).
    FileOrJson,
    /// JSON, passed on unread when over `MAX_ENVELOPE_BYTES` (a large query result).
    JsonOrLarge,
}

/// A call whose body is in hand.
pub struct JsonCall<'a> {
    /// The upstream path (and the budget's interface).
    pub path: &'a str,
    /// The metrics label.
    pub label: &'a str,
    /// Whose token, and how a rejection of it reads.
    pub style: ApiStyle,
    /// Whether the legacy token also rides in the query (the media endpoints: fxiaoke.md §1a).
    pub token_in_query: bool,
    /// The answers taken unread.
    pub take: Take,
    /// The request of one attempt.
    pub build: Build<'a>,
}

/// What `Corp::prepare_unless` gave.
#[derive(Debug)]
pub enum Prepared {
    /// The budget taken: the token and the URL.
    Ready(Arc<CorpToken>, Box<Target>),
    /// The guard's value: no call is needed.
    Held(String),
}

/// What a call gave.
pub enum Reply {
    /// Fxiaoke's envelope: neither a rate limit nor a rejection a new token could fix.
    Json(Answer),
    /// A file (`Take::FileOrJson`), its head only; the body streams on.
    File(Response<Incoming>),
    /// A large JSON answer (`Take::JsonOrLarge`): its status, first bytes and the rest.
    Large {
        /// The HTTP status.
        status: StatusCode,
        /// The bytes read so far.
        head: bytes::Bytes,
        /// The rest of the body.
        rest: Incoming,
    },
}

impl Corp {
    /// The first steps of every call to `path`, in this order (design §4 step 7): its share of
    /// the corp's budget, then the token of `style`, then the URL with a fresh `thirdTraceId`,
    /// the token in its query when `token_in_query`, and `extra` parameters.
    pub async fn prepare(
        &self,
        path: &str,
        style: ApiStyle,
        token_in_query: bool,
        extra: &[(&str, &str)],
    ) -> Result<(Arc<CorpToken>, Target), GatewayError> {
        self.take_budget(path, None).await?;
        self.token_and_target(path, style, token_in_query, extra)
            .await
    }

    /// As `prepare`, unless `guard` (a key in the shared store: a file's dedupe entry) holds a
    /// value: then nothing is taken and the value comes back, in the same round trip as the
    /// budget (`Prepared::Held`).
    pub async fn prepare_unless(
        &self,
        path: &str,
        style: ApiStyle,
        token_in_query: bool,
        extra: &[(&str, &str)],
        guard: &str,
    ) -> Result<Prepared, GatewayError> {
        if let Some(value) = self.take_budget(path, Some(guard)).await? {
            return Ok(Prepared::Held(value));
        }
        let (token, target) = self
            .token_and_target(path, style, token_in_query, extra)
            .await?;
        Ok(Prepared::Ready(token, Box::new(target)))
    }

    async fn token_and_target(
        &self,
        path: &str,
        style: ApiStyle,
        token_in_query: bool,
        extra: &[(&str, &str)],
    ) -> Result<(Arc<CorpToken>, Target), GatewayError> {
        let token = self.provider(style).get().await?;
        let target = self.target(path, token_in_query.then_some(&*token), extra)?;
        Ok((token, target))
    }

    /// Makes `call`: at most two attempts, the second only when Fxiaoke rejected the token and
    /// a check brought a new one (a rejection the token endpoint does not confirm goes back to
    /// the caller as Fxiaoke gave it; never looped, fxiaoke.md §1).
    pub async fn call(
        &self,
        call: &JsonCall<'_>,
        report: &dyn Report,
    ) -> Result<Reply, GatewayError> {
        for attempt in 0..2 {
            let (token, target) = self
                .prepare(call.path, call.style, call.token_in_query, &[])
                .await?;
            report.third_trace_id(&target.third_trace_id);
            let req = (call.build)(&token, target.post())?;
            let span = target.span;
            let resp = self.send(call.label, req).instrument(span.clone()).await?;
            let answer = match call.take {
                Take::FileOrJson if is_file(&resp) => {
                    report.upstream_time(took(&resp));
                    self.count(call.label, UpstreamCode::Success);
                    return Ok(Reply::File(resp));
                }
                Take::JsonOrLarge => match self
                    .read_answer_or_large(call.label, resp)
                    .instrument(span)
                    .await?
                {
                    Passing::Whole(answer) => answer,
                    Passing::Large { status, head, rest } => {
                        return Ok(Reply::Large { status, head, rest })
                    }
                },
                Take::Json | Take::FileOrJson => {
                    self.read_answer(call.label, resp).instrument(span).await?
                }
            };
            report.upstream_trace_id(answer.env.trace_id());
            report.upstream_time(answer.took);
            match self.judge(call.style, &token, answer, attempt == 0).await? {
                Verdict::Retry => continue,
                Verdict::Final(answer) => return Ok(Reply::Json(answer)),
            }
        }
        Err(GatewayError::TokenRejected)
    }

    /// The one reading of what Fxiaoke's answer means for a call (fxiaoke.md §1, §5): a
    /// rejection of `style`'s token, while `checked` (the first attempt), has the token
    /// checked, and a new one means `Retry`; a rate limit is fxgate's 429; anything else is
    /// the answer, passed on.
    pub(super) async fn judge(
        &self,
        style: ApiStyle,
        token: &Arc<CorpToken>,
        answer: Answer,
        checked: bool,
    ) -> Result<Verdict, GatewayError> {
        if checked && rejects(style, answer.code) {
            if let Recheck::New(_) = self.provider(style).recheck(token).await {
                return Ok(Verdict::Retry);
            }
        }
        if let Some(e) = answer.code.throttled() {
            return Err(e);
        }
        Ok(Verdict::Final(answer))
    }
}

/// What an answer means for its call.
pub(super) enum Verdict {
    /// Fxiaoke rejected the token and a check brought a new one: the call may go again.
    Retry,
    /// The answer to pass on.
    Final(Answer),
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
