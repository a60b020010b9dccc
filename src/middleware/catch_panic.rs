//! `CatchPanicLayer`: a panic in a handler (or a layer below) becomes `GatewayError::Internal`
//! — a 500 envelope logged once by `ErrorResponseLayer` and counted in `fxgate_panics_total` —
//! instead of a dropped connection. Sits just inside `ErrorResponseLayer`, so the answer is the
//! usual envelope with the request id.

use std::panic::AssertUnwindSafe;
use std::task::{Context, Poll};

use futures_util::FutureExt as _;
use tower::{Layer, Service};

use super::{BoxFuture, Resp};
use crate::error::GatewayError;
use crate::metrics::Metrics;

/// Catches panics below it.
#[derive(Debug, Clone)]
pub struct CatchPanicLayer {
    metrics: Metrics,
}

impl CatchPanicLayer {
    /// Counts caught panics into `metrics`.
    pub fn new(metrics: Metrics) -> Self {
        Self { metrics }
    }
}

impl<S> Layer<S> for CatchPanicLayer {
    type Service = CatchPanic<S>;
    fn layer(&self, inner: S) -> Self::Service {
        CatchPanic {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

/// See [`CatchPanicLayer`].
#[derive(Debug, Clone)]
pub struct CatchPanic<S> {
    inner: S,
    metrics: Metrics,
}

fn panicked(metrics: &Metrics, payload: &(dyn std::any::Any + Send)) -> GatewayError {
    metrics.http.panics.inc();
    let what = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a non-string payload".into());
    GatewayError::Internal {
        detail: format!("handler panicked: {what}"),
    }
}

impl<S, B> Service<http::Request<B>> for CatchPanic<S>
where
    S: Service<http::Request<B>, Response = Resp, Error = GatewayError>,
    S::Future: Send + 'static,
{
    type Response = Resp;
    type Error = GatewayError;
    type Future = BoxFuture<Result<Resp, GatewayError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), GatewayError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let metrics = self.metrics.clone();
        // A panic while building the future, or while polling it.
        match std::panic::catch_unwind(AssertUnwindSafe(|| self.inner.call(req))) {
            Ok(fut) => Box::pin(AssertUnwindSafe(fut).catch_unwind().map(move |r| match r {
                Ok(result) => result,
                Err(payload) => Err(panicked(&metrics, payload.as_ref())),
            })),
            Err(payload) => {
                let err = panicked(&metrics, payload.as_ref());
                Box::pin(async move { Err(err) })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::middleware::testing::{metrics, request};
    use tower::ServiceExt as _;

    #[tokio::test]
    async fn a_panic_while_serving_becomes_an_internal_error_and_is_counted() {
        let m = metrics();
        let boom = tower::service_fn(|req: http::Request<()>| async move {
            if req.uri().path() == "/boom" {
                panic!("the handler broke");
            }
            Ok::<Resp, GatewayError>(http::Response::new(crate::body::full("ok")))
        });
        let layer = CatchPanicLayer::new(m.clone());
        let err = layer
            .layer(boom)
            .oneshot(request("/boom", &[]))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, GatewayError::Internal { detail } if detail.contains("the handler broke"))
        );
        assert_eq!(m.http.panics.get(), 1);
        // The next request is served as usual.
        assert!(layer.layer(boom).oneshot(request("/ok", &[])).await.is_ok());
    }
}
