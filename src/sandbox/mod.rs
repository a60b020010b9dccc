//! The built-in imitation of Fxiaoke's token and media endpoints (fxiaoke.md §1–§5), strict
//! where Fxiaoke is strict: HTTP 200 with a non-zero `errorCode` for every failure, the same
//! token until 6600/7200 of its lifetime, `14001` for concurrent or more than 10-a-minute token
//! calls, `20016` for an unknown or expired token, one multipart part `media` with a filename.
//!
//! It serves `base_url = "sandbox"` in-process, `fxgate sandbox` standalone, and the tests,
//! which read its counters over HTTP (`GET /_sandbox/stats`) and script faults
//! (`POST /_sandbox/faults`), so the same checks work whether it runs in or out of process.

mod state;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::body::{full, Body};
use crate::clock::{Clock, SystemClock};
use crate::route::query_param;
use crate::sniff::ImageType;
use state::{Faults, Media, State};
pub use state::{Stats, StatsSnapshot};

/// How the sandbox behaves; the defaults are Fxiaoke's documented values.
#[derive(Debug, Clone)]
pub struct SandboxOptions {
    /// Lifetime of an issued token (Fxiaoke: 7200 s). The same token is re-issued for the
    /// first 6600/7200 of it.
    pub token_ttl: Duration,
    /// Credentials the token endpoint accepts.
    pub app_id: String,
    /// App secret the token endpoint accepts.
    pub app_secret: String,
    /// Permanent code the token endpoint accepts.
    pub permanent_code: String,
    /// Time the token endpoint takes to answer, which makes concurrent calls observable.
    pub token_latency: Duration,
    /// Message-material limit (Fxiaoke: 5 MB).
    pub message_max_bytes: u64,
    /// CRM document limit (Fxiaoke: 20 MB).
    pub document_max_bytes: u64,
    /// Read and count uploaded bytes, but neither hash nor keep them (a benchmark sink).
    pub discard: bool,
    /// Time, for token lifetimes (tests share a `ManualClock` with the gateway).
    pub clock: Arc<dyn Clock>,
}

impl Default for SandboxOptions {
    fn default() -> Self {
        Self {
            token_ttl: Duration::from_secs(7200),
            app_id: "sandbox-app".into(),
            app_secret: "sandbox-secret".into(),
            permanent_code: "sandbox-permanent-code".into(),
            token_latency: Duration::from_millis(20),
            message_max_bytes: 5 * 1024 * 1024,
            document_max_bytes: 20 * 1024 * 1024,
            discard: false,
            clock: SystemClock::shared(),
        }
    }
}

/// A running sandbox.
#[derive(Debug)]
pub struct SandboxHandle {
    addr: SocketAddr,
    state: Arc<State>,
    stop: CancellationToken,
}

impl SandboxHandle {
    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
    /// Its base URL, for `base_url`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
    /// Its counters.
    pub fn stats(&self) -> StatsSnapshot {
        self.state.stats.snapshot()
    }
}

impl Drop for SandboxHandle {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Starts a sandbox on `addr` (use port 0 for a free one) and serves until the handle drops.
pub async fn spawn(addr: SocketAddr, opts: SandboxOptions) -> std::io::Result<SandboxHandle> {
    let listener = TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let state = Arc::new(State::new(opts));
    let stop = CancellationToken::new();
    tokio::spawn(accept_loop(listener, state.clone(), stop.clone()));
    Ok(SandboxHandle { addr, state, stop })
}

async fn accept_loop(listener: TcpListener, state: Arc<State>, stop: CancellationToken) {
    loop {
        let stream = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "sandbox accept failed");
                    continue;
                }
            },
        };
        let state = state.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(handle(state, req).await) }
            });
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            let conn = builder.serve_connection(TokioIo::new(stream), svc);
            tokio::select! {
                _ = conn => {}
                _ = stop.cancelled() => {}
            }
        });
    }
}

fn json(value: serde_json::Value) -> Response<Body> {
    let mut resp = Response::new(full(Bytes::from(value.to_string())));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    resp
}

/// Fxiaoke reports every failure as HTTP 200 with a non-zero `errorCode`.
fn fx_error(code: i64, message: &str) -> Response<Body> {
    json(serde_json::json!({
        "errorCode": code,
        "errorMessage": message,
        "errorDescription": message,
        "traceId": format!("E-O.sandbox.{}", uuid::Uuid::new_v4().simple()),
    }))
}

fn valid_trace_id(req: &Request<Incoming>) -> bool {
    query_param(req.uri(), "thirdTraceId")
        .and_then(|t| uuid::Uuid::parse_str(&t).ok())
        .is_some_and(|u| u.get_version_num() == 4)
}

async fn handle(state: Arc<State>, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_string();
    match (req.method(), path.as_str()) {
        (&Method::POST, "/cgi/corpAccessToken/get/V2") => token(&state, req).await,
        (&Method::POST, "/media/upload/message") => upload(&state, req, Route::Message).await,
        (&Method::POST, "/media/upload") => {
            let route = match query_param(req.uri(), "type").as_deref() {
                Some("image") => Route::Image,
                Some("document") => Route::Document,
                _ => return fx_error(10002, "type must be image or document"),
            };
            upload(&state, req, route).await
        }
        (&Method::POST, "/media/download") => download(&state, req).await,
        (&Method::POST, "/media/delete") => delete(&state, req).await,
        (&Method::GET, "/_sandbox/stats") => stats(&state, req).await,
        (&Method::POST, "/_sandbox/faults") => faults(&state, req).await,
        // Lets tests check that no issued token ever reaches a log line.
        (&Method::GET, "/_sandbox/tokens") => json(serde_json::json!(state.issued_tokens())),
        (&Method::GET, p) if p.starts_with("/_sandbox/media/") => {
            let id = &p["/_sandbox/media/".len()..];
            match state.media.lock().get(id) {
                Some(m) => json(m.describe(id)),
                None => {
                    let mut r = json(serde_json::json!({"error": "no such media"}));
                    *r.status_mut() = StatusCode::NOT_FOUND;
                    r
                }
            }
        }
        // Fxiaoke answers unknown paths with HTTP 200 and 10006 (fxiaoke.md §2).
        _ => fx_error(10006, "apiName=[null] is not exists"),
    }
}

async fn read_json(req: Request<Incoming>) -> Option<serde_json::Value> {
    let body = http_body_util::Limited::new(req.into_body(), 64 * 1024)
        .collect()
        .await
        .ok()?;
    serde_json::from_slice(&body.to_bytes()).ok()
}

async fn token(state: &State, req: Request<Incoming>) -> Response<Body> {
    state.stats.bump(|s| &s.token_calls);
    let _in_flight = match state.enter_token_call() {
        Ok(guard) => guard,
        Err(why) => return fx_error(14001, why),
    };
    if !valid_trace_id(&req) {
        return fx_error(10002, "thirdTraceId must be a UUID v4");
    }
    let body = read_json(req).await;
    tokio::time::sleep(state.opts.token_latency).await;
    if state.faults.lock().take_token_failure() {
        state.stats.bump(|s| &s.token_failures);
        return fx_error(-1, "system busy");
    }
    let field = |k: &str| {
        body.as_ref()
            .and_then(|b| b.get(k))
            .and_then(|v| v.as_str())
            .map(str::to_owned)
    };
    let o = &state.opts;
    if field("appId").as_deref() != Some(&o.app_id)
        || field("appSecret").as_deref() != Some(&o.app_secret)
    {
        state.stats.bump(|s| &s.token_failures);
        return fx_error(20006, "appId or appSecret is wrong");
    }
    if field("permanentCode").as_deref() != Some(&o.permanent_code) {
        state.stats.bump(|s| &s.token_failures);
        return fx_error(20015, "permanentCode is wrong");
    }
    let (token, expires_in) = state.issue_token();
    json(serde_json::json!({
        "errorCode": 0,
        "errorMessage": "success",
        "corpAccessToken": token,
        "corpId": state::CORP_ID,
        "expiresIn": expires_in,
        "traceId": format!("E-O.sandbox.{}", uuid::Uuid::new_v4().simple()),
    }))
}

/// Checks the token carried in the query (media uploads) or the JSON body (legacy style).
// The error is the finished answer; boxing it would only add noise to a test fixture.
#[allow(clippy::result_large_err)]
fn authorize(
    state: &State,
    token: Option<&str>,
    corp_id: Option<&str>,
) -> Result<(), Response<Body>> {
    match (token, corp_id) {
        (None, _) | (_, None) => Err(fx_error(20017, "corpAccessToken为必填项")),
        (Some(t), Some(c)) if c == state::CORP_ID && state.token_valid(t) => Ok(()),
        _ => {
            state.stats.bump(|s| &s.token_rejected);
            Err(fx_error(
                20016,
                "the cropId,cropAccessToken or authorization is error",
            ))
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Route {
    Message,
    Image,
    Document,
}

async fn upload(state: &State, req: Request<Incoming>, route: Route) -> Response<Body> {
    state.stats.bump(|s| &s.upload_requests);
    let _active = state.stats.active_uploads();
    let refused = match authorize(
        state,
        query_param(req.uri(), "corpAccessToken").as_deref(),
        query_param(req.uri(), "corpId").as_deref(),
    ) {
        Err(resp) => Some(resp),
        Ok(()) if !valid_trace_id(&req) => Some(fx_error(10002, "thirdTraceId must be a UUID v4")),
        Ok(()) => None,
    };
    if let Some(resp) = refused {
        // Fxiaoke sits behind a buffering front end: the body is read before any answer, so
        // the connection stays reusable. Do the same.
        let mut body = req.into_body();
        while let Some(Ok(_)) = body.frame().await {}
        return resp;
    }
    let boundary = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|ct| multer::parse_boundary(ct).ok());
    let Some(boundary) = boundary else {
        return fx_error(10002, "multipart/form-data with part `media` is required");
    };
    let limit = match route {
        Route::Message | Route::Image => state.opts.message_max_bytes,
        Route::Document => state.opts.document_max_bytes,
    };
    let stream = req.into_body().into_data_stream();
    let mut multipart = multer::Multipart::new(stream, boundary);
    let mut stored: Option<Media> = None;
    loop {
        let mut field = match multipart.next_field().await {
            Ok(Some(field)) => field,
            Ok(None) => break,
            Err(e) => return aborted(state, &e),
        };
        if field.name() != Some("media") || stored.is_some() {
            state.stats.bump(|s| &s.uploads_rejected);
            return fx_error(10002, "exactly one part named `media` is expected");
        }
        let Some(filename) = field.file_name().map(str::to_owned) else {
            state.stats.bump(|s| &s.uploads_rejected);
            return fx_error(10002, "the `media` part needs a filename");
        };
        let content_type = field.content_type().map(|m| m.to_string());
        let mut hasher = Sha256::new();
        let mut kept = Vec::new();
        let mut size = 0u64;
        let mut head = Vec::with_capacity(16);
        loop {
            match field.chunk().await {
                Ok(Some(chunk)) => {
                    size += chunk.len() as u64;
                    // A benchmark sink only counts: it must not be the bottleneck.
                    if !state.opts.discard {
                        hasher.update(&chunk);
                    }
                    if head.len() < 16 {
                        head.extend_from_slice(&chunk[..chunk.len().min(16 - head.len())]);
                    }
                    if !state.opts.discard {
                        kept.extend_from_slice(&chunk);
                    }
                }
                Ok(None) => break,
                Err(e) => return aborted(state, &e),
            }
        }
        if size > limit {
            state.stats.bump(|s| &s.uploads_rejected);
            return fx_error(10002, "media is larger than this interface allows");
        }
        if !matches!(route, Route::Document) && ImageType::sniff(&head).is_none() {
            state.stats.bump(|s| &s.uploads_rejected);
            return fx_error(10002, "only JPG/PNG/GIF/BMP/JPEG images are accepted");
        }
        stored = Some(Media {
            bytes: Bytes::from(kept),
            sha256: hasher.finalize().into(),
            size,
            filename,
            content_type,
            route: match route {
                Route::Message => "message",
                Route::Image => "image",
                Route::Document => "document",
            },
        });
    }
    let Some(media) = stored else {
        state.stats.bump(|s| &s.uploads_rejected);
        return fx_error(10002, "exactly one part named `media` is expected");
    };
    let delay = state.faults.lock().upload_delay;
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
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

async fn download(state: &State, req: Request<Incoming>) -> Response<Body> {
    state.stats.bump(|s| &s.downloads);
    let body = match json_call(state, req).await {
        Ok(b) => b,
        Err(resp) => return resp,
    };
    let id = body
        .get("mediaId")
        .and_then(|v| v.as_str())
        .unwrap_or_default();
    let found = state
        .media
        .lock()
        .get(id)
        .map(|m| (m.bytes.clone(), m.content_type.clone()));
    match found {
        Some((bytes, ct)) => {
            let mut resp = Response::new(full(bytes));
            let ct = ct.unwrap_or_else(|| "application/octet-stream".into());
            if let Ok(v) = header::HeaderValue::from_str(&ct) {
                resp.headers_mut().insert(header::CONTENT_TYPE, v);
            }
            resp
        }
        None => fx_error(10002, "mediaId does not exist"),
    }
}

async fn delete(state: &State, req: Request<Incoming>) -> Response<Body> {
    state.stats.bump(|s| &s.deletes);
    let body = match json_call(state, req).await {
        Ok(b) => b,
        Err(resp) => return resp,
    };
    let id = body
        .get("mediaId")
        .and_then(|v| v.as_str())
        .unwrap_or_default();
    if state.media.lock().remove(id).is_some() {
        json(
            serde_json::json!({"errorCode": 0, "errorMessage": "success",
            "traceId": format!("E-O.sandbox.{}", uuid::Uuid::new_v4().simple())}),
        )
    } else {
        fx_error(10002, "mediaId does not exist")
    }
}

/// `GET /_sandbox/stats?until=<counter>:<value>&timeout_ms=<ms>` answers once the counter
/// reaches the value (or at the timeout), so tests await events instead of sleeping.
async fn stats(state: &State, req: Request<Incoming>) -> Response<Body> {
    let until = query_param(req.uri(), "until").and_then(|u| {
        let (name, value) = u.split_once(':')?;
        Some((name.to_string(), value.parse::<u64>().ok()?))
    });
    let timeout = query_param(req.uri(), "timeout_ms")
        .and_then(|t| t.parse().ok())
        .map(Duration::from_millis)
        .unwrap_or(Duration::from_secs(10))
        .min(Duration::from_secs(60));
    if let Some((name, value)) = until {
        let wait = state.stats.wait_until(&name, value);
        let _ = tokio::time::timeout(timeout, wait).await;
    }
    json(serde_json::to_value(state.stats.snapshot()).unwrap_or_default())
}

async fn faults(state: &State, req: Request<Incoming>) -> Response<Body> {
    let Some(body) = read_json(req).await else {
        return fx_error(10002, "JSON body expected");
    };
    let parsed: Faults = match serde_json::from_value(body) {
        Ok(f) => f,
        Err(e) => return fx_error(10002, &e.to_string()),
    };
    if parsed.revoke_tokens {
        state.revoke_tokens();
    }
    state.faults.lock().apply(parsed);
    json(serde_json::json!({"errorCode": 0}))
}

/// Runs a standalone sandbox until Ctrl-C (`fxgate sandbox`).
pub async fn run_standalone(addr: SocketAddr, opts: SandboxOptions) -> std::io::Result<()> {
    let handle = spawn(addr, opts).await?;
    println!(
        "{}",
        serde_json::json!({"event": "listening", "sandbox": handle.addr().to_string()})
    );
    let _ = tokio::signal::ctrl_c().await;
    drop(handle);
    Ok(())
}
