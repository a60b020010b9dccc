//! One upload to a Fxiaoke media endpoint (design §4 steps 5–8): the corp's budget is taken
//! first, then the token, then a fresh `thirdTraceId` goes into the URL, and the file is framed
//! as Fxiaoke wants it (one part `media`, our boundary). The request then goes out either
//! streamed (`stream`: the body is a channel the upload pump feeds, the request runs on its own
//! task) or whole (`whole`: a small file, one write). Either way the caller holds a `Pending`
//! whose `answer` applies the deadline, reads Fxiaoke's envelope and turns a token rejection or
//! a rate limit into fxgate's own error. Dropping a `Pending` (or the stream's sender)
//! unfinished aborts the request, so Fxiaoke stores nothing.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures_util::future::BoxFuture;
use futures_util::FutureExt as _;
use http::{header, Request, Response};
use hyper::body::Incoming;
use tracing::Instrument as _;

use super::body::{channel, BodySender, DigestReceiver};
use super::call::{Prepared, Verdict};
use super::corp::{Answer, Corp, Target};
use super::token::{ApiStyle, CorpToken};
use crate::body::{full, Body};
use crate::error::GatewayError;
use crate::route::Route;

/// An upstream upload, ready to send: its budget is taken and its token in the URL.
pub struct MediaCall {
    corp: Arc<Corp>,
    route: Route,
    token: Arc<CorpToken>,
    /// URL and trace headers; its span runs from the request's first byte to Fxiaoke's answer.
    target: Target,
    boundary: String,
    prefix: Bytes,
    suffix: Bytes,
}

impl std::fmt::Debug for MediaCall {
    // The URI holds the token: never shown.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MediaCall")
            .field("route", &self.route)
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

impl MediaCall {
    /// Takes the corp's Fxiaoke allowance first, then the token (design §4 step 7), and frames
    /// the file: `filename` and `part_type` go into the part's header.
    pub async fn open(
        corp: &Arc<Corp>,
        route: Route,
        type_param: Option<&'static str>,
        filename: &str,
        part_type: &str,
    ) -> Result<Self, GatewayError> {
        let extra: Vec<(&str, &str)> = type_param.map(|t| ("type", t)).into_iter().collect();
        let (token, target) = corp
            .prepare(route.path(), ApiStyle::Legacy, true, &extra)
            .await?;
        Ok(Self::framed(
            corp, route, token, target, filename, part_type,
        ))
    }

    /// As `open`, unless `guard` (the file's dedupe entry in the shared store) holds a value:
    /// then nothing is taken, no token is fetched, and the value comes back (`Err`), all in
    /// the budget's one round trip.
    pub async fn open_unless(
        corp: &Arc<Corp>,
        route: Route,
        type_param: Option<&'static str>,
        filename: &str,
        part_type: &str,
        guard: &str,
    ) -> Result<Result<Self, String>, GatewayError> {
        let extra: Vec<(&str, &str)> = type_param.map(|t| ("type", t)).into_iter().collect();
        Ok(
            match corp
                .prepare_unless(route.path(), ApiStyle::Legacy, true, &extra, guard)
                .await?
            {
                Prepared::Held(value) => Err(value),
                Prepared::Ready(token, target) => Ok(Self::framed(
                    corp, route, token, *target, filename, part_type,
                )),
            },
        )
    }

    fn framed(
        corp: &Arc<Corp>,
        route: Route,
        token: Arc<CorpToken>,
        target: Target,
        filename: &str,
        part_type: &str,
    ) -> Self {
        let boundary = format!("fxgate-{}", uuid::Uuid::new_v4().simple());
        let prefix = Bytes::from(format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"media\"; filename=\"{filename}\"\r\nContent-Type: {part_type}\r\n\r\n"
        ));
        let suffix = Bytes::from(format!("\r\n--{boundary}--\r\n"));
        Self {
            corp: corp.clone(),
            route,
            token,
            target,
            boundary,
            prefix,
            suffix,
        }
    }

    /// The `thirdTraceId` of this attempt, for the access log.
    pub fn third_trace_id(&self) -> &str {
        &self.target.third_trace_id
    }

    fn request(&self, body: Body, len: Option<u64>) -> Result<Request<Body>, GatewayError> {
        let mut builder = self.target.post().header(
            header::CONTENT_TYPE,
            format!("multipart/form-data; boundary={}", self.boundary),
        );
        if let Some(n) = len {
            builder = builder.header(header::CONTENT_LENGTH, n);
        }
        builder.body(body).map_err(|e| GatewayError::Internal {
            detail: format!("building upstream request: {e}"),
        })
    }

    /// Starts a streamed upload of a file of `file_len` bytes (when known, the request carries
    /// `Content-Length`). The prefix is queued; the caller feeds the file into the sender, and
    /// the body hashes it as hyper takes it.
    pub async fn stream(
        self,
        file_len: Option<u64>,
    ) -> Result<(BodySender, DigestReceiver, Pending), GatewayError> {
        let len = file_len.map(|n| (self.prefix.len() + self.suffix.len()) as u64 + n);
        let (tx, body, digest) = channel(len);
        let req = self.request(Body::new(body), len)?;
        // The prefix waits in the channel until hyper connects: it holds four chunks.
        if tx.send(self.prefix.clone()).await.is_err() {
            return Err(GatewayError::UpstreamUnreachable {
                source: "upstream request ended before its body".into(),
            });
        }
        // The request future runs beside the body pump; it resolves once Fxiaoke answers.
        let request = self.corp.client().calls.request(req);
        let task = AbortOnDrop(tokio::spawn(async move { Ok(request.await?) }));
        Ok((tx, digest, Pending::new(self, task.wait().boxed())))
    }

    /// Sends a small file that is already whole, as one write. The chunks are released as
    /// soon as they are copied, before Fxiaoke answers: they are slices of the caller
    /// connection's read buffer, which hyper can reuse only once nothing refers to it
    /// (holding them across the round trip cost 10 % of small-upload throughput and 40 MiB of
    /// peak RSS in `benches/e2e`).
    pub fn whole(self, chunks: Vec<Bytes>) -> Result<Pending, GatewayError> {
        let size: usize = chunks.iter().map(Bytes::len).sum();
        let mut one = BytesMut::with_capacity(self.prefix.len() + size + self.suffix.len());
        one.extend_from_slice(&self.prefix);
        for c in chunks {
            one.extend_from_slice(&c);
        }
        one.extend_from_slice(&self.suffix);
        let len = one.len() as u64;
        let req = self.request(full(one.freeze()), Some(len))?;
        let request = self.corp.client().calls.request(req);
        let answer = async move { Ok(request.await?) }.boxed();
        Ok(Pending::new(self, answer))
    }
}

type AnswerFuture = BoxFuture<'static, Result<Response<Incoming>, GatewayError>>;

/// An upload on its way; dropping it unfinished aborts the request.
pub struct Pending {
    call: MediaCall,
    answer: AnswerFuture,
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending").field("call", &self.call).finish()
    }
}

impl Pending {
    fn new(call: MediaCall, answer: AnswerFuture) -> Self {
        Self { call, answer }
    }

    /// The closing delimiter: sent (by a streaming caller) only once the file is known new.
    pub fn suffix(&self) -> Bytes {
        self.call.suffix.clone()
    }

    /// Fxiaoke's answer. Its deadline runs from the last byte sent: the upload itself may take
    /// long. A 20016 has the token checked: a new one answers 950302 (the body is gone and
    /// is never replayed: the caller retries), the same one passes Fxiaoke's answer on;
    /// 14001/30004 answer 429.
    pub async fn answer(self) -> Result<Answer, GatewayError> {
        let Pending { call, answer } = self;
        let span = call.target.span.clone();
        let label = call.route.label();
        let answer = async {
            let resp = call.corp.timed(label, answer).await?;
            call.corp.read_answer(label, resp).await
        }
        .instrument(span)
        .await?;
        // The body is gone and is never replayed: a new token means the caller retries
        // (950302); the same one means the rejection was about this upload, answered as
        // Fxiaoke gave it.
        let style = ApiStyle::Legacy;
        match call.corp.judge(style, &call.token, answer, true).await? {
            Verdict::Retry => Err(GatewayError::TokenRejected),
            Verdict::Final(answer) => Ok(answer),
        }
    }
}

/// Aborts the spawned upstream request when the upload handler is dropped (caller gone).
pub(super) struct AbortOnDrop(tokio::task::JoinHandle<Result<Response<Incoming>, GatewayError>>);

impl AbortOnDrop {
    /// Runs `request` on its own task.
    pub(super) fn spawn(
        request: impl std::future::Future<Output = Result<Response<Incoming>, GatewayError>>
            + Send
            + 'static,
    ) -> Self {
        Self(tokio::spawn(request))
    }

    pub(super) async fn wait(mut self) -> Result<Response<Incoming>, GatewayError> {
        match (&mut self.0).await {
            Ok(r) => r,
            Err(e) => Err(GatewayError::Internal {
                detail: format!("upstream task failed: {e}"),
            }),
        }
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
