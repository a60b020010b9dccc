//! The built-in imitation of Fxiaoke's token and media endpoints (fxiaoke.md §1–§5), strict
//! where Fxiaoke is strict: HTTP 200 with a non-zero `errorCode` for every failure, the same
//! token until 6600/7200 of its lifetime, `14001` for concurrent or more than 10-a-minute token
//! calls, `20016` for an unknown or expired token, one multipart part `media` with a filename.
//!
//! It serves `base_url = "sandbox"` in-process, `fxgate sandbox` standalone, and the tests,
//! which read its counters over HTTP (`GET /_sandbox/stats`) and script faults
//! (`POST /_sandbox/faults`), so the same checks work whether it runs in or out of process.

mod faults;
mod files;
mod media;
mod openapi;
mod state;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt as _;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::body::{full, Body};
use crate::clock::{Clock, SystemClock};
use crate::route::query_param;
pub use faults::{Faults, ScriptedAnswer};
use state::{Endpoint, State};
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
    /// Read a media upload's body frame by frame and discard it without parsing it (with
    /// `discard`: a benchmark sink as cheap as a plain hyper server that reads and discards).
    pub plain: bool,
    /// Fxiaoke's per-interface limit on `/cgi/` business calls (100 per 20 s per path,
    /// answered 14001 beyond); `None` lifts it (benchmarks).
    pub per_path_limit: Option<u32>,
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
            plain: false,
            per_path_limit: Some(100),
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
    let svc = tower::service_fn({
        let state = state.clone();
        move |req| {
            let state = state.clone();
            async move { Ok::<_, Infallible>(handle(state, req).await) }
        }
    });
    let listener = crate::server::Listener::plain(listener);
    tokio::spawn(crate::server::serve(
        listener,
        svc,
        crate::server::ServeOptions::sandbox(),
        stop.clone(),
    ));
    Ok(SandboxHandle { addr, state, stop })
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
        (&Method::POST, "/cgi/corpAccessToken/get/V2") => {
            token(&state, req, Endpoint::Legacy).await
        }
        (&Method::POST, "/oauth2.0/token") => token(&state, req, Endpoint::OAuth).await,
        (&Method::POST, "/media/upload/message") => {
            media::upload(&state, req, media::Route::Message).await
        }
        (&Method::POST, "/media/upload") => {
            let route = match query_param(req.uri(), "type").as_deref() {
                Some("image") => media::Route::Image,
                Some("document") => media::Route::Document,
                _ => return fx_error(10002, "type must be image or document"),
            };
            media::upload(&state, req, route).await
        }
        (&Method::POST, "/media/download") => media::download(&state, req).await,
        (&Method::POST, "/media/delete") => media::delete(&state, req).await,
        (&Method::GET, "/_sandbox/stats") => stats(&state, req).await,
        // The container probe (`fxgate healthcheck --admin <sandbox>`): the sandbox serves.
        (&Method::GET, "/healthz") => json(serde_json::json!({"status": "ok"})),
        (&Method::POST, "/_sandbox/faults") => faults(&state, req).await,
        // Lets tests check that no issued token ever reaches a log line.
        (&Method::GET, "/_sandbox/tokens") => json(serde_json::json!(state.issued_tokens())),
        (&Method::GET, "/_sandbox/received") => json(serde_json::json!(state
            .received
            .lock()
            .iter()
            .collect::<Vec<_>>())),
        (&Method::GET, "/_sandbox/messages") => json(serde_json::json!(*state.messages.lock())),
        (&Method::POST, p) if p.starts_with("/cgi/") => openapi::call(&state, req).await,
        (&Method::POST, p) if p.starts_with("/fs/") => files::upload(&state, req).await,
        (&Method::GET, p) if p.starts_with("/_sandbox/files/") => {
            files::describe(&state, &p["/_sandbox/files/".len()..])
        }
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

async fn token(state: &State, req: Request<Incoming>, endpoint: Endpoint) -> Response<Body> {
    match endpoint {
        Endpoint::Legacy => state.stats.bump(|s| &s.token_calls),
        Endpoint::OAuth => state.stats.bump(|s| &s.oauth_token_calls),
    }
    let _in_flight = match state.enter_token_call(endpoint) {
        Ok(guard) => guard,
        Err(why) => return fx_error(14001, why),
    };
    if !valid_trace_id(&req) {
        return fx_error(10002, "thirdTraceId must be a UUID v4");
    }
    let body = read_json(req).await;
    tokio::time::sleep(state.opts.token_latency).await;
    if state.faults.lock().take_token_stall() {
        return stalled();
    }
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
    if endpoint == Endpoint::OAuth && field("grantType").as_deref() != Some("app_secret") {
        state.stats.bump(|s| &s.token_failures);
        return fx_error(10002, "grantType must be app_secret");
    }
    let (token, expires_in) = state.issue_token(endpoint);
    let trace_id = format!("E-O.sandbox.{}", uuid::Uuid::new_v4().simple());
    json(match endpoint {
        Endpoint::Legacy => serde_json::json!({
            "errorCode": 0,
            "errorMessage": "success",
            "corpAccessToken": token,
            "corpId": state::CORP_ID,
            "expiresIn": expires_in,
            "traceId": trace_id,
        }),
        Endpoint::OAuth => serde_json::json!({
            "errorCode": 0,
            "errorMessage": "success",
            "accessToken": token,
            "expiresIn": expires_in,
            "appId": o.app_id,
            "ea": state::EA,
            "openUserId": state::CORP_ID,
            "traceId": trace_id,
        }),
    })
}

/// An answer whose head comes at once and whose body stops after a few bytes, for good: a
/// client that bounds only the head waits forever.
fn stalled() -> Response<Body> {
    let start = futures_util::stream::iter([Ok::<_, crate::body::BoxError>(
        http_body::Frame::data(Bytes::from_static(b"{\"errorCode\":0,")),
    )]);
    let body = http_body_util::StreamBody::new(start.chain(futures_util::stream::pending()));
    let mut resp = Response::new(Body::new(body));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    resp
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
        (Some(t), Some(c)) if c == state::CORP_ID && state.token_valid(Endpoint::Legacy, t) => {
            Ok(())
        }
        _ => {
            state.stats.bump(|s| &s.token_rejected);
            Err(fx_error(
                20016,
                "the cropId,cropAccessToken or authorization is error",
            ))
        }
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

/// Runs a standalone sandbox until SIGINT or SIGTERM (`fxgate sandbox`): as a container's
/// PID 1 nothing else would stop it, so `docker stop` would wait out its grace period.
pub async fn run_standalone(addr: SocketAddr, opts: SandboxOptions) -> std::io::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let handle = spawn(addr, opts).await?;
    println!(
        "{}",
        serde_json::json!({"event": "listening", "sandbox": handle.addr().to_string()})
    );
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    drop(handle);
    Ok(())
}
