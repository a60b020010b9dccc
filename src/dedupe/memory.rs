//! The embedded dedupe index: a moka cache with a size bound (one replica). An entry is
//! trusted for `ttl` from its upload (`created_at`, on the injected clock): re-recording it for
//! a new holder never extends that (moka's own TTL restarts on every insert, so it is only the
//! eviction bound).

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use futures_util::future::BoxFuture;

use super::{DedupeKey, DedupeStore, MediaRef};
use crate::clock::Clock;

/// The embedded store: a moka cache with a TTL and a size bound.
#[derive(Debug)]
pub struct MemoryStore {
    /// Deletes find their entries through invalidation closures rather than a reverse
    /// `mediaId` index: a delete is rare, and a second cache would double the cost of the
    /// insert every upload pays.
    /// Each entry sits behind its own lock so a new holder is added in place: re-inserting
    /// would restart moka's TTL, race with another holder, and outlive a pending eviction.
    entries: moka::future::Cache<DedupeKey, Arc<parking_lot::Mutex<MediaRef>>>,
    ttl: Duration,
    clock: Arc<dyn Clock>,
}

impl MemoryStore {
    /// A store holding at most `max_entries`, each trusted for `ttl` of `clock`'s time.
    pub fn new(ttl: Duration, max_entries: u64, clock: Arc<dyn Clock>) -> Self {
        Self {
            ttl,
            clock,
            entries: moka::future::Cache::builder()
                .time_to_live(ttl)
                .max_capacity(max_entries)
                .support_invalidation_closures()
                .build(),
        }
    }
}

impl DedupeStore for MemoryStore {
    fn get<'a>(&'a self, key: &'a DedupeKey) -> BoxFuture<'a, Option<MediaRef>> {
        Box::pin(async move {
            let entry = self.entries.get(key).await?.lock().clone();
            let created_ms = entry
                .created_at
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            let age = Duration::from_millis(self.clock.unix_ms().saturating_sub(created_ms));
            (age < self.ttl).then_some(entry)
        })
    }

    fn put(&self, key: DedupeKey, value: MediaRef) -> BoxFuture<'_, ()> {
        Box::pin(
            self.entries
                .insert(key, Arc::new(parking_lot::Mutex::new(value))),
        )
    }

    fn add_holder<'a>(
        &'a self,
        key: &'a DedupeKey,
        media_id: &'a str,
        caller: &'a str,
    ) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let Some(entry) = self.entries.get(key).await else {
                return;
            };
            let mut entry = entry.lock();
            if entry.media_id == media_id
                && !entry.held_by(caller)
                && entry.holders.len() < super::MAX_HOLDERS
            {
                entry.holders.push(caller.to_string());
            }
        })
    }

    fn forget_media<'a>(&'a self, corp: &'a str, media_id: &'a str) -> BoxFuture<'a, ()> {
        let (corp, media_id) = (corp.to_string(), media_id.to_string());
        // Applies to entries recorded up to now: a later re-upload under a new mediaId stays.
        // `get` checks pending closures itself, so the eviction is visible at once.
        let registered = self
            .entries
            .invalidate_entries_if(move |k, v| k.corp == corp && v.lock().media_id == media_id);
        if let Err(e) = registered {
            tracing::error!(error = %e, "dedupe index cannot evict by mediaId");
        }
        Box::pin(async {})
    }
}
