//! Where state that replicas may share lives (design §2 `[store]`): the corp token, the dedupe
//! index, caller quotas and the corp's upstream budget. Each concern has a store trait with a
//! memory and a Redis implementation (`quota::QuotaStore`, `upstream::token::TokenStore`,
//! `dedupe::DedupeStore`); `FailOver` is the one decorator that decides, by `FailMode`, what a
//! failing Redis means, so no caller knows which backend it has. `redis` is the connection
//! every Redis implementation goes through.

pub mod conn;
mod failure;
mod lease;
pub mod redis;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use futures_util::future::BoxFuture;

pub use crate::config::{Backend, FailMode};
pub use crate::metrics::FailureKind;
pub use lease::Lease;
pub use redis::{Redis, Tag, KEY_SCHEMA};

/// What every store operation returns: its answer, later, or why there is none. One
/// definition for the quota, token, session and dedupe stores.
pub type StoreFuture<'a, T> = BoxFuture<'a, Result<T, StoreError>>;

/// Why a store command did not give an answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// Known down: not even tried.
    #[error("redis store unavailable")]
    Down,
    /// Took longer than `store.timeout`.
    #[error("redis command timed out")]
    Timeout,
    /// Redis or the connection said no.
    #[error("redis: {0}")]
    Redis(String),
}

/// A fail mode in force, which a reload may change (`quota_fail_mode`): every store operation
/// reads it when it fails, so the next failure after a reload follows the new mode.
#[derive(Debug)]
pub struct ModeSwitch(AtomicBool);

impl ModeSwitch {
    /// Starting in `mode`.
    pub fn new(mode: FailMode) -> Arc<Self> {
        Arc::new(Self(AtomicBool::new(mode == FailMode::Closed)))
    }

    /// The mode in force.
    pub fn get(&self) -> FailMode {
        if self.0.load(Ordering::Relaxed) {
            FailMode::Closed
        } else {
            FailMode::Open
        }
    }

    /// Puts `mode` in force.
    pub fn set(&self, mode: FailMode) {
        self.0.store(mode == FailMode::Closed, Ordering::Relaxed);
    }
}

/// A shared store in front of a local one: every operation goes to `primary`; when it fails,
/// `FailMode::Open` answers from `fallback` (this replica's own state) and `FailMode::Closed`
/// passes the failure on.
#[derive(Debug)]
pub struct FailOver<S: ?Sized> {
    primary: Arc<S>,
    fallback: Arc<S>,
    mode: Arc<ModeSwitch>,
}

impl<S: ?Sized> FailOver<S> {
    /// `primary`, falling back to `fallback` per `mode`, for good.
    pub fn new(primary: Arc<S>, fallback: Arc<S>, mode: FailMode) -> Self {
        Self::switched(primary, fallback, ModeSwitch::new(mode))
    }

    /// `primary`, falling back to `fallback` per the mode `mode` holds at each failure.
    pub fn switched(primary: Arc<S>, fallback: Arc<S>, mode: Arc<ModeSwitch>) -> Self {
        Self {
            primary,
            fallback,
            mode,
        }
    }

    /// Runs `op` on the primary, and on the fallback when the primary fails and the mode is
    /// open.
    pub async fn run<'a, T>(
        &'a self,
        op: impl Fn(&'a S) -> BoxFuture<'a, Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        match op(&self.primary).await {
            Ok(v) => Ok(v),
            Err(e) => match self.mode.get() {
                FailMode::Open => op(&self.fallback).await,
                FailMode::Closed => Err(e),
            },
        }
    }

    /// The primary (to ask what only it knows, such as its key names).
    pub fn primary(&self) -> &S {
        &self.primary
    }

    /// Runs `op` on both (settings that each must hold).
    pub fn each(&self, op: impl Fn(&S)) {
        op(&self.primary);
        op(&self.fallback);
    }

    /// Runs a read on both and adds the answers (usage reports: with the primary failing
    /// open, some of the state is in the fallback); the primary's failure counts as zero.
    pub async fn sum<'a>(
        &'a self,
        op: impl Fn(&'a S) -> BoxFuture<'a, Result<u64, StoreError>>,
    ) -> Result<u64, StoreError> {
        let local = op(&self.fallback).await?;
        Ok(local + op(&self.primary).await.unwrap_or(0))
    }
}

/// The entry for `key` in one of the memory stores' maps, allocating the key only the first
/// time (these run per request). Never
/// `None` in fact; callers treat it as a refusal rather than panic.
pub(crate) fn entry<'m, V: Default>(
    map: &'m mut HashMap<String, V>,
    key: &str,
) -> Option<&'m mut V> {
    if !map.contains_key(key) {
        map.insert(key.to_string(), V::default());
    }
    map.get_mut(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Fixed(Result<u64, StoreError>);

    impl Fixed {
        fn get(&self) -> BoxFuture<'_, Result<u64, StoreError>> {
            let r = self.0.clone();
            Box::pin(async move { r })
        }
    }

    #[tokio::test]
    async fn open_falls_back_closed_passes_the_failure_on() {
        let down = Arc::new(Fixed(Err(StoreError::Down)));
        let local = Arc::new(Fixed(Ok(7)));
        let open = FailOver::new(down.clone(), local.clone(), FailMode::Open);
        assert_eq!(open.run(Fixed::get).await.unwrap(), 7);
        let closed = FailOver::new(down, local.clone(), FailMode::Closed);
        assert!(matches!(
            closed.run(Fixed::get).await,
            Err(StoreError::Down)
        ));
        let up = FailOver::new(Arc::new(Fixed(Ok(2))), local, FailMode::Closed);
        assert_eq!(up.run(Fixed::get).await.unwrap(), 2);
        assert_eq!(up.sum(Fixed::get).await.unwrap(), 9);
    }
}
