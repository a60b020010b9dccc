//! The embedded dedupe index: a moka cache with a TTL and a size bound (one replica).

use std::time::Duration;

use futures_util::future::BoxFuture;

use super::{DedupeKey, DedupeStore, MediaRef};

/// The embedded store: a moka cache with a TTL and a size bound.
#[derive(Debug)]
pub struct MemoryStore {
    /// Deletes find their entries through invalidation closures rather than a reverse
    /// `mediaId` index: a delete is rare, and a second cache would double the cost of the
    /// insert every upload pays.
    entries: moka::future::Cache<DedupeKey, MediaRef>,
}

impl MemoryStore {
    /// A store holding at most `max_entries`, each for `ttl`.
    pub fn new(ttl: Duration, max_entries: u64) -> Self {
        Self {
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
        Box::pin(self.entries.get(key))
    }

    fn put(&self, key: DedupeKey, value: MediaRef) -> BoxFuture<'_, ()> {
        Box::pin(self.entries.insert(key, value))
    }

    fn forget_media<'a>(&'a self, corp: &'a str, media_id: &'a str) -> BoxFuture<'a, ()> {
        let (corp, media_id) = (corp.to_string(), media_id.to_string());
        // Applies to entries recorded up to now: a later re-upload under a new mediaId stays.
        // `get` checks pending closures itself, so the eviction is visible at once.
        let registered = self
            .entries
            .invalidate_entries_if(move |k, v| k.corp == corp && v.media_id == media_id);
        if let Err(e) = registered {
            tracing::error!(error = %e, "dedupe index cannot evict by mediaId");
        }
        Box::pin(async {})
    }
}
