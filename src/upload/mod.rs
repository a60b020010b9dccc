//! The upload lifecycle (design §4), one step per call in `handle`: the head is parsed once
//! into an `UploadRequest` (`request`); a claimed digest is looked up before the body is read
//! (`crate::dedupe::coalesce`); the file's first bytes are type-checked (`crate::sniff`); a
//! small file is held whole and hashed before anything goes upstream, a larger one is pumped
//! to Fxiaoke as it arrives while the upstream body hashes it (`pump`,
//! `crate::upstream::media`), holding back only the closing delimiter until the SHA-256 is
//! final; then the answer is a stream hit, or Fxiaoke's answer recorded on success (`answer`).
//! Memory per upload is the channel's few chunks plus the inbound read buffer, whatever the
//! size.

pub mod answer;
pub mod digest;
pub mod file;
pub mod multipart;
pub mod pump;
pub mod request;
pub mod source;

use http::{header, HeaderValue, Request, Response};
use hyper::body::Incoming;
use tracing::Instrument as _;

use crate::body::Body;
use crate::config::UploadConfig;
use crate::dedupe::{Claim, DedupeKey, MediaRef};
use crate::error::GatewayError;
use crate::metrics::{DedupeResult, Metrics};
use crate::middleware::access_log::LogContext;
use crate::middleware::auth::Principal;
use crate::route::Route;
use crate::sniff::{self, ImageType};
use crate::state::AppState;
use crate::upstream::body::BodySender;
use crate::upstream::corp::Answer;
use crate::upstream::media::{MediaCall, Pending};
pub use answer::repr_digest;
use pump::{Held, Pump, Streamed};
pub use request::{Part, UploadKind, UploadRequest, MULTIPART_FRAMING_ALLOWANCE};
pub use source::FileSource;

/// Handles one upload to `route` (`UploadMessage` or `Upload`).
pub async fn handle(
    state: &AppState,
    req: Request<Incoming>,
    route: Route,
    principal: &Principal,
    log: &LogContext,
) -> Result<Response<Body>, GatewayError> {
    let mut up = UploadRequest::parse(state, &req, route, principal)?;
    up.admit(&state.quotas, &principal.client).await?;
    if let Some(key) = up.claim_key() {
        let bound = up.corp.timing.upstream_timeout() * 2;
        let span = dedupe_span("claimed_digest");
        let claim = state
            .dedupe
            .claim(&key, &up.caller, bound)
            .instrument(span.clone())
            .await;
        span.record("fxgate.dedupe.result", claim.label());
        match claim {
            Claim::Hit(media) => {
                return Ok(claim_hit(state, req, &up, &key.sha256, &media, log).await)
            }
            Claim::Lead(guard) => up.leader = Some(guard),
            Claim::Alone => {}
        }
    }
    let mut file = up.open_file(req.into_body()).await?;
    let mut held = Held::read_head(&mut file).await?;
    let sniffed = check_type(&held, up.kind, &state.upload.load())?;
    let part = up.part(&file, sniffed);
    let whole = held.gather_small(&mut file, &up).await?;
    let _inflight = Inflight::enter(&state.metrics);
    let sent = if whole {
        // The body is read to its end; the reader's hold on hyper's buffer ends here.
        drop(file);
        hold_whole(&mut up, held).await?
    } else {
        stream(&mut up, file, held, &part, log).await?
    };
    state
        .metrics
        .http
        .upload_bytes
        .with_label_values(&[&up.caller, route.label()])
        .inc_by(sent.size);
    log.add_bytes(sent.size);
    let Some(digest) = sent.digest else {
        // Fxiaoke answered before taking the whole file: pass its answer on unchanged.
        let answer = sent.upstream.finish(false, &up, &part, log).await?;
        return Ok(answer::passthrough(answer.status, answer.env, None));
    };
    up.check_claim(digest)?;
    let key = up.key(digest, &part);
    let span = dedupe_span("content");
    let (found, upstream) = lookup(state, &up, &key, &part, sent.upstream, log)
        .instrument(span.clone())
        .await?;
    span.record(
        "fxgate.dedupe.result",
        if found.is_some() { "hit" } else { "miss" },
    );
    if let Some(media) = found {
        // Dropping a streaming upload unfinished aborts it: Fxiaoke stores nothing.
        drop(upstream);
        return Ok(stream_hit(state, up, &key, media, (digest, sent.size), log).await);
    }
    let answer = upstream.finish(true, &up, &part, log).await?;
    Ok(record(state, up, key, (digest, sent.size), part, answer, log).await)
}

/// The span of one dedupe lookup, by a digest the caller claimed or by the content's own.
fn dedupe_span(by: &'static str) -> tracing::Span {
    tracing::info_span!(
        "dedupe_lookup",
        fxgate.dedupe.by = by,
        fxgate.dedupe.result = tracing::field::Empty
    )
}

/// Type check on the first bytes, before any upstream request exists. Documents may be any
/// type; the other routes take the configured images only.
fn check_type(
    held: &Held,
    kind: UploadKind,
    cfg: &UploadConfig,
) -> Result<Option<ImageType>, GatewayError> {
    let first = held.first_bytes();
    let sniffed = ImageType::sniff(&first);
    if kind == UploadKind::Document {
        return Ok(sniffed);
    }
    match sniffed {
        Some(t) if cfg.message_types.contains(&t) => Ok(sniffed),
        Some(t) => Err(GatewayError::UnsupportedType { detected: t.mime() }),
        None => Err(GatewayError::UnsupportedType {
            detected: sniff::describe_unknown(&first),
        }),
    }
}

/// The file as sent (or about to be), and where its bytes are now.
struct Sent {
    size: u64,
    /// `None` when Fxiaoke stopped taking the file before its end.
    digest: Option<[u8; 32]>,
    upstream: BytesAt,
}

/// Where the file's bytes are when its hash is final.
enum BytesAt {
    /// Already on their way; the closing delimiter is held back.
    Streaming {
        tx: BodySender,
        pending: Box<Pending>,
    },
    /// All here: nothing has gone upstream yet.
    Held(Held),
    /// All here, and the call opened (its budget taken) by a lookup that missed.
    Opened { call: Box<MediaCall>, held: Held },
}

impl BytesAt {
    /// Completes the upload (`complete`: the file is new and whole, so the closing delimiter
    /// goes out; otherwise only the answer is awaited) and reads Fxiaoke's answer.
    async fn finish(
        self,
        complete: bool,
        up: &UploadRequest,
        part: &Part,
        log: &LogContext,
    ) -> Result<Answer, GatewayError> {
        let answer = match self {
            BytesAt::Streaming { tx, pending } => {
                let pending = *pending;
                if complete {
                    let within = up.corp.timing.upstream_timeout();
                    tx.close(pending.suffix(), within).await?;
                }
                pending.answer().await?
            }
            BytesAt::Held(held) => {
                let call = open(up, part, log).await?;
                call.whole(held.chunks)?.answer().await?
            }
            BytesAt::Opened { call, held } => call.whole(held.chunks)?.answer().await?,
        };
        log.set_upstream_trace_id(answer.env.trace_id());
        log.add_upstream_time(answer.took);
        Ok(answer)
    }
}

/// The content's dedupe lookup. A file in hand with a shared index asks in the budget's round
/// trip (design §11: a miss in two round trips): the budget is taken only when the entry is
/// absent, and the call is then open. Otherwise the index is asked alone.
async fn lookup(
    state: &AppState,
    up: &UploadRequest,
    key: &DedupeKey,
    part: &Part,
    at: BytesAt,
    log: &LogContext,
) -> Result<(Option<MediaRef>, BytesAt), GatewayError> {
    let (held, guard) = match (at, state.dedupe.shared_key(key)) {
        (BytesAt::Held(held), Some(guard)) => (held, guard),
        (at, _) => return Ok((state.dedupe.get(key).await, at)),
    };
    let kind = up.kind;
    let opened = MediaCall::open_unless(
        &up.corp,
        kind.route(),
        kind.type_param(),
        &part.filename,
        &part.content_type,
        &guard,
    )
    .await?;
    Ok(match opened {
        Ok(call) => {
            log.set_third_trace_id(call.third_trace_id());
            (
                None,
                BytesAt::Opened {
                    call: Box::new(call),
                    held,
                },
            )
        }
        // An entry no longer trusted (a shorter `dedupe.ttl` since) is a miss after all; the
        // call opens at `finish`.
        Err(raw) => (state.dedupe.read_found(&raw), BytesAt::Held(held)),
    })
}

async fn open(
    up: &UploadRequest,
    part: &Part,
    log: &LogContext,
) -> Result<MediaCall, GatewayError> {
    let kind = up.kind;
    let call = MediaCall::open(
        &up.corp,
        kind.route(),
        kind.type_param(),
        &part.filename,
        &part.content_type,
    )
    .await?;
    log.set_third_trace_id(call.third_trace_id());
    Ok(call)
}

/// A small file, whole and hashed before anything goes upstream: a repeat costs Fxiaoke
/// nothing (no request, no budget), and a miss goes out as one write, without the pump.
async fn hold_whole(up: &mut UploadRequest, held: Held) -> Result<Sent, GatewayError> {
    let size = held.len as u64;
    if let Some(t) = &mut up.ticket {
        t.grow_to(size).await?;
    }
    Ok(Sent {
        size,
        digest: Some(held.sha256()),
        upstream: BytesAt::Held(held),
    })
}

/// A larger file: the upstream request opens now and the file is pumped into it. Every early
/// return drops the sender unfinished, which aborts the upstream request.
async fn stream(
    up: &mut UploadRequest,
    mut file: FileSource,
    head: Held,
    part: &Part,
    log: &LogContext,
) -> Result<Sent, GatewayError> {
    let (tx, digest, pending) = open(up, part, log).await?.stream(file.exact_len).await?;
    let pump = Pump {
        tx: &tx,
        limit: up.limit,
        route: up.kind.route().path(),
        send_timeout: up.corp.timing.upstream_timeout(),
        ticket: &mut up.ticket,
        hold_last: false,
        burst: 1,
    };
    let (size, digest) = match pump.run(head, &mut file, digest).await? {
        Streamed::Complete { size, digest, .. } => (size, Some(digest)),
        Streamed::UpstreamGone { size } => (size, None),
    };
    Ok(Sent {
        size,
        digest,
        upstream: BytesAt::Streaming {
            tx,
            pending: Box::new(pending),
        },
    })
}

/// A claimed digest hit: answered without the body.
async fn claim_hit(
    state: &AppState,
    req: Request<Incoming>,
    up: &UploadRequest,
    sha256: &[u8; 32],
    media: &MediaRef,
    log: &LogContext,
) -> Response<Body> {
    state
        .metrics
        .count_dedupe(DedupeResult::HitClaim, media.size);
    log.set_dedupe(DedupeResult::HitClaim);
    let resp = answer::hit_response(media, sha256, &up.request_id);
    after_unread_body(req, up.limit, resp).await
}

/// `resp`, once the body the caller may be sending is dealt with (read to its end, or the
/// connection marked to close when it cannot be).
pub(super) async fn after_unread_body(
    req: Request<Incoming>,
    limit: u64,
    mut resp: Response<Body>,
) -> Response<Body> {
    if !answer::finish_unread_body(req, limit).await {
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

/// The whole file came and the index knows it: the caller holds it too (it sent every byte,
/// which proves it holds the file, so any caller's entry counts).
async fn stream_hit(
    state: &AppState,
    up: UploadRequest,
    key: &DedupeKey,
    media: MediaRef,
    (digest, size): ([u8; 32], u64),
    log: &LogContext,
) -> Response<Body> {
    state.metrics.count_dedupe(DedupeResult::HitStream, size);
    log.set_dedupe(DedupeResult::HitStream);
    state.dedupe.add_holder(key, &media, &up.caller).await;
    let resp = answer::hit_response(&media, &digest, &up.request_id);
    if let Some(g) = up.leader {
        g.complete(media);
    }
    resp
}

/// A new file: Fxiaoke's answer passes through; on `errorCode 0` the mediaId is recorded, the
/// bytes are settled against the caller's quota and the coalesced waiters get it.
async fn record(
    state: &AppState,
    mut up: UploadRequest,
    key: DedupeKey,
    (digest, size): ([u8; 32], u64),
    part: Part,
    answer: Answer,
    log: &LogContext,
) -> Response<Body> {
    state.metrics.count_dedupe(DedupeResult::Miss, 0);
    log.set_dedupe(DedupeResult::Miss);
    let media_id = answer.env.str_field("mediaId");
    if let (crate::upstream::envelope::UpstreamCode::Success, Some(media_id)) =
        (answer.code, media_id)
    {
        if let Some(t) = up.ticket.take() {
            t.settle(size);
        }
        let now = state.clock.unix_ms();
        let media = MediaRef::uploaded(media_id.into(), size, part.content_type, &up.caller, now);
        state.dedupe.put(key, media.clone()).await;
        if let Some(g) = up.leader.take() {
            g.complete(media);
        }
    }
    answer::passthrough(answer.status, answer.env, Some((digest, false)))
}

/// `fxgate_inflight_uploads` while an upload streams.
pub(super) struct Inflight(prometheus::IntGauge);

impl Inflight {
    pub(super) fn enter(metrics: &Metrics) -> Self {
        metrics.http.inflight_uploads.inc();
        Self(metrics.http.inflight_uploads.clone())
    }
}

impl Drop for Inflight {
    fn drop(&mut self) {
        self.0.dec();
    }
}
