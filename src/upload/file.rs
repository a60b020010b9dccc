//! `POST /media/upload/file` (design §10): a file of up to 100 MiB through Fxiaoke's File
//! Service, answered with an npath. The size is known before the first byte (the service signs
//! it), so the order is: the head's size against the route limit and the caller's bytes today,
//! the Fxiaoke user to ask as, a claimed digest looked up (a hit moves no byte), step 1 for a
//! signature, then step 2 streamed while it is hashed, its last chunk held back until the hash
//! is final: a file the index knows by then is aborted upstream (nothing stored) and its npath
//! answered. Nothing is recorded, and the bytes are refunded, unless Fxiaoke gave an npath.

use std::time::{Duration, UNIX_EPOCH};

use http::{header, HeaderValue, Request, Response};
use hyper::body::Incoming;

use super::answer::{finish_unread_body, repr_digest};
use super::pump::{Held, Pump, Streamed};
use super::request::{extension, UploadKind, UploadRequest};
use crate::body::{full, Body};
use crate::dedupe::{Claim, DedupeKey, MediaRef};
use crate::error::GatewayError;
use crate::metrics::DedupeResult;
use crate::middleware::access_log::LogContext;
use crate::middleware::auth::Principal;
use crate::route::{ApiStyle, Route};
use crate::state::AppState;
use crate::upstream::files::FileAsk;

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
    if up.announced.is_none() {
        return Err(GatewayError::LengthRequired);
    }
    up.admit(&state.quotas, &principal.client).await?;
    let user = file_user(state, principal, &req, &up)?;
    if let Some(key) = up.claim_key() {
        let bound = up.corp.timing.upstream_timeout() * 2;
        match state.dedupe.claim(&key, &up.caller, bound).await {
            Claim::Hit(media) if trusted(state, &key, &media) => {
                let sha256 = key.sha256;
                state
                    .metrics
                    .count_dedupe(DedupeResult::HitClaim, media.size);
                log.set_dedupe(DedupeResult::HitClaim);
                let reusable = finish_unread_body(req, up.limit).await;
                let mut resp = npath_answer(&media.media_id, &sha256, &up.request_id, true);
                if !reusable {
                    resp.headers_mut()
                        .insert(header::CONNECTION, HeaderValue::from_static("close"));
                }
                return Ok(resp);
            }
            Claim::Lead(guard) => up.leader = Some(guard),
            Claim::Hit(_) | Claim::Alone => {}
        }
    }
    let mut file = up.open_file(req.into_body()).await?;
    let size = file.exact_len.ok_or(GatewayError::LengthRequired)?;
    if size > up.limit {
        return Err(up.too_large(size));
    }
    let head = Held::read_head(&mut file).await?;
    let part = up.part(&file, None);
    let ext = extension(&part.filename).ok_or_else(|| GatewayError::BadRequest {
        detail: "the file needs a name with an extension (`?filename=report.pdf`)".into(),
    })?;
    let ask = FileAsk {
        user: &user,
        temporary: up.kind == UploadKind::FileTemp,
        filename: &part.filename,
        extension: &ext,
        size,
    };
    let credential = up.corp.file_credential(&ask, log).await?;
    let (tx, digest, pending, trace) = credential.stream(&up.corp, size)?;
    log.set_upload_trace_id(&trace);
    let _inflight = super::Inflight::enter(&state.metrics);
    let pump = Pump {
        tx: &tx,
        limit: up.limit,
        route: Route::UploadFile.path(),
        send_timeout: up.corp.timing.upstream_timeout(),
        ticket: &mut up.ticket,
        hold_last: true,
    };
    let (sent, digest, held) = match pump.run(head, &mut file, digest).await? {
        Streamed::Complete { size, digest, held } => (size, digest, held),
        // The service stopped reading: its answer says why (a refused signature, say).
        Streamed::UpstreamGone { .. } => {
            drop(tx);
            return Err(pending.npath().await.err().unwrap_or_else(|| {
                GatewayError::UpstreamInvalid {
                    detail: "step 2 answered before the whole file".into(),
                }
            }));
        }
    };
    count_bytes(state, &up, log, sent);
    if sent != size {
        // The multipart body's framing was not the usual one: the signed size is wrong, and
        // the upload is aborted (`tx` dropped unfinished).
        return Err(GatewayError::MalformedBody {
            detail: format!("the file part is {sent} bytes, not the {size} its Content-Length implies (an epilogue or unusual framing); send the file as the raw body"),
        });
    }
    up.check_claim(digest)?;
    let key = up.key(digest, &part);
    if let Some(media) = state
        .dedupe
        .get(&key)
        .await
        .filter(|m| trusted(state, &key, m))
    {
        // Dropping the sender unfinished aborts step 2: Fxiaoke stores nothing.
        drop(tx);
        drop(pending);
        state.metrics.count_dedupe(DedupeResult::HitStream, sent);
        log.set_dedupe(DedupeResult::HitStream);
        state.dedupe.add_holder(&key, &media, &up.caller).await;
        if let Some(g) = up.leader.take() {
            g.complete(media.clone());
        }
        return Ok(npath_answer(&media.media_id, &digest, &up.request_id, true));
    }
    if let Some(last) = held {
        if tx.send(last).await.is_ok() {
            let _ = tx.finish().await;
        }
    } else {
        let _ = tx.finish().await;
    }
    let (npath, took) = pending.npath().await?;
    log.add_upstream_time(took);
    record(
        state,
        up,
        key,
        (digest, sent),
        &part.content_type,
        &npath,
        log,
    )
    .await;
    Ok(npath_answer(&npath, &digest, &trace, false))
}

/// The Fxiaoke user step 1 asks as (design §10): an OAuth-style caller's `X-Fs-Userid` (one
/// of its `act_as`), else its first `act_as`; a legacy-style caller's `act_as` holds open ids
/// of another kind, so it (like a caller without `act_as`) uses the corp's
/// `file_service_user`.
fn file_user(
    state: &AppState,
    principal: &Principal,
    req: &Request<Incoming>,
    up: &UploadRequest,
) -> Result<String, GatewayError> {
    let _ = state;
    let asked = req
        .headers()
        .get("x-fs-userid")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let own = match principal.style {
        ApiStyle::OAuth => crate::routes::acting_user(principal, asked)?,
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
    (_digest, size): ([u8; 32], u64),
    content_type: &str,
    npath: &str,
    log: &LogContext,
) {
    state.metrics.count_dedupe(DedupeResult::Miss, 0);
    log.set_dedupe(DedupeResult::Miss);
    if let Some(t) = up.ticket.take() {
        t.settle(size);
    }
    let media = MediaRef {
        media_id: npath.to_string(),
        size,
        content_type: content_type.to_string(),
        created_at: UNIX_EPOCH + Duration::from_millis(state.clock.unix_ms()),
        caller: up.caller.clone(),
        holders: vec![up.caller.clone()],
    };
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
    let mut resp = Response::new(full(body.to_string()));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Ok(v) = HeaderValue::from_str(&repr_digest(sha256)) {
        resp.headers_mut().insert("repr-digest", v);
    }
    resp
}
