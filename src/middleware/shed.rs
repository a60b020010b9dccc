//! `ShedLayer`: at most `server.max_inflight` requests inside the stack; one more is refused at
//! once with `GatewayError::Overloaded` (503, 950303, `Retry-After`), counted in
//! `fxgate_shed_total`, never queued (a queue only adds latency under overload).
//!
//! It does what tower's `LoadShed` over `ConcurrencyLimit` did, with one shared counter: those
//! cloned a semaphore handle (an allocation) into every request's copy of the stack and spoke
//! `BoxError`, which needed an adapter back to `GatewayError`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use tower::{Layer, Service};

use super::{BoxFuture, Resp};
use crate::error::GatewayError;
use crate::metrics::Metrics;

/// Sheds requests beyond `max` in flight.
#[derive(Debug, Clone)]
pub struct ShedLayer {
    inflight: Arc<AtomicUsize>,
    max: usize,
    metrics: Metrics,
}

impl ShedLayer {
    /// At most `max` requests in flight, sheds counted into `metrics`.
    pub fn new(max: usize, metrics: Metrics) -> Self {
        Self {
            inflight: Arc::new(AtomicUsize::new(0)),
            max,
            metrics,
        }
    }
}

impl<S> Layer<S> for ShedLayer {
    type Service = Shed<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Shed {
            inner,
            limit: self.clone(),
        }
    }
}

/// See [`ShedLayer`].
#[derive(Debug, Clone)]
pub struct Shed<S> {
    inner: S,
    limit: ShedLayer,
}

/// One request's place among the `max`; given back when the request's future ends (answered,
/// failed or dropped).
struct InflightGuard(Arc<AtomicUsize>);

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl<S, B> Service<http::Request<B>> for Shed<S>
where
    S: Service<http::Request<B>, Response = Resp, Error = GatewayError>,
    S::Future: Send + 'static,
{
    type Response = Resp;
    type Error = GatewayError;
    type Future = BoxFuture<Result<Resp, GatewayError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let limit = &self.limit;
        if limit.inflight.fetch_add(1, Ordering::AcqRel) >= limit.max {
            limit.inflight.fetch_sub(1, Ordering::AcqRel);
            limit.metrics.http.shed.inc();
            return Box::pin(std::future::ready(Err(GatewayError::Overloaded)));
        }
        let slot = InflightGuard(limit.inflight.clone());
        let fut = self.inner.call(req);
        Box::pin(async move {
            let answered = fut.await;
            drop(slot);
            answered
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::middleware::testing::{metrics, request};
    use tower::ServiceExt as _;

    #[tokio::test]
    async fn beyond_the_limit_requests_are_shed_not_queued_and_a_freed_place_is_reused() {
        let m = metrics();
        let (entered_tx, entered) = tokio::sync::oneshot::channel::<()>();
        let (release, wait) = tokio::sync::oneshot::channel::<()>();
        let gate = Arc::new(parking_lot::Mutex::new(Some((entered_tx, wait))));
        let inner = tower::service_fn(move |_req: http::Request<()>| {
            let gate = gate.lock().take();
            async move {
                if let Some((entered, wait)) = gate {
                    let _ = entered.send(());
                    let _ = wait.await;
                }
                Ok::<Resp, GatewayError>(http::Response::new(crate::body::full("ok")))
            }
        });
        let svc = ShedLayer::new(1, m.clone()).layer(inner);
        let first = tokio::spawn(svc.clone().oneshot(request("/a", &[])));
        entered.await.unwrap();
        let err = svc.clone().oneshot(request("/b", &[])).await.unwrap_err();
        assert!(matches!(err, GatewayError::Overloaded));
        assert_eq!(m.http.shed.get(), 1);
        let _ = release.send(());
        assert!(first.await.unwrap().is_ok());
        assert!(svc.oneshot(request("/c", &[])).await.is_ok());
    }

    #[tokio::test]
    async fn a_request_dropped_unanswered_gives_its_place_back() {
        let m = metrics();
        let never = tower::service_fn(|_req: http::Request<()>| {
            std::future::pending::<Result<Resp, GatewayError>>()
        });
        let mut svc = ShedLayer::new(1, m.clone()).layer(never);
        let abandoned = svc.call(request("/a", &[]));
        drop(abandoned);
        let mut again = svc.call(request("/b", &[]));
        // Still pending (admitted), not refused at once.
        assert!(futures_util::poll!(&mut again).is_pending());
        assert_eq!(m.http.shed.get(), 0);
    }
}
