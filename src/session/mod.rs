//! Opaque caller-bound tokens (`fxg_…`, design §9): what fxgate hands an SDK that asks one of
//! the token endpoints, in place of the corp's real token. A token is 256 random bits; the
//! store keeps only its SHA-256, so a dump of the store (or of Redis) holds nothing a caller
//! could present. `SessionStore` is the seam: `MemorySessions` for one replica, `RedisSessions`
//! so that every replica accepts a token any of them issued, behind `FailOver` (open: a replica
//! that cannot reach Redis issues and checks its own, and an SDK whose token it does not know
//! gets 20016 and simply fetches another).

pub mod redis;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::clock::Clock;
use crate::route::ApiStyle;
use crate::store::{FailOver, StoreError, StoreFuture};

/// The prefix of every token fxgate issues; anything else is a gateway key.
pub const PREFIX: &str = "fxg_";

/// The credential that minted a token (design §9: a token lives only as long as it does).
/// Only a gateway key or a client certificate mints; an `fxg_` token never does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MintedBy {
    /// A gateway key, by its SHA-256 (hex), as configured in `key_sha256`.
    Key {
        /// SHA-256 of the key, hex.
        sha256: String,
    },
    /// A verified client certificate.
    Cert {
        /// Its subject, RFC 4514 style.
        subject: String,
        /// Its common name, if any (what `cert_subject = "CN=…"` matches).
        common_name: Option<String>,
        /// SHA-256 of its DER, hex (for the record: which certificate it was).
        fingerprint: String,
    },
}

/// What an issued token stands for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// The caller it was issued to (`[[clients]] name`).
    pub client: String,
    /// The endpoint it came from, which is the style the caller speaks.
    pub style: ApiStyle,
    /// Unix ms after which it is refused.
    pub expires_ms: u64,
    /// The credential that minted it; the token is accepted only while the caller still holds
    /// it. A stored session without one (an older release's) does not parse: its SDK gets
    /// 20016 and fetches a new token.
    pub minted_by: MintedBy,
}

/// A freshly minted token. `Debug` never shows it.
pub struct Minted(String);

impl Minted {
    /// `fxg_` + 256 random bits, base64url.
    pub fn new() -> Result<Self, StoreError> {
        let mut bytes = [0u8; 32];
        getrandom::getrandom(&mut bytes)
            .map_err(|e| StoreError::Redis(format!("no randomness: {e}")))?;
        Ok(Self(format!(
            "{PREFIX}{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
        )))
    }

    /// The token, for the one answer that hands it out.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Minted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Minted(****)")
    }
}

/// The store key of a token: its SHA-256, hex.
pub fn key_of(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Where issued tokens live.
pub trait SessionStore: Send + Sync + fmt::Debug {
    /// Keeps `session` under `key` for `ttl`.
    fn put<'a>(&'a self, key: &'a str, session: &'a Session, ttl: Duration) -> StoreFuture<'a, ()>;
    /// The session under `key`, if any.
    fn get<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Option<Session>>;
}

/// One replica's tokens, in a moka cache bounded in size and by the longest token life.
#[derive(Debug)]
pub struct MemorySessions {
    entries: moka::future::Cache<String, Session>,
}

impl MemorySessions {
    /// At most `max` tokens (the oldest are evicted first: their SDKs fetch another).
    pub fn new(max: u64) -> Self {
        Self {
            entries: moka::future::Cache::builder()
                // Fxiaoke tokens live 7200 s at most, so ours never outlive that.
                .time_to_live(Duration::from_secs(7200))
                .max_capacity(max)
                .build(),
        }
    }
}

impl SessionStore for MemorySessions {
    fn put<'a>(
        &'a self,
        key: &'a str,
        session: &'a Session,
        _ttl: Duration,
    ) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            self.entries.insert(key.to_string(), session.clone()).await;
            Ok(())
        })
    }
    fn get<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Option<Session>> {
        Box::pin(async move { Ok(self.entries.get(key).await) })
    }
}

impl SessionStore for FailOver<dyn SessionStore> {
    fn put<'a>(&'a self, key: &'a str, session: &'a Session, ttl: Duration) -> StoreFuture<'a, ()> {
        Box::pin(self.run(move |s| s.put(key, session, ttl)))
    }
    fn get<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Option<Session>> {
        Box::pin(self.run(move |s| s.get(key)))
    }
}

/// Issues and checks tokens on the injected clock.
#[derive(Debug, Clone)]
pub struct Sessions {
    store: Arc<dyn SessionStore>,
    clock: Arc<dyn Clock>,
}

impl Sessions {
    /// Tokens kept in `store`, expiring on `clock`.
    pub fn new(store: Arc<dyn SessionStore>, clock: Arc<dyn Clock>) -> Self {
        Self { store, clock }
    }

    /// A new token for `client` speaking `style`, valid for `life`, minted by `by`.
    pub async fn issue(
        &self,
        client: &str,
        style: ApiStyle,
        life: Duration,
        by: MintedBy,
    ) -> Result<Minted, StoreError> {
        let token = Minted::new()?;
        let session = Session {
            client: client.to_string(),
            style,
            expires_ms: self.clock.unix_ms() + life.as_millis() as u64,
            minted_by: by,
        };
        self.store
            .put(&key_of(token.expose()), &session, life)
            .await?;
        Ok(token)
    }

    /// The live session of `token` (`None`: unknown or expired).
    pub async fn check(&self, token: &str) -> Result<Option<Session>, StoreError> {
        let now = self.clock.unix_ms();
        Ok(self
            .store
            .get(&key_of(token))
            .await?
            .filter(|s| s.expires_ms > now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;

    #[tokio::test]
    async fn a_token_is_random_checked_by_hash_and_refused_once_expired() {
        let clock = ManualClock::new(1_795_500_000_000);
        let sessions = Sessions::new(Arc::new(MemorySessions::new(100)), clock.clone());
        let life = Duration::from_secs(60);
        let by = MintedBy::Key {
            sha256: "00".repeat(32),
        };
        let a = sessions
            .issue("alpha", ApiStyle::OAuth, life, by.clone())
            .await
            .unwrap();
        let b = sessions
            .issue("alpha", ApiStyle::OAuth, life, by)
            .await
            .unwrap();
        assert!(a.expose().starts_with(PREFIX) && a.expose().len() >= 4 + 43);
        assert_ne!(a.expose(), b.expose());
        assert_eq!(format!("{a:?}"), "Minted(****)");
        let s = sessions.check(a.expose()).await.unwrap().unwrap();
        assert_eq!((s.client.as_str(), s.style), ("alpha", ApiStyle::OAuth));
        assert!(sessions.check("fxg_unknown").await.unwrap().is_none());
        clock.advance(life);
        assert!(sessions.check(a.expose()).await.unwrap().is_none());
    }
}
