//! `TraceLayer`: the `request` span every request runs in. A caller's W3C `traceparent` makes it
//! a child of the caller's span (`trace::start`); the spans below it (dedupe lookup, upstream
//! calls) and the `traceparent` sent on to Fxiaoke follow from it. The trace id goes
//! into the access-log line, so a caller's trace id finds fxgate's log line. Attributes follow
//! the OpenTelemetry HTTP server conventions.

use std::task::{Context, Poll};

use tower::{Layer, Service};
use tracing::field::Empty;
use tracing::Instrument as _;

use super::access_log::LogContext;
use super::request_id::RequestId;
use super::{BoxFuture, PeerAddr, Resp};
use crate::error::ErrorCode;
use crate::route::RouteMatch;

/// Runs each request in its `request` span.
#[derive(Debug, Clone, Copy, Default)]
pub struct TraceLayer;

impl<S> Layer<S> for TraceLayer {
    type Service = Trace<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Trace { inner }
    }
}

/// See [`TraceLayer`].
#[derive(Debug, Clone)]
pub struct Trace<S> {
    inner: S,
}

impl<S, B> Service<http::Request<B>> for Trace<S>
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

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let span = request_span(&req);
        let started = crate::trace::start(&span, req.headers());
        if let (Some(log), Some(id)) = (req.extensions().get::<LogContext>(), started.trace_id) {
            log.set_trace_id(id);
        }
        let fut = span.in_scope(|| self.inner.call(req));
        let traced = async move {
            let result = fut.await;
            // Integers as i64: tracing-opentelemetry turns other integer types into text.
            if let Ok(resp) = &result {
                let current = tracing::Span::current();
                current.record(
                    "http.response.status_code",
                    i64::from(resp.status().as_u16()),
                );
                if let Some(code) = resp.extensions().get::<ErrorCode>() {
                    current.record("fxgate.error_code", i64::from(code.0));
                }
                if resp.status().is_server_error() {
                    current.record("otel.status_code", "ERROR");
                }
            }
            result
        }
        .instrument(span);
        Box::pin(crate::trace::within(started, traced))
    }
}

fn request_span<B>(req: &http::Request<B>) -> tracing::Span {
    let route = req
        .extensions()
        .get::<RouteMatch>()
        .map_or("other", |m| m.label());
    let method = req.method().as_str();
    tracing::info_span!(
        "request",
        otel.name = %format_args!("{method} {route}"),
        otel.kind = "server",
        otel.status_code = Empty,
        http.request.method = method,
        http.route = route,
        url.path = req.uri().path(),
        client.address = req.extensions().get::<PeerAddr>().map(|p| tracing::field::display(p.0.ip())),
        user_agent.original = req.headers().get(http::header::USER_AGENT).and_then(|v| v.to_str().ok()),
        fxgate.request_id = req.extensions().get::<RequestId>().map(|r| &*r.0),
        http.response.status_code = Empty,
        fxgate.error_code = Empty,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::middleware::testing::{ok, request};
    use tower::ServiceExt as _;

    /// Without span export the caller's trace id still reaches the access log.
    #[tokio::test]
    async fn without_span_export_the_callers_trace_id_reaches_the_log() {
        let log = LogContext::default();
        let mut req = request(
            "/media/download",
            &[(
                "traceparent",
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            )],
        );
        req.extensions_mut().insert(log.clone());
        let resp = TraceLayer.layer(ok()).oneshot(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(
            log.trace_id().map(|t| t.to_string()).as_deref(),
            Some("0af7651916cd43dd8448eb211c80319c")
        );
    }
}
