//! `AuthLayer`: identifies the caller and inserts a `Principal`. A caller proves who it is
//! (design §3, §9) with, in this order:
//!
//! * its gateway key: `Authorization: Bearer <key>` or `X-Api-Key: <key>`, compared in
//!   constant time against every configured key (`key_sha256`, `keys`); a key past its
//!   `not_after` is 401 with its own message, so a caller left on a rotated-out key knows why;
//! * an `fxg_` token fxgate issued it (SDK drop-in): `Authorization: Bearer fxg_…`, the query's
//!   `corpAccessToken`, or the JSON body's `corpAccessToken`; unknown or expired is Fxiaoke's own
//!   20016 (HTTP 200), so the SDK fetches a new one;
//! * at a token endpoint, `appId = <client name>`, `appSecret = <gateway key>` in the body;
//! * the subject of its verified TLS client certificate (`PeerIdentity`).
//!
//! A credential in a header decides; the body is only read (JSON routes, bounded, within
//! `BODY_WAIT`) when the head carries none, and is then kept in the extensions (`CallerBody`)
//! for the handler. Unknown or missing credentials: 401, 940101. The key headers are removed
//! from the request, so nothing below (logs included) can see them. Sits inside
//! `ErrorResponseLayer` and outside `QuotaLayer`, which is keyed by `Principal`. The registry
//! is swapped whole on reload.

use std::sync::Arc;
use std::task::{Context, Poll};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::header;
use subtle::ConstantTimeEq;
use tower::{Layer, Service};

use super::access_log::LogContext;
pub use super::credentials::CallerBody;
pub use super::credentials::PreAuthPool;
use super::credentials::{from_body, from_head, PoolPlace, Presented};
use super::{BoxFuture, PeerIdentity, Resp};
use crate::clock::Clock;
use crate::config::{hash_key, ClientConfig, PassthroughConfig};
use crate::error::GatewayError;
use crate::route::{ApiStyle, Route, RouteMatch};
use crate::session::{MintedBy, Session, Sessions};

/// The authenticated caller, in request extensions.
#[derive(Debug, Clone)]
pub struct Principal {
    /// Its configuration (name, corp, limits).
    pub client: Arc<ClientConfig>,
    /// The token style its calls speak: its `api_style`, or that of the `fxg_` token it sent.
    pub style: ApiStyle,
    /// At a token endpoint, the credential it proved, which the token minted is bound to (a
    /// key or a certificate); `None` elsewhere, and for a caller that sent an `fxg_` token.
    pub credential: Option<MintedBy>,
}

impl Principal {
    /// The user a call acts as: the one asked for, if the caller may act as it; else the
    /// caller's default (the first of `act_as`), if any.
    pub fn acting_user(&self, asked: Option<String>) -> Result<Option<String>, GatewayError> {
        let act_as = &self.client.act_as;
        match asked {
            Some(u) if act_as.contains(&u) => Ok(Some(u)),
            Some(u) => Err(GatewayError::UserForbidden {
                client: self.client.name.clone(),
                user: u,
            }),
            None => Ok(act_as.first().cloned()),
        }
    }

    /// `client`, speaking its configured style, proven by `credential`.
    pub fn new(client: Arc<ClientConfig>, credential: Option<MintedBy>) -> Self {
        let style = client.api_style;
        Self {
            client,
            style,
            credential,
        }
    }
}

/// The configured callers.
#[derive(Debug, Default)]
pub struct ClientRegistry {
    clients: Vec<Arc<ClientConfig>>,
}

impl ClientRegistry {
    /// From the `[[clients]]` entries; the exact `/cgi/` paths they name become metric labels.
    pub fn new(clients: &[ClientConfig]) -> Self {
        crate::route::register_labels(clients.iter().flat_map(|c| {
            c.routes.iter().flatten().filter_map(|p| match p {
                crate::route::RoutePattern::Exact(path) => Some(path.as_str()),
                crate::route::RoutePattern::Prefix(_) => None,
            })
        }));
        Self {
            clients: clients.iter().cloned().map(Arc::new).collect(),
        }
    }

    /// Every caller.
    pub fn all(&self) -> &[Arc<ClientConfig>] {
        &self.clients
    }

    /// The caller named `name`.
    pub fn by_name(&self, name: &str) -> Option<Arc<ClientConfig>> {
        self.clients.iter().find(|c| c.name == name).cloned()
    }

    /// The caller holding `key` at `now_ms`. Every key is compared, in constant time, so the
    /// time taken says nothing about which (or whether a) key matched.
    pub fn by_key(&self, key: &str, now_ms: u64) -> KeyMatch {
        let presented = hash_key(key);
        let mut found = KeyMatch::None;
        for q in &self.clients {
            for k in &q.keys {
                if bool::from(presented.ct_eq(&k.sha256)) {
                    found = match k.not_after_ms {
                        Some(t) if now_ms >= t => KeyMatch::Expired,
                        _ => KeyMatch::Caller(q.clone()),
                    };
                }
            }
        }
        found
    }

    /// The caller named `name` whose key is `key` (an SDK's `appId` / `appSecret`).
    pub fn by_app(&self, name: &str, key: &str, now_ms: u64) -> KeyMatch {
        match self.by_key(key, now_ms) {
            KeyMatch::Caller(c) if c.name != name => KeyMatch::None,
            other => other,
        }
    }

    /// The caller an issued token stands for, while the credential that minted it is still
    /// live: the caller is configured, and still holds that key (not past its `not_after`) or
    /// that certificate subject. A reload that removes or replaces either revokes the token.
    pub fn by_session(&self, session: &Session, now_ms: u64) -> Option<Arc<ClientConfig>> {
        let client = self.by_name(&session.client)?;
        let live = match &session.minted_by {
            MintedBy::Key { sha256 } => client.keys.iter().any(|k| {
                hex::encode(k.sha256)
                    .as_bytes()
                    .ct_eq(sha256.as_bytes())
                    .into()
                    && k.not_after_ms.is_none_or(|t| now_ms < t)
            }),
            MintedBy::Cert {
                subject,
                common_name,
                fingerprint,
            } => {
                let peer = PeerIdentity {
                    subject: subject.clone(),
                    common_name: common_name.clone(),
                    fingerprint: fingerprint.clone(),
                };
                client
                    .cert_subject
                    .as_deref()
                    .is_some_and(|s| peer.matches(s))
            }
        };
        live.then_some(client)
    }

    /// The caller configured for this client certificate.
    pub fn by_certificate(&self, peer: &PeerIdentity) -> Option<Arc<ClientConfig>> {
        self.clients
            .iter()
            .find(|q| q.cert_subject.as_deref().is_some_and(|s| peer.matches(s)))
            .cloned()
    }
}

/// What a presented key is.
#[derive(Debug)]
pub enum KeyMatch {
    /// A live key of this caller.
    Caller(Arc<ClientConfig>),
    /// A configured key past its `not_after`.
    Expired,
    /// No configured key.
    None,
}

impl KeyMatch {
    fn into_caller(self) -> Result<Option<Arc<ClientConfig>>, GatewayError> {
        match self {
            Self::Caller(c) => Ok(Some(c)),
            Self::Expired => Err(GatewayError::KeyExpired),
            Self::None => Ok(None),
        }
    }
}

/// Authenticates callers.
#[derive(Debug, Clone)]
pub struct AuthLayer {
    registry: Arc<ArcSwap<ClientRegistry>>,
    sessions: Sessions,
    passthrough: Arc<ArcSwap<PassthroughConfig>>,
    pool: PreAuthPool,
    clock: Arc<dyn Clock>,
}

impl AuthLayer {
    /// Authenticates against the registry in force (reloads swap it) and the `fxg_` tokens in
    /// `sessions`; a body carrying the credential is read up to the `passthrough.max_body` in
    /// force, in `pool`. Keys' `not_after` is read on `clock`.
    pub fn new(
        registry: Arc<ArcSwap<ClientRegistry>>,
        sessions: Sessions,
        passthrough: Arc<ArcSwap<PassthroughConfig>>,
        pool: PreAuthPool,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            registry,
            sessions,
            passthrough,
            pool,
            clock,
        }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = Auth<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Auth {
            inner,
            auth: self.clone(),
        }
    }
}

/// See [`AuthLayer`].
#[derive(Debug, Clone)]
pub struct Auth<S> {
    inner: S,
    auth: AuthLayer,
}

impl AuthLayer {
    /// The caller an `fxg_` token was issued to, while the credential that minted it is still
    /// theirs.
    async fn by_token(
        &self,
        token: &str,
        registry: &ClientRegistry,
        now_ms: u64,
    ) -> Result<Principal, GatewayError> {
        let session = self
            .sessions
            .check(token)
            .await
            .map_err(|_| GatewayError::QuotaStoreDown)?;
        // Dead with the credential that minted it, or with its caller.
        let found = session.and_then(|s| Some((registry.by_session(&s, now_ms)?, s.style)));
        let (client, style) = found.ok_or(GatewayError::TokenUnknown)?;
        Ok(Principal {
            client,
            style,
            credential: None,
        })
    }

    /// Who is calling, from whatever the request carries.
    async fn identify<B>(&self, req: &mut http::Request<B>) -> Result<Principal, GatewayError>
    where
        B: http_body::Body<Data = Bytes> + Unpin,
    {
        let route = req.extensions().get::<RouteMatch>().and_then(|m| m.route);
        let mut presented = from_head(req);
        // Held until the caller is known: the body it read is an anonymous one until then.
        let mut _place = PoolPlace::default();
        if matches!(presented, Presented::Nothing) {
            let passthrough_max = self.passthrough.load().max_body;
            let limit = route
                .and_then(|r| r.body_limit(passthrough_max))
                .map(|n| n as usize);
            if let (Some(limit), Some(route)) = (limit, route) {
                (presented, _place) = from_body(req, route, limit, &self.pool).await?;
            }
        }
        let registry = self.registry.load();
        let now_ms = self.clock.unix_ms();
        // Only a token endpoint needs the proof (to bind what it mints): other requests are
        // spared a second hash of the key.
        let minting = matches!(route, Some(Route::Token(_)));
        let key_proof = |k: &str| {
            minting.then(|| MintedBy::Key {
                sha256: hex::encode(hash_key(k)),
            })
        };
        let (client, credential) = match presented {
            Presented::Key(k) => (registry.by_key(&k, now_ms).into_caller()?, key_proof(&k)),
            Presented::App { id, secret } => (
                registry.by_app(&id, &secret, now_ms).into_caller()?,
                key_proof(&secret),
            ),
            Presented::Unusable => (None, None),
            // A token endpoint mints from a key or a certificate only: a token that could
            // mint its successor would outlive every rotation.
            Presented::Token(_) if minting => return Err(GatewayError::TokenCannotMint),
            Presented::Token(t) => return self.by_token(&t, &registry, now_ms).await,
            Presented::Nothing => {
                let peer = req.extensions().get::<PeerIdentity>();
                let client = peer.and_then(|p| registry.by_certificate(p));
                let proof = peer.filter(|_| minting).map(|p| MintedBy::Cert {
                    subject: p.subject.clone(),
                    common_name: p.common_name.clone(),
                    fingerprint: p.fingerprint.clone(),
                });
                (client, proof)
            }
        };
        let client = client.ok_or(GatewayError::Unauthenticated)?;
        Ok(match route {
            // An SDK asking a token endpoint speaks that endpoint's style.
            Some(Route::Token(style)) => Principal {
                client,
                style,
                credential,
            },
            _ => Principal::new(client, credential),
        })
    }
}

impl<S, B> Service<http::Request<B>> for Auth<S>
where
    B: http_body::Body<Data = Bytes> + Unpin + Send + 'static,
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
        let auth = self.auth.clone();
        // The inner service was made ready by `poll_ready`: it is the one to call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            let principal = auth.identify(&mut req).await?;
            let headers = req.headers_mut();
            headers.remove(header::AUTHORIZATION);
            headers.remove("x-api-key");
            if let Some(log) = req.extensions().get::<LogContext>() {
                log.set_client(&principal.client.name);
            }
            req.extensions_mut().insert(principal);
            inner.call(req).await
        })
    }
}

#[cfg(test)]
mod tests;
