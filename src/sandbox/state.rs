//! The sandbox's mutable state: issued tokens, stored media, counters, scripted faults.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use super::SandboxOptions;

/// The `corpId` the sandbox issues.
pub(super) const CORP_ID: &str = "FSCID_SANDBOX0000000000000000000";

/// Fxiaoke re-issues the same token for the first 6600 of its 7200 seconds.
const SAME_TOKEN_FRACTION: f64 = 6600.0 / 7200.0;

/// Counters the tests read through `GET /_sandbox/stats`.
#[derive(Debug, Default)]
pub struct Stats {
    /// Token endpoint calls, answered or refused.
    pub token_calls: AtomicU64,
    /// Token calls refused because another was in flight.
    pub token_rejected_concurrent: AtomicU64,
    /// Token calls refused by the 10-a-minute limit.
    pub token_rejected_rate: AtomicU64,
    /// Token calls refused for bad credentials or a scripted failure.
    pub token_failures: AtomicU64,
    /// Distinct tokens issued.
    pub tokens_issued: AtomicU64,
    /// Calls refused with 20016.
    pub token_rejected: AtomicU64,
    /// Upload requests received (before any check).
    pub upload_requests: AtomicU64,
    /// Uploads stored.
    pub uploads_completed: AtomicU64,
    /// Upload bodies that ended abnormally (the sender aborted).
    pub uploads_aborted: AtomicU64,
    /// Uploads refused for their content.
    pub uploads_rejected: AtomicU64,
    /// Uploads being received right now.
    pub uploads_active: AtomicU64,
    /// Download calls.
    pub downloads: AtomicU64,
    /// Delete calls.
    pub deletes: AtomicU64,
    changed: Notify,
}

/// A copy of the counters.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StatsSnapshot {
    /// See [`Stats`].
    pub token_calls: u64,
    /// See [`Stats`].
    pub token_rejected_concurrent: u64,
    /// See [`Stats`].
    pub token_rejected_rate: u64,
    /// See [`Stats`].
    pub token_failures: u64,
    /// See [`Stats`].
    pub tokens_issued: u64,
    /// See [`Stats`].
    pub token_rejected: u64,
    /// See [`Stats`].
    pub upload_requests: u64,
    /// See [`Stats`].
    pub uploads_completed: u64,
    /// See [`Stats`].
    pub uploads_aborted: u64,
    /// See [`Stats`].
    pub uploads_rejected: u64,
    /// See [`Stats`].
    pub uploads_active: u64,
    /// See [`Stats`].
    pub downloads: u64,
    /// See [`Stats`].
    pub deletes: u64,
}

/// Decrements `uploads_active` when an upload handler ends, however it ends.
pub(super) struct ActiveUpload<'a>(&'a Stats);

impl Drop for ActiveUpload<'_> {
    fn drop(&mut self) {
        self.0.uploads_active.fetch_sub(1, Ordering::SeqCst);
        self.0.changed.notify_waiters();
    }
}

impl Stats {
    pub(super) fn bump(&self, which: impl Fn(&Stats) -> &AtomicU64) {
        which(self).fetch_add(1, Ordering::SeqCst);
        self.changed.notify_waiters();
    }

    pub(super) fn active_uploads(&self) -> ActiveUpload<'_> {
        self.bump(|s| &s.uploads_active);
        ActiveUpload(self)
    }

    /// A copy of every counter.
    pub fn snapshot(&self) -> StatsSnapshot {
        let g = |a: &AtomicU64| a.load(Ordering::SeqCst);
        StatsSnapshot {
            token_calls: g(&self.token_calls),
            token_rejected_concurrent: g(&self.token_rejected_concurrent),
            token_rejected_rate: g(&self.token_rejected_rate),
            token_failures: g(&self.token_failures),
            tokens_issued: g(&self.tokens_issued),
            token_rejected: g(&self.token_rejected),
            upload_requests: g(&self.upload_requests),
            uploads_completed: g(&self.uploads_completed),
            uploads_aborted: g(&self.uploads_aborted),
            uploads_rejected: g(&self.uploads_rejected),
            uploads_active: g(&self.uploads_active),
            downloads: g(&self.downloads),
            deletes: g(&self.deletes),
        }
    }

    /// Resolves once the named counter is at least `value`; never for an unknown name.
    pub(super) async fn wait_until(&self, name: &str, value: u64) {
        loop {
            let changed = self.changed.notified();
            let snap = serde_json::to_value(self.snapshot()).unwrap_or_default();
            match snap.get(name).and_then(|v| v.as_u64()) {
                Some(now) if now >= value => return,
                Some(_) => changed.await,
                None => std::future::pending::<()>().await,
            }
        }
    }
}

/// A stored upload.
#[derive(Debug)]
pub(super) struct Media {
    pub(super) bytes: Bytes,
    pub(super) sha256: [u8; 32],
    pub(super) size: u64,
    pub(super) filename: String,
    pub(super) content_type: Option<String>,
    pub(super) route: &'static str,
}

impl Media {
    pub(super) fn describe(&self, id: &str) -> serde_json::Value {
        serde_json::json!({
            "mediaId": id,
            "sha256": hex::encode(self.sha256),
            "size": self.size,
            "filename": self.filename,
            "contentType": self.content_type,
            "route": self.route,
        })
    }
}

/// Faults a test can script through `POST /_sandbox/faults`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Faults {
    /// Forget every issued token: the next use answers 20016.
    #[serde(default)]
    pub(super) revoke_tokens: bool,
    /// Hold each upload answer this long after reading the body.
    #[serde(default, rename = "upload_delay_ms", with = "millis")]
    pub(super) upload_delay: Duration,
    /// Answer the next N token calls with errorCode -1.
    #[serde(default)]
    pub(super) token_fail_calls: u32,
    /// Answer the next upload with this errorCode.
    #[serde(default)]
    pub(super) fail_next_upload: Option<i64>,
    /// Answer the next N token calls with a head and the start of a body that never ends.
    #[serde(default)]
    pub(super) token_stall_calls: u32,
    /// Answer the next N uploads (body read, nothing stored) likewise.
    #[serde(default)]
    pub(super) upload_stall_answers: u32,
}

mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(d)?))
    }
}

impl Faults {
    pub(super) fn apply(&mut self, new: Faults) {
        self.upload_delay = new.upload_delay;
        self.token_fail_calls = new.token_fail_calls;
        self.fail_next_upload = new.fail_next_upload;
        self.token_stall_calls = new.token_stall_calls;
        self.upload_stall_answers = new.upload_stall_answers;
    }

    pub(super) fn take_upload_stall(&mut self) -> bool {
        let stall = self.upload_stall_answers > 0;
        self.upload_stall_answers = self.upload_stall_answers.saturating_sub(1);
        stall
    }

    pub(super) fn take_token_stall(&mut self) -> bool {
        let stall = self.token_stall_calls > 0;
        self.token_stall_calls = self.token_stall_calls.saturating_sub(1);
        stall
    }

    pub(super) fn take_token_failure(&mut self) -> bool {
        if self.token_fail_calls > 0 {
            self.token_fail_calls -= 1;
            true
        } else {
            false
        }
    }
}

#[derive(Debug, Default)]
struct TokenBook {
    /// The token the endpoint currently hands out, with its issue time.
    current: Option<(String, Instant)>,
    /// Every token still accepted, by issue time.
    valid: HashMap<String, Instant>,
    /// Every token ever issued.
    issued: Vec<String>,
    /// Token calls of the last minute.
    recent_calls: VecDeque<Instant>,
    in_flight: bool,
}

/// The whole sandbox state.
#[derive(Debug)]
pub(super) struct State {
    pub(super) opts: SandboxOptions,
    tokens: Mutex<TokenBook>,
    pub(super) media: Mutex<HashMap<String, Media>>,
    pub(super) stats: Stats,
    pub(super) faults: Mutex<Faults>,
}

/// Marks the token endpoint busy while a call is being answered.
pub(super) struct TokenCall<'a>(&'a State);

impl Drop for TokenCall<'_> {
    fn drop(&mut self) {
        self.0.tokens.lock().in_flight = false;
    }
}

impl State {
    pub(super) fn new(opts: SandboxOptions) -> Self {
        Self {
            opts,
            tokens: Mutex::default(),
            media: Mutex::default(),
            stats: Stats::default(),
            faults: Mutex::default(),
        }
    }

    /// Fxiaoke forbids concurrent token calls and allows at most 10 a minute.
    pub(super) fn enter_token_call(&self) -> Result<TokenCall<'_>, &'static str> {
        let mut book = self.tokens.lock();
        let now = self.opts.clock.now();
        while book
            .recent_calls
            .front()
            .is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(60))
        {
            book.recent_calls.pop_front();
        }
        if book.in_flight {
            self.stats.bump(|s| &s.token_rejected_concurrent);
            return Err("concurrent token calls are not allowed");
        }
        if book.recent_calls.len() >= 10 {
            self.stats.bump(|s| &s.token_rejected_rate);
            return Err("token interface call limit exceeded (10 per minute)");
        }
        book.recent_calls.push_back(now);
        book.in_flight = true;
        Ok(TokenCall(self))
    }

    /// The current token while it is young, else a new one; `expiresIn` is the remaining life.
    pub(super) fn issue_token(&self) -> (String, u64) {
        let ttl = self.opts.token_ttl;
        let mut book = self.tokens.lock();
        let now = self.opts.clock.now();
        book.valid
            .retain(|_, issued| now.duration_since(*issued) < ttl);
        if let Some((token, issued)) = &book.current {
            let age = now.duration_since(*issued);
            if age.as_secs_f64() < ttl.as_secs_f64() * SAME_TOKEN_FRACTION {
                let remaining = (ttl - age).as_secs_f64().floor() as u64;
                return (token.clone(), remaining);
            }
        }
        let token = format!("sbx{}", uuid::Uuid::new_v4().simple());
        book.current = Some((token.clone(), now));
        book.valid.insert(token.clone(), now);
        book.issued.push(token.clone());
        self.stats.bump(|s| &s.tokens_issued);
        (token, ttl.as_secs())
    }

    pub(super) fn token_valid(&self, token: &str) -> bool {
        let book = self.tokens.lock();
        book.valid.get(token).is_some_and(|issued| {
            self.opts.clock.now().duration_since(*issued) < self.opts.token_ttl
        })
    }

    pub(super) fn issued_tokens(&self) -> Vec<String> {
        self.tokens.lock().issued.clone()
    }

    pub(super) fn revoke_tokens(&self) {
        let mut book = self.tokens.lock();
        book.current = None;
        book.valid.clear();
    }
}
