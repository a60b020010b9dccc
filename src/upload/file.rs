//! `POST /media/upload/file` (design §10): a file of up to 100 MiB through Fxiaoke's File
//! Service, answered with an npath. The size is known before the first byte (the service signs
//! it), so the order is: the head's size against the route limit and the caller's bytes today,
//! the Fxiaoke user to ask as, a claimed digest looked up (a hit moves no byte), step 1 for a
//! signature, then step 2 streamed while it is hashed, its last chunk held back until the hash
//! is final: a file the index knows by then is aborted upstream (nothing stored) and its npath
//! answered. Nothing is recorded, and the bytes are refunded, unless Fxiaoke gave an npath.

use std::time::{Duration, UNIX_EPOCH};

use http::{Request, Response};
use hyper::body::Incoming;

use super::pump::{Held, Pump, Streamed};
use super::request::{extension, UploadKind, UploadRequest};
use crate::body::Body;
use crate::dedupe::{Claim, DedupeKey, MediaRef};
use crate::error::GatewayError;
use crate::metrics::DedupeResult;
use crate::middleware::access_log::LogContext;
use crate::middleware::auth::Principal;
use crate::route::{ApiStyle, Route};
use crate::state::AppState;
use crate::upstream::body::{BodySender, DigestReceiver};
use crate::upstream::files::{FileAsk, FilePending};

/// How long a `TN_` npath is reused: Fxiaoke deletes an unattached one after 3 days, so an
/// entry handed out at 48 h still has a day to be attached.
const TEMPORARY_TRUST: Duration = Duration::from_secs(48 * 3600);

/// Handles one File Service upload.
pub async fn handle(
    state: &AppState,
    req: Request<Incoming>,
    principal: &Principal,
    log: &LogContext,
) -> Result<Response<Body>, GatewayError> {
    let mut up = UploadRequest::parse(state, &req, Route::UploadFile, principal)?;
    let declared = sized(&mut up, &req)?;
    up.admit(&state.quotas, &principal.client).await?;
    let user = file_user(principal, &req, &up)?;
    if let Some(key) = up.claim_key() {
        let bound = up.corp.timing.upstream_timeout() * 2;
        match state.dedupe.claim(&key, &up.caller, bound).await {
            Claim::Hit(media) if trusted(state, &key, &media) => {
                return Ok(claim_hit(state, req, &up, &key, &media, log).await);
            }
            Claim::Lead(guard) => up.leader = Some(guard),
            Claim::Hit(_) | Claim::Alone => {}
        }
    }
    let mut file = up.open_file(req.into_body()).await?;
    let size = declared
        .or(file.exact_len)
        .ok_or(GatewayError::LengthRequired)?;
    if size > up.limit {
        return Err(up.too_large(size));
    }
    let head = Held::read_head(&mut file).await?;
    let part = up.part(&file, None);
    let (tx, digest, pending, trace) = open(&up, &user, &part, size, log).await?;
    let _inflight = super::Inflight::enter(&state.metrics);
    let (digest, held) = match pump(&mut up, &tx, head, &mut file, digest, size).await {
        Ok(Some(done)) => done,
        // The service stopped reading: its answer says why (a refused signature, say).
        Ok(None) => {
            drop(tx);
            return Err(pending.npath().await.err().unwrap_or_else(|| {
                GatewayError::UpstreamInvalid {
                    detail: "step 2 answered before the whole file".into(),
                }
            }));
        }
        Err(e) => return Err(e),
    };
    count_bytes(state, &up, log, size);
    up.check_claim(digest)?;
    let key = up.key(digest, &part);
    if let Some(media) = state
        .dedupe
        .get(&key)
        .await
        .filter(|m| trusted(state, &key, m))
    {
        // Dropping the sender unfinished aborts step 2: Fxiaoke stores nothing.
        drop((tx, pending));
        return Ok(stream_hit(state, up, &key, media, &digest, log).await);
    }
    let within = up.corp.timing.upstream_timeout();
    tx.close(held.unwrap_or_default(), within).await?;
    let (npath, took) = pending.npath().await?;
    log.add_upstream_time(took);
    record(state, up, key, size, &part.content_type, &npath, log).await;
    Ok(npath_answer(&npath, &digest, &trace, false))
}

/// Step 1, then step 2 opened: the signature for this file, and the upload under way.
async fn open(
    up: &UploadRequest,
    user: &str,
    part: &super::Part,
    size: u64,
    log: &LogContext,
) -> Result<(BodySender, DigestReceiver, FilePending, String), GatewayError> {
    let ext = extension(&part.filename).ok_or_else(|| GatewayError::BadRequest {
        detail: "the file needs a name with an extension (`?filename=report.pdf`)".into(),
    })?;
    let ask = FileAsk {
        user,
        temporary: up.kind == UploadKind::FileTemp,
        filename: &part.filename,
        extension: &ext,
        size,
    };
    let credential = up.corp.file_credential(&ask, log).await?;
    let opened = credential.stream(&up.corp, size)?;
    log.set_upload_trace_id(&opened.3);
    Ok(opened)
}

/// Step 2's body: the file pumped in under its limits, its last chunk held back. `None` when
/// the service stopped reading first.
async fn pump(
    up: &mut UploadRequest,
    tx: &BodySender,
    head: Held,
    file: &mut super::FileSource,
    digest: DigestReceiver,
    size: u64,
) -> Result<Option<([u8; 32], Option<bytes::Bytes>)>, GatewayError> {
    let pump = Pump {
        tx,
        limit: up.limit,
        route: Route::UploadFile.path(),
        send_timeout: up.corp.timing.upstream_timeout(),
        ticket: &mut up.ticket,
        hold_last: true,
        burst: crate::upstream::transport::FILE_BURST,
    };
    match pump.run(head, file, digest).await? {
        Streamed::Complete { size: sent, .. } if sent != size => {
            // The multipart body's framing was not the usual one, so the signed size is
            // wrong; dropping the sender aborts the upload.
            Err(GatewayError::MalformedBody {
                detail: format!("the file part is {sent} bytes, not the {size} its Content-Length implies (an epilogue or unusual framing); send the file as the raw body"),
            })
        }
        Streamed::Complete { digest, held, .. } => Ok(Some((digest, held))),
        Streamed::UpstreamGone { .. } => Ok(None),
    }
}

/// A claimed digest the index knows: answered without the body.
async fn claim_hit(
    state: &AppState,
    req: Request<Incoming>,
    up: &UploadRequest,
    key: &DedupeKey,
    media: &MediaRef,
    log: &LogContext,
) -> Response<Body> {
    state
        .metrics
        .count_dedupe(DedupeResult::HitClaim, media.size);
    log.set_dedupe(DedupeResult::HitClaim);
    let resp = npath_answer(&media.media_id, &key.sha256, &up.request_id, true);
    super::after_unread_body(req, up.limit, resp).await
}

/// The whole file came and the index knows it.
async fn stream_hit(
    state: &AppState,
    mut up: UploadRequest,
    key: &DedupeKey,
    media: MediaRef,
    digest: &[u8; 32],
    log: &LogContext,
) -> Response<Body> {
    state
        .metrics
        .count_dedupe(DedupeResult::HitStream, media.size);
    log.set_dedupe(DedupeResult::HitStream);
    state.dedupe.add_holder(key, &media, &up.caller).await;
    let resp = npath_answer(&media.media_id, digest, &up.request_id, true);
    if let Some(g) = up.leader.take() {
        g.complete(media);
    }
    resp
}

/// The size must be known before the first byte (411 otherwise): from `Content-Length`, or
/// for a chunked body from `Upload-Length` (IETF resumable uploads), which then holds the
/// limit and the caller's bytes today too, and is returned as the file's size.
fn sized(up: &mut UploadRequest, req: &Request<Incoming>) -> Result<Option<u64>, GatewayError> {
    if up.announced.is_some() {
        return Ok(None);
    }
    let declared = upload_length(req)?;
    up.announced = declared;
    declared.map(Some).ok_or(GatewayError::LengthRequired)
}

/// `Upload-Length`, when sent: a byte count.
fn upload_length(req: &Request<Incoming>) -> Result<Option<u64>, GatewayError> {
    req.headers()
        .get("upload-length")
        .map(|v| {
            v.to_str()
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
                .ok_or_else(|| GatewayError::BadRequest {
                    detail: "`Upload-Length` must be a byte count".into(),
                })
        })
        .transpose()
}

/// The Fxiaoke user step 1 asks as (design §10): an OAuth-style caller's `X-Fs-Userid` (one
/// of its `act_as`), else its first `act_as`; a legacy-style caller's `act_as` holds open ids
/// of another kind, so it (like a caller without `act_as`) uses the corp's
/// `file_service_user`.
fn file_user(
    principal: &Principal,
    req: &Request<Incoming>,
    up: &UploadRequest,
) -> Result<String, GatewayError> {
    let asked = req
        .headers()
        .get("x-fs-userid")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let own = match principal.style {
        ApiStyle::OAuth => principal.acting_user(asked)?,
        ApiStyle::Legacy => None,
    };
    own.or_else(|| up.corp.cfg.files.user.clone())
        .ok_or_else(|| GatewayError::NoFileUser {
            client: principal.client.name.clone(),
        })
}

/// Whether an index entry may be handed out: `TN_` npaths for at most 48 h.
fn trusted(state: &AppState, key: &DedupeKey, media: &MediaRef) -> bool {
    if key.route != UploadKind::FileTemp.label() {
        return true;
    }
    let now = UNIX_EPOCH + Duration::from_millis(state.clock.unix_ms());
    now.duration_since(media.created_at)
        .is_ok_and(|age| age < TEMPORARY_TRUST)
}

fn count_bytes(state: &AppState, up: &UploadRequest, log: &LogContext, sent: u64) {
    state
        .metrics
        .http
        .upload_bytes
        .with_label_values(&[&up.caller, Route::UploadFile.label()])
        .inc_by(sent);
    log.add_bytes(sent);
}

/// A new npath: the bytes settled against the caller's quota, the entry recorded, the
/// coalesced waiters told.
async fn record(
    state: &AppState,
    mut up: UploadRequest,
    key: DedupeKey,
    size: u64,
    content_type: &str,
    npath: &str,
    log: &LogContext,
) {
    state.metrics.count_dedupe(DedupeResult::Miss, 0);
    log.set_dedupe(DedupeResult::Miss);
    if let Some(t) = up.ticket.take() {
        t.settle(size);
    }
    let now = state.clock.unix_ms();
    let media = MediaRef::uploaded(npath.into(), size, content_type.into(), &up.caller, now);
    state.dedupe.put(key, media.clone()).await;
    if let Some(g) = up.leader.take() {
        g.complete(media);
    }
}

/// fxgate's envelope with the npath, and the file's digest as `Repr-Digest`.
fn npath_answer(npath: &str, sha256: &[u8; 32], trace: &str, deduplicated: bool) -> Response<Body> {
    let body = serde_json::json!({
        "errorCode": 0,
        "errorMessage": "success",
        "npath": npath,
        "traceId": trace,
        "deduplicated": deduplicated,
    });
    super::answer::with_digest(&body, sha256)
}
