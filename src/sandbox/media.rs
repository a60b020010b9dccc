//! The sandbox's media endpoints (fxiaoke.md §3): upload (one multipart part `media` with a
//! filename, images sniffed, Fxiaoke's size limits), download and delete, all behind the token
//! check and answering failures as HTTP 200 with an `errorCode`, as Fxiaoke does.

use bytes::Bytes;
use http::{header, Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use sha2::{Digest, Sha256};

use super::faults::ScriptedAnswer;
use super::state::{Media, State};
use super::{authorize, full, fx_error, json, read_json, valid_trace_id, SandboxOptions};
use crate::body::Body;
use crate::route::query_param;
use crate::sniff::ImageType;

/// The sandbox's upload routes.
#[derive(Debug, Clone, Copy)]
pub(super) enum Route {
    Message,
    Image,
    Document,
}

impl Route {
    fn limit(self, opts: &SandboxOptions) -> u64 {
        match self {
            Self::Message | Self::Image => opts.message_max_bytes,
            Self::Document => opts.document_max_bytes,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Self::Message => "message",
            Self::Image => "image",
            Self::Document => "document",
        }
    }
}

pub(super) async fn upload(state: &State, req: Request<Incoming>, route: Route) -> Response<Body> {
    state.stats.bump(|s| &s.upload_requests);
    let _active = state.stats.active_uploads();
    let req = match admit(state, req).await {
        Ok(req) => req,
        Err(resp) => return resp,
    };
    if state.opts.plain {
        // Neither parsed nor checked: only as much work as reading costs.
        read_rest(&mut req.into_body()).await;
        return keep(state, Media::unread(route.label())).await;
    }
    let boundary = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|ct| multer::parse_boundary(ct).ok());
    let Some(boundary) = boundary else {
        return fx_error(10002, "multipart/form-data with part `media` is required");
    };
    let mut body = req.into_body();
    let form = read_form(state, &mut body, boundary, route).await;
    // Fxiaoke's buffering front end hands its app whole bodies: what follows the closing
    // delimiter (its CRLF, an epilogue) is read too. Left unread, hyper closes the connection
    // after the answer, and a client that already pooled it for its next request sees
    // "connection closed before message completed".
    read_rest(&mut body).await;
    match form {
        Ok(media) => keep(state, media).await,
        Err(resp) => resp,
    }
}

/// The `media` part of a multipart body, read whole.
#[allow(clippy::result_large_err)]
async fn read_form(
    state: &State,
    body: &mut Incoming,
    boundary: String,
    route: Route,
) -> Result<Media, Response<Body>> {
    let mut multipart = multer::Multipart::new(BodyExt::into_data_stream(body), boundary);
    let mut stored: Option<Media> = None;
    loop {
        let field = match multipart.next_field().await {
            Ok(Some(field)) => field,
            Ok(None) => break,
            Err(e) => return Err(aborted(state, &e)),
        };
        if field.name() != Some("media") || stored.is_some() {
            return Err(rejected(
                state,
                "exactly one part named `media` is expected",
            ));
        }
        stored = Some(read_media(state, field, route).await?);
    }
    stored.ok_or_else(|| rejected(state, "exactly one part named `media` is expected"))
}

/// Reads what is left of a body, for at most 10 s (the sandbox's callers are tests).
async fn read_rest(body: &mut Incoming) {
    let _ = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        while let Some(Ok(_)) = body.frame().await {}
    })
    .await;
}

/// The token and trace id, checked before the body; a refused body is still read, as
/// Fxiaoke's buffering front end does, so the connection stays reusable.
#[allow(clippy::result_large_err)]
async fn admit(state: &State, req: Request<Incoming>) -> Result<Request<Incoming>, Response<Body>> {
    let refused = match authorize(
        state,
        query_param(req.uri(), "corpAccessToken").as_deref(),
        query_param(req.uri(), "corpId").as_deref(),
    ) {
        Err(resp) => Some(resp),
        Ok(()) if !valid_trace_id(&req) => Some(fx_error(10002, "thirdTraceId must be a UUID v4")),
        Ok(()) => None,
    };
    let Some(resp) = refused else {
        return Ok(req);
    };
    read_rest(&mut req.into_body()).await;
    Err(resp)
}

fn rejected(state: &State, why: &str) -> Response<Body> {
    state.stats.bump(|s| &s.uploads_rejected);
    fx_error(10002, why)
}

/// Reads the `media` part whole, checking its filename, size and (for images) type.
#[allow(clippy::result_large_err)]
async fn read_media(
    state: &State,
    mut field: multer::Field<'_>,
    route: Route,
) -> Result<Media, Response<Body>> {
    let Some(filename) = field.file_name().map(str::to_owned) else {
        return Err(rejected(state, "the `media` part needs a filename"));
    };
    let content_type = field.content_type().map(|m| m.to_string());
    let mut hasher = Sha256::new();
    let mut kept = Vec::new();
    let mut size = 0u64;
    let mut head = Vec::with_capacity(16);
    let rate = state.faults.lock().upload_read_kib_per_sec;
    loop {
        match field.chunk().await {
            Ok(Some(chunk)) => {
                super::faults::pace_read(rate, chunk.len()).await;
                size += chunk.len() as u64;
                if head.len() < 16 {
                    head.extend_from_slice(&chunk[..chunk.len().min(16 - head.len())]);
                }
                // A benchmark sink only counts: it must not be the bottleneck.
                if !state.opts.discard {
                    hasher.update(&chunk);
                    kept.extend_from_slice(&chunk);
                }
            }
            Ok(None) => break,
            Err(e) => return Err(aborted(state, &e)),
        }
    }
    if size > route.limit(&state.opts) {
        return Err(rejected(
            state,
            "media is larger than this interface allows",
        ));
    }
    if !matches!(route, Route::Document) && ImageType::sniff(&head).is_none() {
        return Err(rejected(
            state,
            "only JPG/PNG/GIF/BMP/JPEG images are accepted",
        ));
    }
    Ok(Media {
        bytes: Bytes::from(kept),
        sha256: hasher.finalize().into(),
        size,
        filename,
        content_type,
        route: route.label(),
    })
}

/// Applies scripted faults, then keeps the file under a new mediaId.
async fn keep(state: &State, media: Media) -> Response<Body> {
    let delay = state.faults.lock().upload_delay;
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    if state.faults.lock().take_upload_stall() {
        state.stats.bump(|s| &s.uploads_rejected);
        return super::stalled();
    }
    let scripted = state.faults.lock().upload_answers.pop_front();
    if let Some(answer) = scripted {
        state.stats.bump(|s| &s.uploads_rejected);
        return scripted_answer(answer);
    }
    if let Some(code) = state.faults.lock().fail_next_upload.take() {
        state.stats.bump(|s| &s.uploads_rejected);
        return fx_error(code, "scripted failure");
    }
    let id = uuid::Uuid::new_v4().simple().to_string();
    if !state.opts.discard {
        state.media.lock().insert(id.clone(), media);
    }
    state.stats.bump(|s| &s.uploads_completed);
    json(serde_json::json!({
        "errorCode": 0,
        "errorMessage": "success",
        "mediaId": id,
        "traceId": format!("E-O.sandbox.{}", uuid::Uuid::new_v4().simple()),
    }))
}

fn scripted_answer(answer: ScriptedAnswer) -> Response<Body> {
    use futures_util::StreamExt as _;
    let (status, ct, body): (u16, &str, &'static [u8]) = match answer {
        ScriptedAnswer::Html => (
            200,
            "text/html",
            b"<html><body>Service Unavailable</body></html>",
        ),
        ScriptedAnswer::Garbage => (200, "application/json", b"\x00\xffnot json{"),
        ScriptedAnswer::PlainText => (200, "text/plain", b"OK"),
        ScriptedAnswer::BadGateway => (502, "text/html", b"<html>502 Bad Gateway</html>"),
        ScriptedAnswer::ServerError => (
            500,
            "application/json",
            br#"{"errorCode":-1,"errorMessage":"system error"}"#,
        ),
        ScriptedAnswer::ResetMidBody => {
            let cut = futures_util::stream::iter([
                Ok(http_body::Frame::data(Bytes::from_static(
                    b"{\"errorCode\":0,\"med",
                ))),
                Err::<http_body::Frame<Bytes>, crate::body::BoxError>("cut".into()),
            ]);
            let mut resp = Response::new(Body::new(http_body_util::StreamBody::new(cut.boxed())));
            resp.headers_mut().insert(
                header::CONTENT_LENGTH,
                header::HeaderValue::from_static("200"),
            );
            return resp;
        }
    };
    let mut resp = Response::new(full(Bytes::from_static(body)));
    *resp.status_mut() = http::StatusCode::from_u16(status).unwrap_or_default();
    if let Ok(v) = header::HeaderValue::from_str(ct) {
        resp.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    resp
}

fn aborted(state: &State, e: &multer::Error) -> Response<Body> {
    // The client is usually gone; the answer matters only for a malformed body.
    state.stats.bump(|s| &s.uploads_aborted);
    tracing::debug!(error = %e, "sandbox upload body ended abnormally");
    fx_error(10002, "malformed or interrupted multipart body")
}

/// Legacy-style JSON calls carry the token in the body; the gateway also sends it in the query.
#[allow(clippy::result_large_err)]
async fn json_call(
    state: &State,
    req: Request<Incoming>,
) -> Result<serde_json::Value, Response<Body>> {
    let q_token = query_param(req.uri(), "corpAccessToken");
    let q_corp = query_param(req.uri(), "corpId");
    let body = read_json(req)
        .await
        .ok_or_else(|| fx_error(10002, "JSON body expected"))?;
    let token = q_token.or_else(|| {
        body.get("corpAccessToken")
            .and_then(|v| v.as_str())
            .map(str::to_owned)
    });
    let corp = q_corp.or_else(|| {
        body.get("corpId")
            .and_then(|v| v.as_str())
            .map(str::to_owned)
    });
    authorize(state, token.as_deref(), corp.as_deref())?;
    Ok(body)
}

/// The `mediaId` of an authorised JSON call (empty when absent: answered "does not exist").
#[allow(clippy::result_large_err)]
async fn requested_media(state: &State, req: Request<Incoming>) -> Result<String, Response<Body>> {
    let body = json_call(state, req).await?;
    Ok(body
        .get("mediaId")
        .and_then(|v| v.as_str())
        .unwrap_or_default()
        .to_string())
}

pub(super) async fn download(state: &State, req: Request<Incoming>) -> Response<Body> {
    state.stats.bump(|s| &s.downloads);
    let id = match requested_media(state, req).await {
        Ok(id) => id,
        Err(resp) => return resp,
    };
    let found = state
        .media
        .lock()
        .get(&id)
        .map(|m| (m.bytes.clone(), m.content_type.clone()));
    match found {
        Some((bytes, ct)) => {
            let mut resp = if state.faults.lock().take_download_stall() {
                half_then_nothing(bytes)
            } else {
                Response::new(full(bytes))
            };
            let ct = ct.unwrap_or_else(|| "application/octet-stream".into());
            if let Ok(v) = header::HeaderValue::from_str(&ct) {
                resp.headers_mut().insert(header::CONTENT_TYPE, v);
            }
            resp
        }
        None => fx_error(10002, "mediaId does not exist"),
    }
}

/// The first half of `bytes` under a `Content-Length` for all of them, then silence.
fn half_then_nothing(bytes: Bytes) -> Response<Body> {
    use futures_util::StreamExt as _;
    let len = bytes.len();
    let half = futures_util::stream::iter([Ok::<_, crate::body::BoxError>(
        http_body::Frame::data(bytes.slice(..len / 2)),
    )]);
    let body = http_body_util::StreamBody::new(half.chain(futures_util::stream::pending()));
    let mut resp = Response::new(Body::new(body));
    resp.headers_mut()
        .insert(header::CONTENT_LENGTH, len.into());
    resp
}

pub(super) async fn delete(state: &State, req: Request<Incoming>) -> Response<Body> {
    state.stats.bump(|s| &s.deletes);
    let id = match requested_media(state, req).await {
        Ok(id) => id,
        Err(resp) => return resp,
    };
    if state.media.lock().remove(&id).is_some() {
        json(
            serde_json::json!({"errorCode": 0, "errorMessage": "success",
            "traceId": format!("E-O.sandbox.{}", uuid::Uuid::new_v4().simple())}),
        )
    } else {
        fx_error(10002, "mediaId does not exist")
    }
}
