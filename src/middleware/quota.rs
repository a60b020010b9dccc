//! `QuotaLayer`: the caller's route allow-list (403, 940301), request rate, concurrent uploads
//! and daily bytes (429, 942901, `Retry-After`), all decided before the body is read. Sits
//! inside `AuthLayer` (it needs the `Principal`). Upload requests get a `TicketSlot` in their
//! extensions holding the bytes reserved by `Content-Length`; the upload handler takes it,
//! grows it as a chunked body flows, and settles it on success (dropping it refunds). The
//! concurrency permit is held until the inner future resolves, i.e. the upload is done.
//! Every quota rejection, here or later in the handler, is counted here.

use std::sync::Arc;
use std::task::{Context, Poll};

use arc_swap::ArcSwap;
use http::header;
use parking_lot::Mutex;
use tower::{Layer, Service};

use super::auth::Principal;
use super::{BoxFuture, Resp};
use crate::config::{announced_too_large, UploadConfig};
use crate::error::GatewayError;
use crate::metrics::Metrics;
use crate::metrics::QuotaKind;
use crate::quota::{BytesTicket, Quotas, UploadSlot};
use crate::route::{query_param, Route, RouteMatch};

/// The bytes reservation of an upload, for the handler to take.
#[derive(Debug, Clone)]
pub struct TicketSlot(Arc<Mutex<Option<BytesTicket>>>);

impl TicketSlot {
    /// Takes the ticket (once).
    pub fn take(&self) -> Option<BytesTicket> {
        self.0.lock().take()
    }
}

/// Enforces caller quotas.
#[derive(Debug, Clone)]
pub struct QuotaLayer {
    quotas: Quotas,
    metrics: Metrics,
    limits: Option<Arc<ArcSwap<UploadConfig>>>,
}

impl QuotaLayer {
    /// Enforces `quotas`, counting rejections into `metrics`.
    pub fn new(quotas: Quotas, metrics: Metrics) -> Self {
        Self {
            quotas,
            metrics,
            limits: None,
        }
    }

    /// Refuses (413) an upload whose `Content-Length` no file on its route could have, before
    /// reserving any of the caller's daily bytes: otherwise a caller near its byte quota would
    /// be told 429 "retry tomorrow" for a request that can never succeed (issue 14).
    pub fn with_file_limits(mut self, upload: Arc<ArcSwap<UploadConfig>>) -> Self {
        self.limits = Some(upload);
        self
    }
}

/// The 413 for an upload announcing more than its file limit (the route's, or the caller's
/// own if lower; plus a multipart body's framing), by the same rule as the upload's own.
fn impossible<B>(
    req: &http::Request<B>,
    route: Route,
    limits: Option<&UploadConfig>,
    principal: &Principal,
    announced: u64,
) -> Option<GatewayError> {
    let document =
        route == Route::Upload && query_param(req.uri(), "type").as_deref() == Some("document");
    let limit = limits?.file_limit(route, document, &principal.client);
    let multipart = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| {
            let ct = ct.trim_start().as_bytes();
            ct.len() >= 10 && ct[..10].eq_ignore_ascii_case(b"multipart/")
        });
    announced_too_large(announced, limit, multipart).then_some(GatewayError::PayloadTooLarge {
        seen: announced,
        limit,
        route: route.path(),
    })
}

impl<S> Layer<S> for QuotaLayer {
    type Service = Quota<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Quota {
            inner,
            quotas: self.quotas.clone(),
            metrics: self.metrics.clone(),
            limits: self.limits.clone(),
        }
    }
}

/// See [`QuotaLayer`].
#[derive(Debug, Clone)]
pub struct Quota<S> {
    inner: S,
    quotas: Quotas,
    metrics: Metrics,
    limits: Option<Arc<ArcSwap<UploadConfig>>>,
}

/// Decides rate, concurrency and bytes; the returned slot is held for the whole request.
async fn admit<B>(
    quotas: Quotas,
    limits: Option<Arc<ArcSwap<UploadConfig>>>,
    req: &mut http::Request<B>,
    principal: &Principal,
) -> Result<Option<UploadSlot>, GatewayError> {
    let route = req.extensions().get::<RouteMatch>().and_then(|m| m.route);
    let client = &principal.client;
    // The token endpoints only hand out a token that carries this caller's own rights.
    let exempt = matches!(route, Some(Route::Token(_)));
    if !exempt && !client.may_call(req.uri().path()) {
        return Err(GatewayError::RouteForbidden {
            client: client.name.clone(),
        });
    }
    quotas.check_rate(client).await?;
    let Some(route) = route.filter(|r| r.is_upload()) else {
        return Ok(None);
    };
    let announced = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(e) = announced.and_then(|n| {
        impossible(
            req,
            route,
            limits.as_ref().map(|l| l.load()).as_deref().map(|a| &**a),
            principal,
            n,
        )
    }) {
        return Err(e);
    }
    let permit = quotas.acquire_upload(client).await?;
    let ticket = quotas.bytes_ticket(client, announced).await?;
    req.extensions_mut()
        .insert(TicketSlot(Arc::new(Mutex::new(Some(ticket)))));
    Ok(permit)
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

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
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
                    .quota_rejected
                    .with_label_values(&[&name, kind])
                    .inc();
            }
        };
        let quotas = self.quotas.clone();
        let limits = self.limits.clone();
        // Take the service that was driven ready, leave a fresh clone behind (tower's rule
        // for calling an inner service from a future).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            let permit = match admit(quotas, limits, &mut req, &principal).await {
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
            m.quota_rejected
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
    async fn an_upload_holds_its_slot_until_it_ends_and_gets_a_byte_ticket() {
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
            async move {
                let ticket = req
                    .extensions()
                    .get::<TicketSlot>()
                    .and_then(TicketSlot::take);
                assert!(ticket.is_some(), "an upload gets its byte reservation");
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
