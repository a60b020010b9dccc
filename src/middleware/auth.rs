//! `AuthLayer`: identifies the caller by its gateway key (`Authorization: Bearer <key>` or
//! `X-Api-Key: <key>`), compared in constant time against every configured `key_sha256`, and
//! inserts a `Principal`. Unknown or missing key: `Unauthenticated` (401, 940101). The key
//! headers are removed from the request, so nothing below (logs included) can see them.
//! Sits inside `ErrorResponseLayer` and outside the quota slot, which is keyed by `Principal`.

use std::sync::Arc;
use std::task::{Context, Poll};

use http::header;
use subtle::ConstantTimeEq;
use tower::{Layer, Service};

use super::access_log::LogContext;
use super::{BoxFuture, Req, Resp};
use crate::config::{hash_key, ClientConfig};
use crate::error::GatewayError;

/// The authenticated caller, in request extensions.
#[derive(Debug, Clone)]
pub struct Principal {
    /// Its configuration (name, corp, limits).
    pub client: Arc<ClientConfig>,
}

/// The configured callers.
#[derive(Debug, Default)]
pub struct ClientRegistry {
    clients: Vec<Arc<ClientConfig>>,
}

impl ClientRegistry {
    /// From the `[[clients]]` entries.
    pub fn new(clients: &[ClientConfig]) -> Self {
        Self {
            clients: clients.iter().cloned().map(Arc::new).collect(),
        }
    }

    /// The caller holding `key`. Every entry is compared, in constant time, so the time taken
    /// says nothing about which (or whether a) key matched.
    pub fn by_key(&self, key: &str) -> Option<Arc<ClientConfig>> {
        let presented = hash_key(key);
        let mut found = None;
        for c in &self.clients {
            if let Some(expected) = &c.key_sha256 {
                if bool::from(presented.ct_eq(expected)) {
                    found = Some(c.clone());
                }
            }
        }
        found
    }
}

/// Extracts the gateway key from the request headers.
fn presented_key(req: &Req) -> Option<String> {
    if let Some(v) = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        let (scheme, rest) = v.trim().split_once(' ')?;
        if scheme.eq_ignore_ascii_case("bearer") && !rest.trim().is_empty() {
            return Some(rest.trim().to_string());
        }
        return None;
    }
    let v = req.headers().get("x-api-key")?.to_str().ok()?.trim();
    (!v.is_empty()).then(|| v.to_string())
}

/// Authenticates callers.
#[derive(Debug, Clone)]
pub struct AuthLayer {
    registry: Arc<ClientRegistry>,
}

impl AuthLayer {
    /// Authenticates against `registry`.
    pub fn new(registry: Arc<ClientRegistry>) -> Self {
        Self { registry }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = Auth<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Auth {
            inner,
            registry: self.registry.clone(),
        }
    }
}

/// See [`AuthLayer`].
#[derive(Debug, Clone)]
pub struct Auth<S> {
    inner: S,
    registry: Arc<ClientRegistry>,
}

impl<S> Service<Req> for Auth<S>
where
    S: Service<Req, Response = Resp, Error = GatewayError> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Resp;
    type Error = GatewayError;
    type Future = BoxFuture<Result<Resp, GatewayError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), GatewayError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Req) -> Self::Future {
        let client = presented_key(&req).and_then(|k| self.registry.by_key(&k));
        let Some(client) = client else {
            return Box::pin(async { Err(GatewayError::Unauthenticated) });
        };
        let headers = req.headers_mut();
        headers.remove(header::AUTHORIZATION);
        headers.remove("x-api-key");
        if let Some(log) = req.extensions().get::<LogContext>() {
            log.set_client(&client.name);
        }
        req.extensions_mut().insert(Principal { client });
        Box::pin(self.inner.call(req))
    }
}
