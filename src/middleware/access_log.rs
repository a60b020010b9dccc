//! `AccessLogLayer`: one log line and the RED metrics for every request, whatever its outcome
//! (it sits outside `ErrorResponseLayer`, so it sees synthesised errors as responses). Inner
//! layers and handlers fill in what only they know (caller, bytes, dedupe result, trace ids)
//! through the `LogContext` this layer puts into the request extensions, beside the request's
//! `RouteMatch` (resolved here, once, for every layer below).

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use opentelemetry::trace::TraceId;

use parking_lot::Mutex;
use tower::{Layer, Service};

use super::request_id::RequestId;
use super::PeerIdentity;
use super::{BoxFuture, PeerAddr, Resp};
use crate::error::ErrorCode;
use crate::metrics::{DedupeResult, Metrics};
use crate::route::RouteMatch;

/// What inner layers add to the access-log line.
#[derive(Debug, Default)]
struct LogFields {
    client: Option<String>,
    bytes: u64,
    dedupe: Option<&'static str>,
    third_trace_id: Option<String>,
    upstream_trace_id: Option<String>,
    /// A File Service upload's second step: our `traceId` (its `linkId` is the first's).
    upload_trace_id: Option<String>,
    upstream_time: Option<Duration>,
    trace_id: Option<TraceId>,
}

/// Shared, per-request access-log fields; in the request extensions.
#[derive(Debug, Clone, Default)]
pub struct LogContext(Arc<Mutex<LogFields>>);

impl crate::upstream::call::Report for LogContext {
    fn third_trace_id(&self, id: &str) {
        self.set_third_trace_id(id);
    }
    fn upstream_trace_id(&self, id: Option<String>) {
        self.set_upstream_trace_id(id);
    }
    fn upstream_time(&self, took: Duration) {
        self.add_upstream_time(took);
    }
}

impl LogContext {
    /// The authenticated caller's name.
    pub fn set_client(&self, name: &str) {
        self.0.lock().client = Some(name.to_string());
    }
    /// File bytes received.
    pub fn add_bytes(&self, n: u64) {
        self.0.lock().bytes += n;
    }
    /// How the upload met the dedupe index.
    pub fn set_dedupe(&self, result: DedupeResult) {
        self.0.lock().dedupe = Some(result.as_str());
    }
    /// Our `thirdTraceId` of the last upstream attempt.
    pub fn set_third_trace_id(&self, id: &str) {
        self.0.lock().third_trace_id = Some(id.to_string());
    }
    /// Our `traceId` of a File Service upload's second step.
    pub fn set_upload_trace_id(&self, id: &str) {
        self.0.lock().upload_trace_id = Some(id.to_string());
    }
    /// Fxiaoke's `traceId`.
    pub fn set_upstream_trace_id(&self, id: Option<String>) {
        self.0.lock().upstream_trace_id = id;
    }
    /// Time Fxiaoke took to answer (summed over attempts, a retry after a rejected token
    /// included).
    pub fn add_upstream_time(&self, took: Duration) {
        let mut f = self.0.lock();
        f.upstream_time = Some(f.upstream_time.unwrap_or_default() + took);
    }
    /// The W3C trace the request belongs to (the caller's, when it sent a `traceparent`).
    pub fn set_trace_id(&self, id: TraceId) {
        self.0.lock().trace_id = Some(id);
    }
    /// See `set_trace_id`.
    pub fn trace_id(&self) -> Option<TraceId> {
        self.0.lock().trace_id
    }
}

/// Logs and counts every request.
#[derive(Debug, Clone)]
pub struct AccessLogLayer {
    metrics: Metrics,
}

impl AccessLogLayer {
    /// Counts into `metrics`.
    pub fn new(metrics: Metrics) -> Self {
        Self { metrics }
    }
}

impl<S> Layer<S> for AccessLogLayer {
    type Service = AccessLog<S>;
    fn layer(&self, inner: S) -> Self::Service {
        AccessLog {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

/// See [`AccessLogLayer`].
#[derive(Debug, Clone)]
pub struct AccessLog<S> {
    inner: S,
    metrics: Metrics,
}

impl<S, B> Service<http::Request<B>> for AccessLog<S>
where
    B: Send + 'static,
    S: Service<http::Request<B>, Response = Resp> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Resp;
    type Error = S::Error;
    type Future = BoxFuture<Result<Resp, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        let started = Instant::now();
        let ctx = LogContext::default();
        req.extensions_mut().insert(ctx.clone());
        let id = req.extensions().get::<RequestId>().map(|r| r.0.clone());
        let method = req.method().clone();
        // The one place a request's route is resolved; the layers below read it.
        let matched = RouteMatch::of(req.uri().path());
        req.extensions_mut().insert(matched);
        let route = matched.label();
        let version = req.version();
        let peer = req.extensions().get::<PeerAddr>().map(|p| p.0);
        let user_agent = req.headers().get(http::header::USER_AGENT).cloned();
        let tls_subject = req
            .extensions()
            .get::<PeerIdentity>()
            .map(|p| p.subject.clone());
        let metrics = self.metrics.clone();
        let fut = self.inner.call(req);
        Box::pin(async move {
            let result = fut.await;
            let elapsed = started.elapsed();
            if let Ok(resp) = &result {
                let f = ctx.0.lock();
                let client = f.client.as_deref().unwrap_or("unknown");
                let status = resp.status().as_u16();
                let code = resp.extensions().get::<ErrorCode>().map(|c| c.0);
                metrics
                    .http
                    .requests
                    .with_label_values(&[route, client, resp.status().as_str()])
                    .inc();
                metrics.observe_request(route, client, resp.status(), elapsed.as_secs_f64());
                tracing::info!(
                    request_id = id.as_deref().unwrap_or("-"),
                    %method,
                    route,
                    ?version,
                    client,
                    status,
                    error_code = code,
                    bytes = f.bytes,
                    duration_ms = elapsed.as_millis() as u64,
                    dedupe = f.dedupe,
                    third_trace_id = f.third_trace_id.as_deref(),
                    upstream_trace_id = f.upstream_trace_id.as_deref(),
                    upload_trace_id = f.upload_trace_id.as_deref(),
                    upstream_ms = f.upstream_time.map(|d| d.as_millis() as u64),
                    trace_id = f.trace_id.map(tracing::field::display),
                    peer = peer.map(tracing::field::display),
                    user_agent = user_agent.as_ref().and_then(|v| v.to_str().ok()),
                    tls_subject = tls_subject.as_deref(),
                    "request"
                );
            }
            result
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::middleware::testing::{body, metrics, request};
    use tower::ServiceExt as _;

    #[tokio::test]
    async fn every_request_is_counted_under_its_route_or_other() {
        let m = metrics();
        // Answers with the route label it found in the extensions, naming the caller as the
        // auth layer would.
        let inner = tower::service_fn(|req: http::Request<()>| async move {
            let label = req.extensions().get::<RouteMatch>().map(|m| m.label());
            if let Some(log) = req.extensions().get::<LogContext>() {
                log.set_client("alpha");
            }
            let label = label.unwrap_or("missing");
            Ok::<Resp, crate::error::GatewayError>(http::Response::new(crate::body::full(label)))
        });
        let layer = AccessLogLayer::new(m.clone());
        for (path, label) in [
            ("/media/download", "/media/download"),
            ("/media/download", "/media/download"),
            ("/nope", "other"),
        ] {
            let resp = layer
                .layer(inner)
                .oneshot(request(path, &[]))
                .await
                .unwrap();
            assert_eq!(body(resp).await, label);
        }
        let count = |route: &str| {
            m.http
                .requests
                .with_label_values(&[route, "alpha", "200"])
                .get()
        };
        assert_eq!(count("/media/download"), 2);
        assert_eq!(count("other"), 1);
    }
}
