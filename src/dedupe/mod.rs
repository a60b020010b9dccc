//! The dedupe index (design §6): which file (by SHA-256) already has which Fxiaoke mediaId,
//! per corp and route. `DedupeStore` is the storage seam (`memory`: the embedded compact index;
//! `redis`: shared by replicas, behind `store::FailOver`, which answers from `NoIndex` while
//! Redis fails: every lookup a miss, nothing recorded); `coalesce` owns the single-flight of claimed digests (within
//! the process and, through the store's lock, across replicas). Only digests fxgate computed
//! itself are recorded, and only after Fxiaoke's `errorCode 0`.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::clock::Clock;
use crate::config::{ClaimScope, DedupeConfig};
use crate::store::{FailMode, FailOver, Lease, Redis, StoreFuture};

pub mod coalesce;
pub mod compact;
pub mod fits;
pub mod memory;
pub mod redis;

pub use coalesce::{Claim, Coalescer, LeaderGuard};
pub use memory::MemoryStore;

/// What identifies a file for reuse: corp + route (+ `type`) + SHA-256 (+ filename for
/// documents, whose name Fxiaoke shows to users).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct DedupeKey {
    /// Corp name.
    pub corp: String,
    /// `message`, `image` or `document`.
    pub route: &'static str,
    /// SHA-256 of the file bytes.
    pub sha256: [u8; 32],
    /// The filename, for `document` uploads only.
    pub filename: Option<String>,
}

impl fmt::Debug for DedupeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}/{}",
            self.corp,
            self.route,
            hex::encode(&self.sha256[..8])
        )?;
        if let Some(name) = &self.filename {
            write!(f, "/{name}")?;
        }
        Ok(())
    }
}

/// A recorded upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaRef {
    /// Fxiaoke's mediaId.
    pub media_id: String,
    /// File size in bytes.
    pub size: u64,
    /// Content type sent with it.
    pub content_type: String,
    /// When it was uploaded.
    pub created_at: SystemTime,
    /// The caller that uploaded it.
    pub caller: String,
    /// Callers that have proven they hold the file (sent its bytes), the uploader included;
    /// with `claim_scope = "client"` only they may reuse it by digest alone.
    pub holders: Vec<String>,
}

/// Callers remembered per entry; beyond this a caller simply re-proves possession by upload.
const MAX_HOLDERS: usize = 32;

impl MediaRef {
    /// A new upload's entry: `caller` uploaded it at `unix_ms` and is its first holder.
    pub fn uploaded(
        media_id: String,
        size: u64,
        content_type: String,
        caller: &str,
        unix_ms: u64,
    ) -> Self {
        Self {
            media_id,
            size,
            content_type,
            created_at: SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(unix_ms),
            caller: caller.to_string(),
            holders: vec![caller.to_string()],
        }
    }

    /// Whether `caller` has sent these bytes before.
    pub fn held_by(&self, caller: &str) -> bool {
        self.holders.iter().any(|h| h == caller)
    }
}

/// Where the index lives.
/// Every answer is `Err` only when the store itself failed.
pub trait DedupeStore: Send + Sync + fmt::Debug {
    /// The entry for `key`, if any and not expired.
    fn get<'a>(&'a self, key: &'a DedupeKey) -> StoreFuture<'a, Option<MediaRef>>;
    /// Records (or replaces) an entry.
    fn put(&self, key: DedupeKey, value: MediaRef) -> StoreFuture<'_, ()>;
    /// Adds `caller` to the holders of `key`'s entry, in one step (no read-modify-write: two
    /// callers recorded at once are both kept), only while the entry still exists and still
    /// points at `media_id` (a delete in between stays a delete), without extending its life.
    fn add_holder<'a>(
        &'a self,
        key: &'a DedupeKey,
        media_id: &'a str,
        caller: &'a str,
    ) -> StoreFuture<'a, ()>;
    /// Forgets every entry pointing at `media_id` of `corp` (after a delete).
    fn forget_media<'a>(&'a self, corp: &'a str, media_id: &'a str) -> StoreFuture<'a, ()>;
    /// A new trust period, counted from each entry's upload, for every lookup from now on.
    fn set_ttl(&self, ttl: Duration);
    /// The key of `key`'s entry in the shared store, for a budget take guarded by it (the
    /// lookup in the same round trip); `None` for an index of this process.
    fn shared_key(&self, _key: &DedupeKey) -> Option<String> {
        None
    }
    /// An entry as the shared store holds it (what a guarded take handed back), if it parses
    /// and is still trusted.
    fn read_found(&self, _raw: &str) -> Option<MediaRef> {
        None
    }
    /// The right to upload `key` (for `scope`) across processes. The embedded store grants
    /// it at once: within one process the `Coalescer` is enough.
    fn lock<'a>(
        &'a self,
        _key: &'a DedupeKey,
        _scope: Option<&'a str>,
    ) -> StoreFuture<'a, LockOutcome> {
        Box::pin(async { Ok(LockOutcome::Held(None)) })
    }
}

/// Whether this process may upload a claimed digest now.
#[derive(Debug)]
pub enum LockOutcome {
    /// Yes; the lease (if the store has leases) is held until dropped.
    Held(Option<Lease>),
    /// Another replica is uploading it.
    Busy,
}

/// No index at all: every lookup a miss, nothing recorded, every lock granted with nobody to
/// coordinate with. What a replica falls back to while the shared index fails: uploads go on,
/// they just are not deduplicated (a local index could hand out a mediaId another replica
/// deleted meanwhile).
#[derive(Debug, Default)]
pub struct NoIndex;

impl DedupeStore for NoIndex {
    fn get<'a>(&'a self, _: &'a DedupeKey) -> StoreFuture<'a, Option<MediaRef>> {
        Box::pin(async { Ok(None) })
    }
    fn put(&self, _: DedupeKey, _: MediaRef) -> StoreFuture<'_, ()> {
        Box::pin(async { Ok(()) })
    }
    fn add_holder<'a>(&'a self, _: &'a DedupeKey, _: &'a str, _: &'a str) -> StoreFuture<'a, ()> {
        Box::pin(async { Ok(()) })
    }
    fn forget_media<'a>(&'a self, _: &'a str, _: &'a str) -> StoreFuture<'a, ()> {
        Box::pin(async { Ok(()) })
    }
    fn set_ttl(&self, _: Duration) {}
}

/// The shared index first; while it fails, `NoIndex` (the fail mode is always open: dedupe
/// saves work, it never decides whether an upload may happen).
impl DedupeStore for FailOver<dyn DedupeStore> {
    fn get<'a>(&'a self, key: &'a DedupeKey) -> StoreFuture<'a, Option<MediaRef>> {
        Box::pin(self.run(move |s| s.get(key)))
    }
    fn put(&self, key: DedupeKey, value: MediaRef) -> StoreFuture<'_, ()> {
        Box::pin(async move { self.run(|s| s.put(key.clone(), value.clone())).await })
    }
    fn add_holder<'a>(
        &'a self,
        key: &'a DedupeKey,
        media_id: &'a str,
        caller: &'a str,
    ) -> StoreFuture<'a, ()> {
        Box::pin(self.run(move |s| s.add_holder(key, media_id, caller)))
    }
    fn forget_media<'a>(&'a self, corp: &'a str, media_id: &'a str) -> StoreFuture<'a, ()> {
        Box::pin(self.run(move |s| s.forget_media(corp, media_id)))
    }
    fn set_ttl(&self, ttl: Duration) {
        self.each(|s| s.set_ttl(ttl));
    }
    fn shared_key(&self, key: &DedupeKey) -> Option<String> {
        self.primary().shared_key(key)
    }
    fn read_found(&self, raw: &str) -> Option<MediaRef> {
        self.primary().read_found(raw)
    }
    fn lock<'a>(
        &'a self,
        key: &'a DedupeKey,
        scope: Option<&'a str>,
    ) -> StoreFuture<'a, LockOutcome> {
        Box::pin(self.run(move |s| s.lock(key, scope)))
    }
}

/// The dedupe index with its policy.
#[derive(Debug)]
pub struct Dedupe {
    /// The storage.
    pub store: Arc<dyn DedupeStore>,
    /// In-flight claimed uploads.
    pub coalescer: Coalescer,
    /// Whether claims may hit other callers' entries (`claim_scope = "corp"`); a reload
    /// changes it for the next claim.
    corp_wide: AtomicBool,
}

impl Dedupe {
    /// The embedded (compact) index, its trust period timed by `clock`.
    pub fn memory(cfg: &DedupeConfig, clock: Arc<dyn Clock>) -> Self {
        let store = MemoryStore::new(cfg.ttl, cfg.max_entries, clock);
        Self::over(Arc::new(store), cfg.claim_scope)
    }

    /// The index in `store`, claims hitting entries per `scope`.
    pub fn over(store: Arc<dyn DedupeStore>, scope: ClaimScope) -> Self {
        Self {
            store,
            coalescer: Coalescer::default(),
            corp_wide: AtomicBool::new(scope == ClaimScope::Corp),
        }
    }

    /// The index in Redis, shared by replicas.
    pub fn redis(cfg: &DedupeConfig, redis: Arc<Redis>, lock_ttl: Duration) -> Self {
        let shared: Arc<dyn DedupeStore> =
            Arc::new(redis::RedisStore::new(redis, cfg.ttl, lock_ttl));
        let store = FailOver::new(shared, Arc::new(NoIndex), FailMode::Open);
        Self::over(Arc::new(store), cfg.claim_scope)
    }

    /// The entry for `key`; `None` also when no index could answer (under `FailOver` that
    /// is `NoIndex`'s miss already).
    pub async fn get(&self, key: &DedupeKey) -> Option<MediaRef> {
        self.store.get(key).await.unwrap_or(None)
    }

    /// Records `value` under `key` (a failure was counted and logged by the store; the
    /// upload itself succeeded).
    pub async fn put(&self, key: DedupeKey, value: MediaRef) {
        let _ = self.store.put(key, value).await;
    }

    /// The key of `key`'s entry in the shared store (`None`: an index of this process).
    pub fn shared_key(&self, key: &DedupeKey) -> Option<String> {
        self.store.shared_key(key)
    }

    /// An entry a guarded budget take handed back, if it parses and is still trusted.
    pub fn read_found(&self, raw: &str) -> Option<MediaRef> {
        self.store.read_found(raw)
    }

    /// Forgets `media_id` of `corp` (after a delete).
    pub async fn forget_media(&self, corp: &str, media_id: &str) {
        let _ = self.store.forget_media(corp, media_id).await;
    }

    /// Puts a reloaded `[dedupe]` in force: the trust period (for every lookup from now on,
    /// entries already recorded included: a shorter one stops hits on older entries at once)
    /// and the claim scope. `max_entries` sizes the index and needs a restart.
    pub fn apply(&self, cfg: &DedupeConfig) {
        self.store.set_ttl(cfg.ttl);
        self.corp_wide
            .store(cfg.claim_scope == ClaimScope::Corp, Ordering::Relaxed);
    }

    /// Whose entries a digest claim may hit.
    pub fn claim_scope(&self) -> ClaimScope {
        if self.corp_wide.load(Ordering::Relaxed) {
            ClaimScope::Corp
        } else {
            ClaimScope::Client
        }
    }

    /// Records that `caller` holds the file of `key` (it sent the bytes); `entry` is the
    /// entry as it was read, which spares the store a write when nothing would change.
    pub async fn add_holder(&self, key: &DedupeKey, entry: &MediaRef, caller: &str) {
        if !entry.held_by(caller) && entry.holders.len() < MAX_HOLDERS {
            let _ = self.store.add_holder(key, &entry.media_id, caller).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use coalesce::{follow, Outcome, Role};

    fn key(n: u8) -> DedupeKey {
        DedupeKey {
            corp: "c".into(),
            route: "message",
            sha256: [n; 32],
            filename: None,
        }
    }

    fn media(id: &str) -> MediaRef {
        MediaRef {
            media_id: id.into(),
            size: 1,
            content_type: "image/png".into(),
            created_at: SystemTime::now(),
            caller: "a".into(),
            holders: vec!["a".into()],
        }
    }

    #[tokio::test]
    async fn delete_evicts_only_the_matching_entry() {
        let store = MemoryStore::new(
            Duration::from_secs(60),
            100,
            crate::clock::SystemClock::shared(),
        );
        let index = Dedupe::over(Arc::new(store), ClaimScope::Client);
        index.put(key(1), media("m1")).await;
        index.put(key(2), media("m2")).await;
        index.forget_media("c", "m1").await;
        assert!(index.get(&key(1)).await.is_none());
        assert_eq!(
            index.get(&key(2)).await.map(|m| m.media_id),
            Some("m2".into())
        );
        index.forget_media("other-corp", "m2").await;
        assert!(index.get(&key(2)).await.is_some());
    }

    /// A shared index that always fails, as a Redis that is down.
    #[derive(Debug)]
    struct Down;

    impl DedupeStore for Down {
        fn get<'a>(&'a self, _: &'a DedupeKey) -> StoreFuture<'a, Option<MediaRef>> {
            Box::pin(async { Err(crate::store::StoreError::Down) })
        }
        fn put(&self, _: DedupeKey, _: MediaRef) -> StoreFuture<'_, ()> {
            Box::pin(async { Err(crate::store::StoreError::Down) })
        }
        fn add_holder<'a>(
            &'a self,
            _: &'a DedupeKey,
            _: &'a str,
            _: &'a str,
        ) -> StoreFuture<'a, ()> {
            Box::pin(async { Err(crate::store::StoreError::Down) })
        }
        fn forget_media<'a>(&'a self, _: &'a str, _: &'a str) -> StoreFuture<'a, ()> {
            Box::pin(async { Err(crate::store::StoreError::Down) })
        }
        fn set_ttl(&self, _: Duration) {}
        fn lock<'a>(
            &'a self,
            _: &'a DedupeKey,
            _: Option<&'a str>,
        ) -> StoreFuture<'a, LockOutcome> {
            Box::pin(async { Err(crate::store::StoreError::Down) })
        }
    }

    #[tokio::test]
    async fn a_failing_shared_index_is_no_index_and_never_an_error() {
        let store: FailOver<dyn DedupeStore> =
            FailOver::new(Arc::new(Down), Arc::new(NoIndex), FailMode::Open);
        assert!(matches!(store.put(key(1), media("m1")).await, Ok(())));
        assert!(matches!(store.get(&key(1)).await, Ok(None)));
        assert!(matches!(
            store.lock(&key(1), None).await,
            Ok(LockOutcome::Held(None))
        ));
        assert!(store.forget_media("c", "m1").await.is_ok());
    }

    #[tokio::test]
    async fn followers_get_the_leaders_outcome_or_take_over() {
        let c = Coalescer::default();
        let Role::Leader(lead) = c.join(key(1), None) else {
            panic!("first must lead")
        };
        let Role::Follower(slot) = c.join(key(1), None) else {
            panic!("second must follow")
        };
        let Role::Leader(_other) = c.join(key(1), Some("b".into())) else {
            panic!("other scope leads")
        };
        lead.complete(media("m1"));
        assert!(
            matches!(follow(slot, Duration::from_secs(1)).await, Some(Outcome::Done(m)) if m.media_id == "m1")
        );

        let Role::Leader(lead) = c.join(key(2), None) else {
            panic!()
        };
        let Role::Follower(slot) = c.join(key(2), None) else {
            panic!()
        };
        drop(lead);
        assert!(matches!(
            follow(slot, Duration::from_secs(1)).await,
            Some(Outcome::Failed)
        ));
        assert!(matches!(c.join(key(2), None), Role::Leader(_)));
    }
}
