//! The upload lifecycle (design §4): size check on the announced length, type check on the
//! file's first bytes, then one streamed pass that forwards each chunk to Fxiaoke while
//! hashing it, holding back only the closing multipart delimiter until the SHA-256 is final.
//! A file that ends within `SMALL_FILE` bytes is hashed before anything goes upstream.
//! Memory per upload is the channel's few chunks plus the inbound read buffer, whatever the
//! size.

pub mod digest;
pub mod multipart;
pub mod source;

use base64::Engine as _;
use bytes::Bytes;
use futures_util::FutureExt as _;
use http::{header, HeaderMap, HeaderValue, Request, Response};
use hyper::body::Incoming;
use sha2::{Digest, Sha256};

use crate::state::AppState;
use crate::body::{full, Body};
use crate::config::{ClaimScope, ImageType, UploadConfig};
use crate::dedupe::{follow, DedupeKey, LeaderGuard, LockOutcome, MediaRef, Outcome, Role};
use crate::error::GatewayError;
use crate::middleware::access_log::LogContext;
use crate::middleware::auth::Principal;
use crate::middleware::quota::TicketSlot;
use crate::middleware::request_id::RequestId;
use crate::quota::BytesTicket;
use crate::route::query_param;
use crate::upstream::body::{channel, BodySender, DigestReceiver};
use crate::upstream::envelope::{Envelope, TOKEN_EXPIRED};
use crate::upstream::Corp;
pub use source::FileSource;

/// Multipart framing a caller may add around the file before a `Content-Length` above the
/// file limit is refused outright; the file itself is still held to the exact limit.
pub const MULTIPART_FRAMING_ALLOWANCE: u64 = 16 * 1024;

/// The upload routes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UploadKind {
    /// `POST /media/upload/message`
    Message,
    /// `POST /media/upload?type=image`
    Image,
    /// `POST /media/upload?type=document`
    Document,
}

impl UploadKind {
    /// The upstream (and caller-facing) path.
    pub fn path(self) -> &'static str {
        match self {
            Self::Message => "/media/upload/message",
            Self::Image | Self::Document => "/media/upload",
        }
    }

    /// The route's name in dedupe keys.
    pub fn label(self) -> &'static str {
        match self {
            Self::Message => "message",
            Self::Image => "image",
            Self::Document => "document",
        }
    }

    /// The `type` query parameter Fxiaoke expects, if any.
    pub fn type_param(self) -> Option<&'static str> {
        match self {
            Self::Message => None,
            Self::Image => Some("image"),
            Self::Document => Some("document"),
        }
    }

    /// The route's file limit.
    pub fn limit(self, cfg: &UploadConfig) -> u64 {
        match self {
            Self::Message | Self::Image => cfg.message_max_bytes,
            Self::Document => cfg.document_max_bytes,
        }
    }
}

/// `Repr-Digest` / `Content-Digest` value of a SHA-256 (RFC 9530).
pub fn repr_digest(sha256: &[u8; 32]) -> String {
    format!(
        "sha-256=:{}:",
        base64::engine::general_purpose::STANDARD.encode(sha256)
    )
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// A filename safe inside `filename="..."`: no quotes, no line breaks, no path.
fn sanitize_filename(name: &str) -> String {
    let base = name.rsplit(['/', '\\']).next().unwrap_or(name);
    let clean: String = base
        .chars()
        .filter(|c| !c.is_control())
        .map(|c| if c == '"' { '\'' } else { c })
        .collect();
    clean.chars().take(200).collect()
}

/// Handles one upload request for `kind`.
pub async fn handle(
    state: &AppState,
    req: Request<Incoming>,
    kind: UploadKind,
    principal: &Principal,
    log: &LogContext,
) -> Result<Response<Body>, GatewayError> {
    let corp = state.corp(&principal.client.corp)?;
    let caller = principal.client.name.as_str();
    let limit = match principal.client.max_file_bytes {
        Some(own) => own.min(kind.limit(&state.cfg.upload)),
        None => kind.limit(&state.cfg.upload),
    };
    let announced = content_length(req.headers());
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let boundary = content_type
        .as_deref()
        .filter(|ct| {
            ct.trim_start()
                .to_ascii_lowercase()
                .starts_with("multipart/")
        })
        .map(|ct| {
            multer::parse_boundary(ct).map_err(|_| GatewayError::MalformedBody {
                detail: "multipart Content-Type without a boundary".into(),
            })
        })
        .transpose()?;
    let filename_param = query_param(req.uri(), "filename")
        .map(|f| sanitize_filename(&f))
        .filter(|f| !f.is_empty());
    let claim = digest::claimed(req.headers())?;
    // Bytes reserved by the quota layer; dropped unsettled (failure, dedupe hit) it refunds.
    let mut ticket = req
        .extensions()
        .get::<TicketSlot>()
        .and_then(TicketSlot::take);
    let request_id = req
        .extensions()
        .get::<RequestId>()
        .map(|r| r.0.to_string())
        .unwrap_or_default();

    // Refuse before the body is touched: with `Expect: 100-continue` the caller never sends it.
    if let Some(n) = announced {
        let allowance = if boundary.is_some() {
            MULTIPART_FRAMING_ALLOWANCE
        } else {
            0
        };
        if n > limit.saturating_add(allowance) {
            return Err(GatewayError::PayloadTooLarge {
                seen: n,
                limit,
                route: kind.path(),
            });
        }
    }

    // Digest-first: a claimed digest is looked up before any body byte is read.
    let mut leader = None;
    if let Some(sha256) = claim {
        // A document's key includes its filename, known up front only from `?filename=`.
        let filename = match kind {
            UploadKind::Document => filename_param.clone(),
            _ => None,
        };
        if kind != UploadKind::Document || filename.is_some() {
            let key = DedupeKey {
                corp: corp.cfg.name.clone(),
                route: kind.label(),
                sha256,
                filename,
            };
            match claim_lookup(state, &corp, &key, caller).await {
                Claim::Hit(media) => {
                    state.metrics.dedupe.with_label_values(&["hit_claim"]).inc();
                    state.metrics.dedupe_bytes_saved.inc_by(media.size);
                    log.set_dedupe("hit_claim");
                    let reusable = finish_unread_body(req, limit).await;
                    let mut resp = hit_response(&media, &sha256, &request_id);
                    if !reusable {
                        resp.headers_mut()
                            .insert(header::CONNECTION, HeaderValue::from_static("close"));
                    }
                    return Ok(resp);
                }
                Claim::Lead(guard) => leader = Some(guard),
                Claim::Alone => {}
            }
        }
    }

    let body = req.into_body();
    let mut file = match boundary {
        Some(b) => FileSource::multipart(body, b).await?,
        None => {
            if announced == Some(0) {
                return Err(GatewayError::BadRequest {
                    detail: "empty body; send the file as the body or as part `media`".into(),
                });
            }
            FileSource::raw(body, filename_param.clone(), content_type, announced)
        }
    };

    // Type check on the first bytes, before any upstream request exists.
    let mut head: Vec<Bytes> = Vec::new();
    let mut head_len = 0usize;
    while head_len < 16 {
        match file.next_chunk().await? {
            Some(chunk) => {
                head_len += chunk.len();
                head.push(chunk);
            }
            None => break,
        }
    }
    if head_len == 0 {
        return Err(GatewayError::BadRequest {
            detail: "the file is empty".into(),
        });
    }
    let first: Vec<u8> = head
        .iter()
        .flat_map(|c| c.iter().copied())
        .take(16)
        .collect();
    let sniffed = ImageType::sniff(&first);
    if kind != UploadKind::Document {
        match sniffed {
            Some(t) if state.cfg.upload.message_types.contains(&t) => {}
            Some(t) => return Err(GatewayError::UnsupportedType { detected: t.mime() }),
            None => {
                return Err(GatewayError::UnsupportedType {
                    detected: describe_unknown(&first),
                })
            }
        }
    }
    let filename = file
        .filename
        .as_deref()
        .map(sanitize_filename)
        .filter(|f| !f.is_empty())
        .or(filename_param)
        .unwrap_or_else(|| default_filename(sniffed));
    let part_type = match (&file.content_type, sniffed) {
        (Some(ct), _) if !ct.is_empty() => ct.clone(),
        (_, Some(t)) => t.mime().to_string(),
        _ => "application/octet-stream".to_string(),
    };

    // A file that ends within its first `SMALL_FILE` bytes is whole before anything goes
    // upstream: those bytes sit in hyper's read buffer anyway. It is hashed first, so a stream
    // hit costs Fxiaoke nothing (no request, no budget), and a miss goes out as one write,
    // without the pump. Larger files stream as they arrive.
    let whole = gather_small(&mut file, &mut head, &mut head_len, limit, kind.path()).await?;

    let inflight = state.metrics.inflight_uploads.clone();
    inflight.inc();
    let _inflight = Guard(Some(move || inflight.dec()));

    let (size, digest, upstream) = if whole {
        // The body is read to its end; the reader's hold on hyper's buffer ends here.
        drop(file);
        let size = head_len as u64;
        if let Some(t) = &mut ticket {
            t.grow_to(size).await?;
        }
        let mut h = Sha256::new();
        for chunk in &head {
            h.update(chunk);
        }
        (size, Some(h.finalize().into()), Upstream::Held(head))
    } else {
        let opened = open_upstream(&corp, kind, &filename, &part_type, log).await?;
        let upstream_len = file
            .exact_len
            .map(|n| opened.prefix.len() as u64 + n + opened.suffix.len() as u64);
        let (tx, upstream_body, digest) = channel(upstream_len);
        let upstream_req = opened.request(Body::new(upstream_body), upstream_len)?;
        // The request future runs beside the body pump; it resolves once Fxiaoke answers.
        // The prefix waits in the channel until hyper connects: it holds four chunks.
        if tx.send(opened.prefix.clone()).await.is_err() {
            return Err(GatewayError::UpstreamUnreachable {
                source: "upstream request ended before its body".into(),
            });
        }
        let request = corp.client().request(upstream_req);
        let pending = AbortOnDrop(tokio::spawn(async move {
            request.await.map_err(crate::upstream::transport::classify)
        }));
        let sent = stream_file(
            &corp,
            &tx,
            digest,
            head,
            &mut file,
            limit,
            kind.path(),
            &mut ticket,
        )
        .await;
        // Every early return below drops `tx` unfinished, which aborts the upstream request:
        // it never completes, so Fxiaoke stores nothing.
        let (size, digest) = match sent? {
            Streamed::Complete { size, digest } => (size, Some(digest)),
            Streamed::UpstreamGone { size } => (size, None),
        };
        (
            size,
            digest,
            Upstream::Streaming {
                tx,
                pending,
                opened,
            },
        )
    };
    state
        .metrics
        .upload_bytes
        .with_label_values(&[caller, kind.path()])
        .inc_by(size);
    log.add_bytes(size);

    let mut key = None;
    if let Some(digest) = digest {
        if claim.is_some_and(|c| c != digest) {
            return Err(GatewayError::DigestMismatch {
                computed: base64::engine::general_purpose::STANDARD.encode(digest),
            });
        }
        let k = DedupeKey {
            corp: corp.cfg.name.clone(),
            route: kind.label(),
            sha256: digest,
            filename: (kind == UploadKind::Document).then(|| filename.clone()),
        };
        // The caller sent every byte, which proves it holds the file: any caller's entry counts.
        if let Some(media) = state.dedupe.store.get(&k).await {
            // Dropping a streaming upload unfinished aborts it.
            drop(upstream);
            state
                .metrics
                .dedupe
                .with_label_values(&["hit_stream"])
                .inc();
            state.metrics.dedupe_bytes_saved.inc_by(size);
            log.set_dedupe("hit_stream");
            state.dedupe.add_holder(&k, media.clone(), caller).await;
            if let Some(g) = leader {
                g.complete(media.clone());
            }
            return Ok(hit_response(&media, &digest, &request_id));
        }
        key = Some(k);
    }

    let (answer, token) = match upstream {
        Upstream::Streaming {
            tx,
            pending,
            opened,
        } => {
            // The hash is final and new: only now does the closing delimiter go out.
            if key.is_some() && tx.send(opened.suffix.clone()).await.is_ok() {
                let _ = tx.finish().await;
            }
            (pending.wait().boxed(), opened.token)
        }
        Upstream::Held(chunks) => {
            let opened = open_upstream(&corp, kind, &filename, &part_type, log).await?;
            let mut one = bytes::BytesMut::with_capacity(
                opened.prefix.len() + size as usize + opened.suffix.len(),
            );
            one.extend_from_slice(&opened.prefix);
            for c in &chunks {
                one.extend_from_slice(c);
            }
            one.extend_from_slice(&opened.suffix);
            drop(chunks);
            let len = one.len() as u64;
            let req = opened.request(full(one.freeze()), Some(len))?;
            let request = corp.client().request(req);
            (
                async move { request.await.map_err(crate::upstream::transport::classify) }.boxed(),
                opened.token,
            )
        }
    };

    // Fxiaoke's deadline runs from the last byte sent: the upload itself may take long.
    let started = std::time::Instant::now();
    let answer = tokio::time::timeout(corp.cfg.upstream_timeout, answer).await;
    state
        .metrics
        .upstream_duration
        .with_label_values(&[kind.path()])
        .observe(started.elapsed().as_secs_f64());
    let resp = match answer {
        Err(_) => {
            return Err(GatewayError::UpstreamTimeout {
                after: corp.cfg.upstream_timeout,
            })
        }
        Ok(r) => r?,
    };
    let status = resp.status();
    let env = Envelope::read(resp.into_body()).await?;
    log.set_upstream_trace_id(env.trace_id());
    let code = env.error_code();
    corp.count(kind.path(), &code.map_or("none".into(), |c| c.to_string()));
    if code == Some(TOKEN_EXPIRED) {
        // The body is gone and is never replayed: the caller retries with the fresh token.
        corp.tokens.invalidate(&token);
        return Err(GatewayError::TokenRejected);
    }
    if let Some(e) = Corp::rate_limited(code) {
        return Err(e);
    }
    let (Some(digest), Some(key)) = (digest, key) else {
        // Fxiaoke answered before taking the whole file: pass its answer on unchanged.
        return Ok(passthrough(status, env, None));
    };
    state.metrics.dedupe.with_label_values(&["miss"]).inc();
    log.set_dedupe("miss");
    if let (Some(0), Some(media_id)) = (code, env.str_field("mediaId")) {
        if let Some(t) = ticket.take() {
            t.settle(size);
        }
        let media = MediaRef {
            media_id: media_id.to_string(),
            size,
            content_type: part_type,
            created_at: std::time::SystemTime::now(),
            caller: caller.to_string(),
            holders: vec![caller.to_string()],
        };
        state.dedupe.store.put(key, media.clone()).await;
        if let Some(g) = leader {
            g.complete(media);
        }
    }
    Ok(passthrough(status, env, Some((digest, false))))
}

/// Files up to this size are read whole before the upstream request opens (see `handle`).
/// It is within the server's inbound read buffer, so it adds no memory per upload.
pub const SMALL_FILE: usize = 32 * 1024;

/// Reads on while the file is still within `SMALL_FILE`; `true` when it ended there.
async fn gather_small(
    file: &mut FileSource,
    held: &mut Vec<Bytes>,
    held_len: &mut usize,
    limit: u64,
    route: &'static str,
) -> Result<bool, GatewayError> {
    loop {
        if *held_len as u64 > limit {
            return Err(GatewayError::PayloadTooLarge {
                seen: *held_len as u64,
                limit,
                route,
            });
        }
        if *held_len > SMALL_FILE {
            return Ok(false);
        }
        match file.next_chunk().await? {
            Some(chunk) => {
                *held_len += chunk.len();
                held.push(chunk);
            }
            None => return Ok(true),
        }
    }
}

/// Where the file's bytes are when its hash is final.
enum Upstream {
    /// Already on their way; the closing delimiter is held back.
    Streaming {
        tx: BodySender,
        pending: AbortOnDrop,
        opened: Opened,
    },
    /// All here: nothing has gone upstream yet.
    Held(Vec<Bytes>),
}

/// An upstream upload, ready to send: its budget is taken and its token in the URL.
struct Opened {
    token: std::sync::Arc<crate::upstream::token::CorpToken>,
    uri: http::Uri,
    boundary: String,
    /// The part's header, before the file.
    prefix: Bytes,
    /// The closing delimiter, after it.
    suffix: Bytes,
}

impl Opened {
    fn request(&self, body: Body, len: Option<u64>) -> Result<Request<Body>, GatewayError> {
        let mut builder = Request::post(self.uri.clone()).header(
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
}

/// Takes the corp's Fxiaoke allowance first, then the token (design §4 step 7), and frames the
/// file for Fxiaoke: one part `media`, our boundary.
async fn open_upstream(
    corp: &Corp,
    kind: UploadKind,
    filename: &str,
    part_type: &str,
    log: &LogContext,
) -> Result<Opened, GatewayError> {
    corp.take_budget(kind.path()).await?;
    let token = corp.tokens.get().await?;
    let mut extra = Vec::new();
    if let Some(t) = kind.type_param() {
        extra.push(("type", t));
    }
    let target = corp.target(kind.path(), Some(&token), &extra)?;
    log.set_third_trace_id(&target.third_trace_id);
    let boundary = format!("fxgate-{}", uuid::Uuid::new_v4().simple());
    let prefix = Bytes::from(format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"media\"; filename=\"{filename}\"\r\nContent-Type: {part_type}\r\n\r\n"
    ));
    let suffix = Bytes::from(format!("\r\n--{boundary}--\r\n"));
    Ok(Opened {
        token,
        uri: target.uri,
        boundary,
        prefix,
        suffix,
    })
}

/// How often a request waiting on another replica's upload of the same file looks for its
/// entry.
const REMOTE_LEADER_POLL: std::time::Duration = std::time::Duration::from_millis(50);

/// What a claimed digest led to.
enum Claim {
    /// Answer with this mediaId; no body needed.
    Hit(MediaRef),
    /// Upload, and hand the result to the requests waiting on the same digest.
    Lead(LeaderGuard),
    /// Upload without coalescing (waiting for a leader took too long).
    Alone,
}

async fn claim_lookup(state: &AppState, corp: &Corp, key: &DedupeKey, caller: &str) -> Claim {
    let per_caller = state.dedupe.claim_scope == ClaimScope::Client;
    // A digest alone proves nothing: by default it only finds the caller's own files.
    let visible = |m: &MediaRef| !per_caller || m.held_by(caller);
    let bound = corp.cfg.upstream_timeout * 2;
    loop {
        if let Some(media) = state.dedupe.store.get(key).await.filter(|m| visible(m)) {
            return Claim::Hit(media);
        }
        let scope = per_caller.then(|| caller.to_string());
        match state.dedupe.coalescer.join(key.clone(), scope.clone()) {
            Role::Leader(mut guard) => {
                // Other replicas may be uploading the same file: wait for their entry while
                // their lease lives, take over when it lapses.
                let deadline = tokio::time::Instant::now() + bound;
                loop {
                    match state.dedupe.store.lock(key, scope.as_deref()).await {
                        LockOutcome::Held(lease) => {
                            // The holder before us may just have finished.
                            if let Some(media) =
                                state.dedupe.store.get(key).await.filter(|m| visible(m))
                            {
                                guard.complete(media.clone());
                                return Claim::Hit(media);
                            }
                            guard.hold(lease);
                            return Claim::Lead(guard);
                        }
                        LockOutcome::Busy if tokio::time::Instant::now() >= deadline => {
                            return Claim::Lead(guard)
                        }
                        LockOutcome::Busy => {
                            tokio::time::sleep(REMOTE_LEADER_POLL).await;
                            if let Some(media) =
                                state.dedupe.store.get(key).await.filter(|m| visible(m))
                            {
                                guard.complete(media.clone());
                                return Claim::Hit(media);
                            }
                        }
                    }
                }
            }
            Role::Follower(slot) => match follow(slot, bound).await {
                Some(Outcome::Done(media)) => return Claim::Hit(media),
                // The leader failed: look again, and one of the waiters takes the lead.
                Some(Outcome::Failed) => continue,
                None => return Claim::Alone,
            },
        }
    }
}

/// On HTTP/1.1 a body the caller is already sending must be read before answering, or closing
/// the connection with unread data resets it and the caller may lose the answer. With
/// `Expect: 100-continue` nothing was sent; on HTTP/2 hyper resets just the stream. Returns
/// whether the HTTP/1 connection can be reused (the body, if any, was read to its end).
async fn finish_unread_body(req: Request<Incoming>, limit: u64) -> bool {
    let expects_continue = req
        .headers()
        .get(header::EXPECT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"));
    if req.version() >= http::Version::HTTP_2 {
        return true;
    }
    if expects_continue {
        return false;
    }
    use http_body::Body as _;
    use http_body_util::BodyExt as _;
    let mut body = req.into_body();
    let mut seen = 0u64;
    let bound = limit.saturating_add(MULTIPART_FRAMING_ALLOWANCE);
    while let Ok(Some(Ok(frame))) =
        tokio::time::timeout(source::BODY_IDLE_TIMEOUT, body.frame()).await
    {
        seen += frame.data_ref().map_or(0, |d| d.len() as u64);
        if seen > bound {
            return false;
        }
    }
    body.is_end_stream()
}

/// The answer for a dedupe hit, shaped like Fxiaoke's.
fn hit_response(media: &MediaRef, sha256: &[u8; 32], request_id: &str) -> Response<Body> {
    let body = serde_json::json!({
        "errorCode": 0,
        "errorMessage": "success",
        "errorDescription": "success",
        "mediaId": media.media_id,
        "traceId": request_id,
        "deduplicated": true,
    });
    let mut resp = Response::new(full(body.to_string()));
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Ok(v) = HeaderValue::from_str(&repr_digest(sha256)) {
        headers.insert("repr-digest", v);
    }
    resp
}

/// Forwards Fxiaoke's answer, adding `deduplicated` and `Repr-Digest` when the file was whole.
fn passthrough(
    status: http::StatusCode,
    env: Envelope,
    digest: Option<([u8; 32], bool)>,
) -> Response<Body> {
    let body = match (&env.json, digest) {
        (Some(map), Some((_, dedup))) => with_flag(&env.raw, map, dedup).unwrap_or_else(|| {
            let mut map = map.clone();
            map.insert("deduplicated".into(), serde_json::Value::Bool(dedup));
            Bytes::from(serde_json::Value::Object(map).to_string())
        }),
        _ => env.raw.clone(),
    };
    let mut resp = Response::new(full(body));
    *resp.status_mut() = status;
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Some((d, _)) = digest {
        if let Ok(v) = HeaderValue::from_str(&repr_digest(&d)) {
            headers.insert("repr-digest", v);
        }
    }
    resp
}

/// Fxiaoke's answer `raw` (a JSON object, parsed as `map`) with `"deduplicated"` added before
/// its closing brace: its own bytes and key order stay, and nothing is re-serialised.
fn with_flag(
    raw: &Bytes,
    map: &serde_json::Map<String, serde_json::Value>,
    dedup: bool,
) -> Option<Bytes> {
    if map.contains_key("deduplicated") {
        return None;
    }
    let end = raw.iter().rposition(|b| !b.is_ascii_whitespace())?;
    if raw[end] != b'}' {
        return None;
    }
    let field: &[u8] = if dedup {
        b"\"deduplicated\":true}"
    } else {
        b"\"deduplicated\":false}"
    };
    let mut out = Vec::with_capacity(end + 1 + field.len());
    out.extend_from_slice(&raw[..end]);
    if !map.is_empty() {
        out.push(b',');
    }
    out.extend_from_slice(field);
    Some(out.into())
}

enum Streamed {
    Complete {
        size: u64,
        digest: [u8; 32],
    },
    /// Fxiaoke stopped reading (it answered early or the connection dropped).
    UpstreamGone {
        size: u64,
    },
}

// Each argument is one piece of the upload's state, borrowed for the pump; a struct would
// only rename them.
#[allow(clippy::too_many_arguments)]
async fn stream_file(
    corp: &Corp,
    tx: &BodySender,
    digest: DigestReceiver,
    head: Vec<Bytes>,
    file: &mut FileSource,
    limit: u64,
    route: &'static str,
    ticket: &mut Option<BytesTicket>,
) -> Result<Streamed, GatewayError> {
    let send_timeout = corp.cfg.upstream_timeout;
    let timed_out = || GatewayError::UpstreamTimeout {
        after: send_timeout,
    };
    let send = |chunk: Bytes| async move {
        // A deadline (a timer entry) only when the channel is full and we must wait.
        let chunk = match tx.try_send_file(chunk) {
            Ok(None) => return Ok(true),
            Ok(Some(c)) => c,
            Err(_) => return Ok(false),
        };
        match tokio::time::timeout(send_timeout, tx.send_file(chunk)).await {
            Err(_) => Err(timed_out()),
            Ok(r) => Ok(r.is_ok()),
        }
    };
    let mut size = 0u64;
    let mut pending = head.into_iter();
    loop {
        let chunk = match pending.next() {
            Some(c) => c,
            None => match file.next_chunk().await? {
                Some(c) => c,
                None => break,
            },
        };
        size += chunk.len() as u64;
        if size > limit {
            return Err(GatewayError::PayloadTooLarge {
                seen: size,
                limit,
                route,
            });
        }
        if let Some(t) = ticket {
            t.grow_to(size).await?;
        }
        if !send(chunk).await? {
            return Ok(Streamed::UpstreamGone { size });
        }
    }
    // The body hashes what hyper takes from it: the digest is final once hyper has taken the
    // last byte, which takes as long as sending it.
    let digest = tokio::time::timeout(send_timeout, async {
        match tx.end_of_file().await {
            Ok(()) => digest.await.ok(),
            Err(_) => None,
        }
    })
    .await
    .map_err(|_| timed_out())?;
    Ok(match digest {
        Some(digest) => Streamed::Complete { size, digest },
        // The body was dropped: the upstream request ended before taking the whole file.
        None => Streamed::UpstreamGone { size },
    })
}

fn describe_unknown(head: &[u8]) -> &'static str {
    if head.starts_with(b"%PDF") {
        "application/pdf"
    } else if head.starts_with(b"PK\x03\x04") {
        "application/zip"
    } else if head
        .iter()
        .all(|b| b.is_ascii_graphic() || b.is_ascii_whitespace())
    {
        "text"
    } else {
        "an unrecognised binary format"
    }
}

fn default_filename(sniffed: Option<ImageType>) -> String {
    match sniffed {
        Some(ImageType::Jpeg) => "media.jpg",
        Some(ImageType::Png) => "media.png",
        Some(ImageType::Gif) => "media.gif",
        Some(ImageType::Bmp) => "media.bmp",
        None => "media.bin",
    }
    .to_string()
}

/// Aborts the spawned upstream request when the upload handler is dropped (caller gone).
struct AbortOnDrop(tokio::task::JoinHandle<Result<Response<Incoming>, GatewayError>>);

impl AbortOnDrop {
    async fn wait(mut self) -> Result<Response<Incoming>, GatewayError> {
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

struct Guard<F: FnOnce()>(Option<F>);
impl<F: FnOnce()> Drop for Guard<F> {
    fn drop(&mut self) {
        if let Some(f) = self.0.take() {
            f();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flagged(raw: &str, dedup: bool) -> Option<String> {
        let map = match serde_json::from_str(raw) {
            Ok(serde_json::Value::Object(m)) => m,
            _ => panic!("test input is an object"),
        };
        with_flag(&Bytes::from(raw.to_string()), &map, dedup)
            .map(|b| String::from_utf8(b.to_vec()).expect("utf-8"))
    }

    #[test]
    fn the_flag_is_added_without_reordering_fxiaokes_answer() {
        let out = flagged("{\"mediaId\":\"m\",\"errorCode\":0}\n", false).expect("added");
        assert_eq!(
            out,
            "{\"mediaId\":\"m\",\"errorCode\":0,\"deduplicated\":false}"
        );
        let v: serde_json::Value = serde_json::from_str(&out).expect("still JSON");
        assert_eq!(v["deduplicated"], false);
        assert_eq!(
            flagged("{ }", true).as_deref(),
            Some("{ \"deduplicated\":true}")
        );
        // Never a duplicate key: the caller falls back to rewriting the object.
        assert_eq!(flagged("{\"deduplicated\":1}", false), None);
    }
}
