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
