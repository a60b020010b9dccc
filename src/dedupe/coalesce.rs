//! Single-flight for claimed digests (design §4 step 6): concurrent uploads of one claimed
//! digest go upstream once. Within the process the `Coalescer` makes the first request the
//! leader and the rest followers of its outcome; across replicas the leader also takes the
//! store's lock, waiting (boundedly) while another replica holds it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::watch;

use super::{Dedupe, DedupeKey, LockOutcome, MediaRef};
use crate::config::ClaimScope;
use crate::store::Lease;

/// How a coalesced upload ended, as its followers see it.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// The leader's upload succeeded.
    Done(MediaRef),
    /// The leader failed or gave up; one follower takes over.
    Failed,
}

type Pending = watch::Receiver<Option<Outcome>>;
/// A claimed upload: its key, and the caller when claims are scoped per caller.
type InflightKey = (DedupeKey, Option<String>);
type InflightMap = Arc<Mutex<HashMap<InflightKey, Pending>>>;

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
    Follower(Pending),
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
pub async fn follow(mut slot: Pending, bound: Duration) -> Option<Outcome> {
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

/// How often a request waiting on another replica's upload of the same file looks for its
/// entry.
const REMOTE_LEADER_POLL: Duration = Duration::from_millis(50);

/// What a claimed digest led to.
#[derive(Debug)]
pub enum Claim {
    /// Answer with this mediaId; no body needed.
    Hit(MediaRef),
    /// Upload, and hand the result to the requests waiting on the same digest.
    Lead(LeaderGuard),
    /// Upload without coalescing (waiting for a leader took too long).
    Alone,
}

impl Claim {
    /// For spans: how the claim was met.
    pub fn label(&self) -> &'static str {
        match self {
            Claim::Hit(_) => "hit",
            Claim::Lead(_) => "miss",
            Claim::Alone => "miss_alone",
        }
    }
}

impl Dedupe {
    /// Looks up a digest `caller` claims for `key` before any body byte is read; on a miss,
    /// decides who uploads it. Waits at most `bound` for another upload of the same file.
    pub async fn claim(&self, key: &DedupeKey, caller: &str, bound: Duration) -> Claim {
        let per_caller = self.claim_scope() == ClaimScope::Client;
        loop {
            if let Some(media) = self.visible(key, per_caller, caller).await {
                return Claim::Hit(media);
            }
            let scope = per_caller.then(|| caller.to_string());
            match self.coalescer.join(key.clone(), scope.clone()) {
                Role::Leader(guard) => {
                    return self
                        .lead(guard, key, scope.as_deref(), per_caller, caller, bound)
                        .await
                }
                Role::Follower(slot) => match follow(slot, bound).await {
                    Some(Outcome::Done(media)) => return Claim::Hit(media),
                    // The leader failed: look again, and one of the waiters takes the lead.
                    Some(Outcome::Failed) => continue,
                    None => return Claim::Alone,
                },
            }
        }
    }

    /// A digest alone proves nothing: by default it only finds the caller's own files.
    async fn visible(&self, key: &DedupeKey, per_caller: bool, caller: &str) -> Option<MediaRef> {
        self.store
            .get(key)
            .await
            .unwrap_or(None)
            .filter(|m| !per_caller || m.held_by(caller))
    }

    /// Other replicas may be uploading the same file: wait for their entry while their lease
    /// lives, take over when it lapses.
    async fn lead(
        &self,
        mut guard: LeaderGuard,
        key: &DedupeKey,
        scope: Option<&str>,
        per_caller: bool,
        caller: &str,
        bound: Duration,
    ) -> Claim {
        let deadline = tokio::time::Instant::now() + bound;
        loop {
            // Under `FailOver` a failing Redis grants the lock with nobody to coordinate with.
            let lock = self.store.lock(key, scope).await;
            match lock.unwrap_or(LockOutcome::Held(None)) {
                LockOutcome::Held(lease) => {
                    // The holder before us may just have finished.
                    if let Some(media) = self.visible(key, per_caller, caller).await {
                        guard.complete(media.clone());
                        return Claim::Hit(media);
                    }
                    guard.hold(lease);
                    return Claim::Lead(guard);
                }
                LockOutcome::Busy if tokio::time::Instant::now() >= deadline => {
                    return Claim::Lead(guard)
                }
                LockOutcome::Busy => {
                    tokio::time::sleep(REMOTE_LEADER_POLL).await;
                    if let Some(media) = self.visible(key, per_caller, caller).await {
                        guard.complete(media.clone());
                        return Claim::Hit(media);
                    }
                }
            }
        }
    }
}
