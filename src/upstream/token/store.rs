//! `TokenStore`: where a corp's token is shared between replicas, and how they take turns at
//! fetching it. `MemoryTokens` is a replica alone (nothing to share: every turn is its own);
//! `super::redis::RedisTokens` shares through Redis under a lease; `FailOver` in front of Redis
//! (always open) lets a replica that cannot reach Redis fetch alone, single-flight in-process.

use std::fmt;
use std::time::Duration;

use crate::store::{FailOver, Lease};

/// A token as stored in a shared store.
#[derive(Clone, PartialEq, Eq)]
pub struct StoredToken {
    /// `corpAccessToken`.
    pub token: String,
    /// `corpId`.
    pub corp_id: String,
    /// Unix ms when its fetch started: the order of tokens.
    pub issued_ms: u64,
    /// Unix ms when it expires. (When its successor is due each replica works out from its
    /// own `refresh_at`.)
    pub expires_ms: u64,
}

impl fmt::Debug for StoredToken {
    // The token itself is a secret: never shown.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoredToken")
            .field("corp_id", &self.corp_id)
            .field("issued_ms", &self.issued_ms)
            .field("expires_ms", &self.expires_ms)
            .finish_non_exhaustive()
    }
}

/// The right to fetch: held until the fetched token is shared (a Redis lease, or nothing for
/// a replica alone).
#[derive(Debug)]
pub struct Turn(pub Option<Lease>);

pub use crate::store::StoreFuture;

/// Where one corp's token is shared.
pub trait TokenStore: Send + Sync + fmt::Debug {
    /// The stored token, if any.
    fn read(&self) -> StoreFuture<'_, Option<StoredToken>>;
    /// Stores `t` unless a token issued at the same time or later is there; `false`: a newer
    /// one was kept.
    fn write_if_newer<'a>(&'a self, t: &'a StoredToken) -> StoreFuture<'a, bool>;
    /// The turn to fetch, if nobody else has it.
    fn try_turn(&self) -> StoreFuture<'_, Option<Turn>>;
    /// Whether somebody holds the turn.
    fn turn_taken(&self) -> StoreFuture<'_, bool>;
    /// Records a token call if all replicas together made fewer than `max` in the last
    /// minute; otherwise how long until one is allowed.
    fn take_call_slot(&self, max: usize) -> StoreFuture<'_, Option<Duration>>;
}

/// A replica alone: nothing stored, every turn its own, no calls but its own to count (the
/// refresher counts those itself).
#[derive(Debug, Default, Clone, Copy)]
pub struct MemoryTokens;

fn ready<'a, T: Send + 'a>(v: T) -> StoreFuture<'a, T> {
    Box::pin(std::future::ready(Ok(v)))
}

impl TokenStore for MemoryTokens {
    fn read(&self) -> StoreFuture<'_, Option<StoredToken>> {
        ready(None)
    }
    fn write_if_newer<'a>(&'a self, _t: &'a StoredToken) -> StoreFuture<'a, bool> {
        ready(true)
    }
    fn try_turn(&self) -> StoreFuture<'_, Option<Turn>> {
        ready(Some(Turn(None)))
    }
    fn turn_taken(&self) -> StoreFuture<'_, bool> {
        ready(false)
    }
    fn take_call_slot(&self, _max: usize) -> StoreFuture<'_, Option<Duration>> {
        ready(None)
    }
}

impl TokenStore for FailOver<dyn TokenStore> {
    fn read(&self) -> StoreFuture<'_, Option<StoredToken>> {
        Box::pin(self.run(|s| s.read()))
    }
    fn write_if_newer<'a>(&'a self, t: &'a StoredToken) -> StoreFuture<'a, bool> {
        Box::pin(self.run(move |s| s.write_if_newer(t)))
    }
    fn try_turn(&self) -> StoreFuture<'_, Option<Turn>> {
        Box::pin(self.run(|s| s.try_turn()))
    }
    fn turn_taken(&self) -> StoreFuture<'_, bool> {
        Box::pin(self.run(|s| s.turn_taken()))
    }
    fn take_call_slot(&self, max: usize) -> StoreFuture<'_, Option<Duration>> {
        Box::pin(self.run(move |s| s.take_call_slot(max)))
    }
}
