//! Load shedding: tower's `ConcurrencyLimit` (at most `server.max_inflight` requests inside the
//! stack) under `LoadShed` (a request that would wait for a slot is refused at once), assembled
//! in `app::service`. Those layers speak `BoxError`; `into_gateway_error` turns their
//! `Overloaded` into `GatewayError::Overloaded` (503, 950303, `Retry-After`), counted in
//! `fxgate_shed_total`, and hands every other error back as the `GatewayError` it was.

use tower::load_shed::error::Overloaded;

use crate::body::BoxError;
use crate::error::GatewayError;
use crate::metrics::Metrics;

/// The error adapter below `ErrorResponseLayer`, counting sheds into `metrics`.
pub fn into_gateway_error(metrics: Metrics) -> impl Fn(BoxError) -> GatewayError + Clone {
    move |e: BoxError| {
        if e.is::<Overloaded>() {
            metrics.shed.inc();
            return GatewayError::Overloaded;
        }
        match e.downcast::<GatewayError>() {
            Ok(gateway) => *gateway,
            Err(other) => GatewayError::Internal {
                detail: format!("stack error: {other}"),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::middleware::testing::{metrics, request};
    use crate::middleware::Resp;
    use std::sync::Arc;
    use tower::{ServiceBuilder, ServiceExt as _};

    #[tokio::test]
    async fn beyond_the_limit_requests_are_shed_not_queued() {
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
        let svc = ServiceBuilder::new()
            .map_err(into_gateway_error(m.clone()))
            .load_shed()
            .concurrency_limit(1)
            .service(inner);
        let first = tokio::spawn(svc.clone().oneshot(request("/a", &[])));
        entered.await.unwrap();
        let err = svc.clone().oneshot(request("/b", &[])).await.unwrap_err();
        assert!(matches!(err, GatewayError::Overloaded));
        assert_eq!(m.shed.get(), 1);
        let _ = release.send(());
        assert!(first.await.unwrap().is_ok());
        assert!(svc.oneshot(request("/c", &[])).await.is_ok());
    }

    #[test]
    fn other_errors_pass_through_as_they_were() {
        let m = metrics();
        let map = into_gateway_error(m.clone());
        let err = map(Box::new(GatewayError::NotFound));
        assert!(matches!(err, GatewayError::NotFound));
        assert_eq!(m.shed.get(), 0);
    }
}
