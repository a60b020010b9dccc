//! `QuotaLayer`: the caller's route allow-list (403, 940301), request rate and concurrent
//! uploads (429, 942901, `Retry-After`), decided before the body is read. Sits inside
//! `AuthLayer` (it needs the `Principal`). The concurrency permit is held until the inner
//! future resolves, i.e. the upload is done. An upload's size and bytes are its own (`upload`:
//! one 413 decision, then today's bytes reserved); every quota rejection, here or later in
//! the handler, is counted here.

use std::task::{Context, Poll};

use tower::{Layer, Service};

use super::auth::Principal;
use super::{BoxFuture, Resp};
use crate::error::GatewayError;
use crate::metrics::Metrics;
use crate::metrics::QuotaKind;
use crate::quota::{Quotas, UploadSlot};
use crate::route::{Route, RouteMatch};

/// Enforces caller quotas.
#[derive(Debug, Clone)]
pub struct QuotaLayer {
    quotas: Quotas,
    metrics: Metrics,
}

impl QuotaLayer {
    /// Enforces `quotas`, counting rejections into `metrics`.
    pub fn new(quotas: Quotas, metrics: Metrics) -> Self {
        Self { quotas, metrics }
    }
}

impl<S> Layer<S> for QuotaLayer {
    type Service = Quota<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Quota {
            inner,
            quotas: self.quotas.clone(),
            metrics: self.metrics.clone(),
        }
    }
}

/// See [`QuotaLayer`].
#[derive(Debug, Clone)]
pub struct Quota<S> {
    inner: S,
    quotas: Quotas,
    metrics: Metrics,
}

/// What the layer decides a request by, read from its head before the future starts.
struct Ask {
    route: Option<Route>,
    /// The caller may call this path (its allow-list; the token endpoints are exempt: they
    /// only hand out a token that carries this caller's own rights).
    allowed: bool,
}

impl Ask {
    fn of<B>(req: &http::Request<B>, principal: &Principal) -> Self {
        let route = req.extensions().get::<RouteMatch>().and_then(|m| m.route);
        let exempt = matches!(route, Some(Route::Token(_)));
        Self {
            route,
            allowed: exempt || principal.client.may_call(req.uri().path()),
        }
    }
}

/// Decides the allow-list, rate and concurrency; the returned slot is held for the whole
/// request.
async fn admit(
    quotas: Quotas,
    ask: Ask,
    principal: &Principal,
) -> Result<Option<UploadSlot>, GatewayError> {
    let client = &principal.client;
    if !ask.allowed {
        return Err(GatewayError::RouteForbidden {
            client: client.name.clone(),
        });
    }
    quotas.check_rate(client).await?;
    if !ask.route.is_some_and(|r| r.is_upload()) {
        return Ok(None);
    }
    quotas.acquire_upload(client).await
}

fn rejection_kind(e: &GatewayError) -> Option<&'static str> {
    match e {
        GatewayError::QuotaExceeded { kind, .. } => Some(kind),
        GatewayError::RouteForbidden { .. } => Some(QuotaKind::Route.as_str()),
        GatewayError::QuotaStoreDown => Some(QuotaKind::StoreUnavailable.as_str()),
        _ => None,
    }
}

impl<S, B> Service<http::Request<B>> for Quota<S>
where
    B: Send + 'static,
    S: Service<http::Request<B>, Response = Resp, Error = GatewayError> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Resp;
    type Error = GatewayError;
    type Future = BoxFuture<Result<Resp, GatewayError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), GatewayError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let Some(principal) = req.extensions().get::<Principal>().cloned() else {
            return Box::pin(async {
                Err(GatewayError::Internal {
                    detail: "quota layer reached without a Principal".into(),
                })
            });
        };
        let metrics = self.metrics.clone();
        let name = principal.client.name.clone();
        let count = move |e: &GatewayError| {
            if let Some(kind) = rejection_kind(e) {
                metrics
                    .quota
                    .rejected
                    .with_label_values(&[&name, kind])
                    .inc();
            }
        };
        let quotas = self.quotas.clone();
        let ask = Ask::of(&req, &principal);
        // Take the service that was driven ready, leave a fresh clone behind (tower's rule
        // for calling an inner service from a future).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            let permit = match admit(quotas, ask, &principal).await {
                Ok(p) => p,
                Err(e) => {
                    count(&e);
                    return Err(e);
                }
            };
            let result = inner.call(req).await;
            drop(permit);
            if let Err(e) = &result {
                count(e);
            }
            result
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use parking_lot::Mutex;

    use super::*;
    use crate::clock::ManualClock;
    use crate::middleware::testing::{caller, metrics, ok, request};
    use crate::quota::memory::MemoryQuotas;
    use crate::route::Route;
    use tower::ServiceExt as _;

    fn layer(metrics: &Metrics) -> QuotaLayer {
        let clock = ManualClock::new(1_795_500_000_000);
        let store = Arc::new(MemoryQuotas::new(clock.clone()));
        QuotaLayer::new(Quotas::new(store, clock), metrics.clone())
    }

    fn to(route: Route, c: &crate::config::ClientConfig) -> http::Request<()> {
        let mut req = request(route.path(), &[("content-length", "100")]);
        req.extensions_mut().insert(RouteMatch::of(route.path()));
        req.extensions_mut()
            .insert(Principal::new(Arc::new(c.clone()), None));
        req
    }

    #[tokio::test]
    async fn a_route_outside_the_allow_list_is_refused_and_counted() {
        let m = metrics();
        let mut c = caller("alpha");
        c.routes = Some(vec![crate::route::RoutePattern::Exact(
            Route::UploadMessage.path().into(),
        )]);
        let err = layer(&m)
            .layer(ok())
            .oneshot(to(Route::Delete, &c))
            .await
            .unwrap_err();
        assert!(matches!(err, GatewayError::RouteForbidden { .. }));
        assert_eq!(
            m.quota
                .rejected
                .with_label_values(&["alpha", "route"])
                .get(),
            1
        );
    }

    #[tokio::test]
    async fn the_rate_is_per_minute_and_refusals_say_when() {
        let m = metrics();
        let mut c = caller("alpha");
        c.requests_per_minute = Some(2);
        let quota = layer(&m);
        for _ in 0..2 {
            let svc = quota.layer(ok());
            assert!(svc.oneshot(to(Route::Download, &c)).await.is_ok());
        }
        let err = quota
            .layer(ok())
            .oneshot(to(Route::Download, &c))
            .await
            .unwrap_err();
        assert!(
            matches!(err, GatewayError::QuotaExceeded { kind: "requests_per_minute", retry_after } if retry_after.as_secs() == 30)
        );
    }

    #[tokio::test]
    async fn an_upload_holds_its_slot_until_it_ends() {
        let m = metrics();
        let mut c = caller("alpha");
        c.max_concurrent_uploads = Some(1);
        c.bytes_per_day = Some(1000);
        let quota = layer(&m);
        let (entered_tx, entered) = tokio::sync::oneshot::channel::<()>();
        let (release, wait) = tokio::sync::oneshot::channel::<()>();
        let gate = Arc::new(Mutex::new(Some((entered_tx, wait))));
        let slow = tower::service_fn(move |req: http::Request<()>| {
            let gate = gate.lock().take();
            let _ = req;
            async move {
                if let Some((entered, wait)) = gate {
                    let _ = entered.send(());
                    let _ = wait.await;
                }
                Ok::<Resp, GatewayError>(http::Response::new(crate::body::full("ok")))
            }
        });
        let first = tokio::spawn(quota.layer(slow.clone()).oneshot(to(Route::Upload, &c)));
        entered.await.unwrap();
        // The first upload is inside, holding the only slot.
        let second = quota
            .layer(slow)
            .oneshot(to(Route::Upload, &c))
            .await
            .unwrap_err();
        assert!(matches!(
            second,
            GatewayError::QuotaExceeded {
                kind: "max_concurrent_uploads",
                ..
            }
        ));
        let _ = release.send(());
        assert!(first.await.unwrap().is_ok());
        assert!(quota
            .layer(ok())
            .oneshot(to(Route::Upload, &c))
            .await
            .is_ok());
    }
}
