//! `QuotaLayer`: the caller's route allow-list (403, 940301), request rate, concurrent uploads
//! and daily bytes (429, 942901, `Retry-After`), all decided before the body is read. Sits
//! inside `AuthLayer` (it needs the `Principal`). Upload requests get a `TicketSlot` in their
//! extensions holding the bytes reserved by `Content-Length`; the upload handler takes it,
//! grows it as a chunked body flows, and settles it on success (dropping it refunds). The
//! concurrency permit is held until the inner future resolves, i.e. the upload is done.
//! Every quota rejection, here or later in the handler, is counted here.

use std::sync::Arc;
use std::task::{Context, Poll};

use http::header;
use parking_lot::Mutex;
use tower::{Layer, Service};

use super::auth::Principal;
use super::{BoxFuture, Resp};
use crate::error::GatewayError;
use crate::metrics::Metrics;
use crate::metrics::QuotaKind;
use crate::quota::{BytesTicket, Quotas, UploadSlot};
use crate::route::RouteMatch;

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

/// Decides rate, concurrency and bytes; the returned slot is held for the whole request.
async fn admit<B>(
    quotas: Quotas,
    req: &mut http::Request<B>,
    principal: &Principal,
) -> Result<Option<UploadSlot>, GatewayError> {
    let route = req.extensions().get::<RouteMatch>().and_then(|m| m.0);
    let client = &principal.client;
    if let Some(allowed) = &client.routes {
        if !route.is_some_and(|r| allowed.contains(&r)) {
            return Err(GatewayError::RouteForbidden {
                client: client.name.clone(),
            });
        }
    }
    quotas.check_rate(client).await?;
    if !route.is_some_and(|r| r.is_upload()) {
        return Ok(None);
    }
    let permit = quotas.acquire_upload(client).await?;
    let announced = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
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
        // Take the service that was driven ready, leave a fresh clone behind (tower's rule
        // for calling an inner service from a future).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            let permit = match admit(quotas, &mut req, &principal).await {
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
