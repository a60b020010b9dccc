//! `AuthLayer`: identifies the caller by its gateway key (`Authorization: Bearer <key>` or
//! `X-Api-Key: <key>`), compared in constant time against every configured `key_sha256`, or,
//! without a key, by the subject of its verified TLS client certificate (`PeerIdentity`, put
//! into the extensions by the server), and inserts a `Principal`. Unknown or missing
//! credentials: `Unauthenticated` (401, 940101). The key headers are removed from the request,
//! so nothing below (logs included) can see them. Sits inside `ErrorResponseLayer` and outside
//! `QuotaLayer`, which is keyed by `Principal`. The registry is swapped whole on reload.

use std::sync::Arc;
use std::task::{Context, Poll};

use arc_swap::ArcSwap;
use http::header;
use subtle::ConstantTimeEq;
use tower::{Layer, Service};

use super::access_log::LogContext;
use super::{BoxFuture, Resp};
use crate::config::{hash_key, ClientConfig};
use crate::error::GatewayError;

/// The authenticated caller, in request extensions.
#[derive(Debug, Clone)]
pub struct Principal {
    /// Its configuration (name, corp, limits).
    pub client: Arc<ClientConfig>,
}

/// The verified client certificate of the connection, when the caller presented one.
#[derive(Debug, Clone)]
pub struct PeerIdentity {
    /// The subject, RFC 4514 style (`CN=billing, O=Example`).
    pub subject: String,
    /// Its common name, if any.
    pub common_name: Option<String>,
}

impl PeerIdentity {
    /// Whether a configured `cert_subject` names this certificate: the whole subject, or
    /// `CN=<name>` for its common name.
    pub fn matches(&self, wanted: &str) -> bool {
        let wanted = wanted.trim();
        wanted == self.subject
            || self
                .common_name
                .as_deref()
                .is_some_and(|cn| wanted.strip_prefix("CN=").is_some_and(|w| w == cn))
    }
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

    /// Every caller.
    pub fn all(&self) -> &[Arc<ClientConfig>] {
        &self.clients
    }

    /// The caller holding `key`. Every entry is compared, in constant time, so the time taken
    /// says nothing about which (or whether a) key matched.
    pub fn by_key(&self, key: &str) -> Option<Arc<ClientConfig>> {
        let presented = hash_key(key);
        let mut found = None;
        for q in &self.clients {
            if let Some(expected) = &q.key_sha256 {
                if bool::from(presented.ct_eq(expected)) {
                    found = Some(q.clone());
                }
            }
        }
        found
    }

    /// The caller configured for this client certificate.
    pub fn by_certificate(&self, peer: &PeerIdentity) -> Option<Arc<ClientConfig>> {
        self.clients
            .iter()
            .find(|q| q.cert_subject.as_deref().is_some_and(|s| peer.matches(s)))
            .cloned()
    }
}

/// What the caller presented as its key.
enum Presented {
    Nothing,
    Key(String),
    /// A header was sent but holds no usable key (wrong scheme, empty, not ASCII).
    Unusable,
}

fn presented_key<B>(req: &http::Request<B>) -> Presented {
    if let Some(v) = req.headers().get(header::AUTHORIZATION) {
        let key = v.to_str().ok().and_then(|v| {
            let (scheme, rest) = v.trim().split_once(' ')?;
            (scheme.eq_ignore_ascii_case("bearer") && !rest.trim().is_empty())
                .then(|| rest.trim().to_string())
        });
        return key.map_or(Presented::Unusable, Presented::Key);
    }
    match req
        .headers()
        .get("x-api-key")
        .map(|v| v.to_str().map(str::trim))
    {
        None => Presented::Nothing,
        Some(Ok(v)) if !v.is_empty() => Presented::Key(v.to_string()),
        Some(_) => Presented::Unusable,
    }
}

/// Authenticates callers.
#[derive(Debug, Clone)]
pub struct AuthLayer {
    registry: Arc<ArcSwap<ClientRegistry>>,
}

impl AuthLayer {
    /// Authenticates against the registry in force (reloads swap it).
    pub fn new(registry: Arc<ArcSwap<ClientRegistry>>) -> Self {
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
    registry: Arc<ArcSwap<ClientRegistry>>,
}

impl<S, B> Service<http::Request<B>> for Auth<S>
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
        let registry = self.registry.load();
        // A key, when sent, decides: a wrong key never falls back to the certificate.
        let client = match presented_key(&req) {
            Presented::Key(k) => registry.by_key(&k),
            Presented::Unusable => None,
            Presented::Nothing => req
                .extensions()
                .get::<PeerIdentity>()
                .and_then(|p| registry.by_certificate(p)),
        };
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::middleware::testing::{caller, registry, request};
    use tower::ServiceExt as _;

    /// An inner service answering with the name of the principal it saw, and whether any
    /// credential header reached it.
    fn echo(
    ) -> impl Service<http::Request<()>, Response = Resp, Error = GatewayError, Future = impl Send>
           + Clone
           + Send
           + 'static {
        tower::service_fn(|req: http::Request<()>| async move {
            let name = req
                .extensions()
                .get::<Principal>()
                .map(|p| p.client.name.clone())
                .unwrap_or_default();
            let leaked = req.headers().contains_key(header::AUTHORIZATION)
                || req.headers().contains_key("x-api-key");
            Ok(http::Response::new(crate::body::full(format!(
                "{name} {leaked}"
            ))))
        })
    }

    async fn seen(req: http::Request<()>) -> Result<String, GatewayError> {
        let layer = AuthLayer::new(registry(&[caller("alpha"), caller("beta")]));
        let resp = layer.layer(echo()).oneshot(req).await?;
        let body = crate::middleware::testing::body(resp).await;
        Ok(String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn a_key_in_either_header_names_the_caller_and_never_goes_further() {
        let bearer = request("/x", &[("authorization", "Bearer beta-key")]);
        assert_eq!(seen(bearer).await.unwrap(), "beta false");
        let api_key = request("/x", &[("x-api-key", "alpha-key")]);
        assert_eq!(seen(api_key).await.unwrap(), "alpha false");
    }

    #[tokio::test]
    async fn no_key_or_a_wrong_one_is_refused_even_with_a_certificate() {
        assert!(matches!(
            seen(request("/x", &[])).await,
            Err(GatewayError::Unauthenticated)
        ));
        let mut wrong = request("/x", &[("authorization", "Bearer nope")]);
        let mut cert_caller = caller("gamma");
        cert_caller.cert_subject = Some("CN=gamma".into());
        wrong.extensions_mut().insert(PeerIdentity {
            subject: "CN=gamma".into(),
            common_name: Some("gamma".into()),
        });
        let layer = AuthLayer::new(registry(&[cert_caller]));
        let err = layer.layer(echo()).oneshot(wrong).await.unwrap_err();
        assert!(matches!(err, GatewayError::Unauthenticated));
    }

    #[tokio::test]
    async fn a_verified_certificate_names_its_caller_without_a_key() {
        let mut c = caller("gamma");
        c.key_sha256 = None;
        c.cert_subject = Some("CN=gamma".into());
        let mut req = request("/x", &[]);
        req.extensions_mut().insert(PeerIdentity {
            subject: "CN=gamma, O=Example".into(),
            common_name: Some("gamma".into()),
        });
        let resp = AuthLayer::new(registry(&[c]))
            .layer(echo())
            .oneshot(req)
            .await
            .unwrap();
        assert_eq!(crate::middleware::testing::body(resp).await, "gamma false");
    }
}
