//! The embedded dedupe index (one replica): the compact index behind the `DedupeStore` seam.
//! An entry is trusted for `ttl` from its upload (`created_at`, on the injected clock);
//! re-recording it for a new holder never extends that.

use std::sync::Arc;
use std::time::Duration;

use super::compact::CompactIndex;
use super::{DedupeKey, DedupeStore, MediaRef};
use crate::clock::Clock;
use crate::store::StoreFuture;

/// The embedded store.
#[derive(Debug)]
pub struct MemoryStore {
    index: Arc<CompactIndex>,
    clock: Arc<dyn Clock>,
}

impl MemoryStore {
    /// A store holding at most `max_entries`, each trusted for `ttl` of `clock`'s time.
    pub fn new(ttl: Duration, max_entries: u64, clock: Arc<dyn Clock>) -> Self {
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        Self {
            index: Arc::new(CompactIndex::new(max_entries, ttl_ms)),
            clock,
        }
    }
}

impl DedupeStore for MemoryStore {
    fn get<'a>(&'a self, key: &'a DedupeKey) -> StoreFuture<'a, Option<MediaRef>> {
        let found = self
            .index
            .key(key)
            .and_then(|k| self.index.get(&k, self.clock.unix_ms()));
        Box::pin(async move { Ok(found) })
    }

    fn put(&self, key: DedupeKey, value: MediaRef) -> StoreFuture<'_, ()> {
        self.index.put(&key, &value, self.clock.unix_ms());
        Box::pin(async { Ok(()) })
    }

    fn add_holder<'a>(
        &'a self,
        key: &'a DedupeKey,
        media_id: &'a str,
        caller: &'a str,
    ) -> StoreFuture<'a, ()> {
        if let Some(k) = self.index.key(key) {
            self.index.add_holder(&k, media_id, caller);
        }
        Box::pin(async { Ok(()) })
    }

    fn set_ttl(&self, ttl: Duration) {
        self.index
            .set_ttl_ms(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX));
    }

    fn forget_media<'a>(&'a self, corp: &'a str, media_id: &'a str) -> StoreFuture<'a, ()> {
        let (index, corp, media_id) = (self.index.clone(), corp.to_string(), media_id.to_string());
        // A scan of the whole index (milliseconds at a million entries): off the runtime's
        // workers so other requests are not held up behind it.
        Box::pin(async move {
            let scan = tokio::task::spawn_blocking(move || index.forget_media(&corp, &media_id));
            if let Err(e) = scan.await {
                tracing::error!(error = %e, "dedupe index: forgetting a deleted mediaId failed");
            }
            Ok(())
        })
    }
}
