//! The dedupe index (design §6): which file (by SHA-256) already has which Fxiaoke mediaId,
//! per corp and route. `DedupeStore` is the storage seam (the embedded moka store here, Redis
//! when replicas share); `Coalescer` makes concurrent uploads of one claimed digest go upstream
//! once. Only digests fxgate computed itself are recorded, and only after Fxiaoke's `errorCode 0`.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use parking_lot::Mutex;
use tokio::sync::watch;

use crate::config::DedupeConfig;
use crate::store::{Lease, Redis};
use futures_util::future::BoxFuture;

pub mod redis;

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
    /// Whether `caller` has sent these bytes before.
    pub fn held_by(&self, caller: &str) -> bool {
        self.holders.iter().any(|h| h == caller)
    }
}

/// Where the index lives.
pub trait DedupeStore: Send + Sync + fmt::Debug {
    /// The entry for `key`, if any and not expired.
    fn get<'a>(&'a self, key: &'a DedupeKey) -> BoxFuture<'a, Option<MediaRef>>;
    /// Records (or replaces) an entry.
    fn put(&self, key: DedupeKey, value: MediaRef) -> BoxFuture<'_, ()>;
    /// Forgets every entry pointing at `media_id` of `corp` (after a delete).
    fn forget_media<'a>(&'a self, corp: &'a str, media_id: &'a str) -> BoxFuture<'a, ()>;
    /// The right to upload `key` (for `scope`) across processes. The embedded store grants
    /// it at once: within one process the `Coalescer` is enough.
    fn lock<'a>(
        &'a self,
        _key: &'a DedupeKey,
        _scope: Option<&'a str>,
    ) -> BoxFuture<'a, LockOutcome> {
        Box::pin(async { LockOutcome::Held(None) })
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

/// How a coalesced upload ended, as its followers see it.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// The leader's upload succeeded.
    Done(MediaRef),
    /// The leader failed or gave up; one follower takes over.
    Failed,
}

type Slot = watch::Receiver<Option<Outcome>>;
/// A claimed upload: its key, and the caller when claims are scoped per caller.
type InflightKey = (DedupeKey, Option<String>);
type InflightMap = Arc<Mutex<HashMap<InflightKey, Slot>>>;

/// Concurrent uploads of the same claimed digest: the first leads, the rest wait for it.
#[derive(Debug, Default)]
pub struct Coalescer {
    inflight: InflightMap,
}

/// The role a request gets.
#[derive(Debug)]
pub enum Role {
    /// Upload, then report through the guard.
    Leader(LeaderGuard),
    /// Wait on this for the leader's outcome.
    Follower(Slot),
}

/// Held by the leading upload; dropping it without `complete` tells followers it failed.
#[derive(Debug)]
pub struct LeaderGuard {
    key: InflightKey,
    tx: watch::Sender<Option<Outcome>>,
    map: InflightMap,
    /// The cross-replica lease, released after the followers have their answer.
    lease: Option<Lease>,
}

impl LeaderGuard {
    /// Holds `lease` for as long as the guard lives.
    pub fn hold(&mut self, lease: Option<Lease>) {
        self.lease = lease;
    }

    /// Hands the mediaId to every follower.
    pub fn complete(self, media: MediaRef) {
        let _ = self.tx.send(Some(Outcome::Done(media)));
    }
}

impl Drop for LeaderGuard {
    fn drop(&mut self) {
        self.map.lock().remove(&self.key);
        self.tx.send_if_modified(|o| {
            if o.is_none() {
                *o = Some(Outcome::Failed);
                true
            } else {
                false
            }
        });
    }
}

impl Coalescer {
    /// Leads if nobody uploads `key` (for `scope`, the caller when claims are per caller) yet.
    pub fn join(&self, key: DedupeKey, scope: Option<String>) -> Role {
        let mut map = self.inflight.lock();
        let k = (key, scope);
        if let Some(rx) = map.get(&k) {
            return Role::Follower(rx.clone());
        }
        let (tx, rx) = watch::channel(None);
        map.insert(k.clone(), rx);
        Role::Leader(LeaderGuard {
            key: k,
            tx,
            map: self.inflight.clone(),
            lease: None,
        })
    }
}

/// Waits for a leader's outcome, at most `bound`; `None` on timeout.
pub async fn follow(mut slot: Slot, bound: Duration) -> Option<Outcome> {
    let wait = async {
        loop {
            if let Some(outcome) = slot.borrow_and_update().clone() {
                return Some(outcome);
            }
            if slot.changed().await.is_err() {
                // The leader's guard is gone without a word: it failed.
                return Some(Outcome::Failed);
            }
        }
    };
    tokio::time::timeout(bound, wait).await.ok().flatten()
}

/// The dedupe index with its policy.
#[derive(Debug)]
pub struct Dedupe {
    /// The storage.
    pub store: Arc<dyn DedupeStore>,
    /// In-flight claimed uploads.
    pub coalescer: Coalescer,
    /// Whether claims may hit other callers' entries.
    pub claim_scope: crate::config::ClaimScope,
}

impl Dedupe {
    /// The embedded (moka) index.
    pub fn memory(cfg: &DedupeConfig) -> Self {
        Self {
            store: Arc::new(MemoryStore::new(cfg.ttl, cfg.max_entries)),
            coalescer: Coalescer::default(),
            claim_scope: cfg.claim_scope,
        }
    }

    /// The index in Redis, shared by replicas.
    pub fn redis(cfg: &DedupeConfig, redis: Arc<Redis>) -> Self {
        Self {
            store: Arc::new(redis::RedisStore::new(redis, cfg.ttl)),
            coalescer: Coalescer::default(),
            claim_scope: cfg.claim_scope,
        }
    }

    /// Records that `caller` holds the file of `key` (it sent the bytes), keeping the entry.
    pub async fn add_holder(&self, key: &DedupeKey, mut entry: MediaRef, caller: &str) {
        if !entry.held_by(caller) && entry.holders.len() < MAX_HOLDERS {
            entry.holders.push(caller.to_string());
            self.store.put(key.clone(), entry).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let store = MemoryStore::new(Duration::from_secs(60), 100);
        store.put(key(1), media("m1")).await;
        store.put(key(2), media("m2")).await;
        store.forget_media("c", "m1").await;
        assert!(store.get(&key(1)).await.is_none());
        assert_eq!(
            store.get(&key(2)).await.map(|m| m.media_id),
            Some("m2".into())
        );
        store.forget_media("other-corp", "m2").await;
        assert!(store.get(&key(2)).await.is_some());
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
