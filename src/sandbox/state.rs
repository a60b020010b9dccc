//! The sandbox's mutable state: issued tokens, stored media, counters, scripted faults.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use super::faults::Faults;
use super::SandboxOptions;

/// The `corpId` the sandbox issues.
pub(super) const CORP_ID: &str = "FSCID_SANDBOX0000000000000000000";
/// The enterprise account (`ea`) the OAuth token endpoint answers.
pub(super) const EA: &str = "sandbox_ea";
/// Fxiaoke's per-interface limit: calls per path in any 20 s (fxiaoke.md §5).
const PATH_WINDOW: Duration = Duration::from_secs(20);

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
    /// OAuth token endpoint calls, answered or refused.
    pub oauth_token_calls: AtomicU64,
    /// OAuth token calls refused because another was in flight.
    pub oauth_token_rejected_concurrent: AtomicU64,
    /// Calls to `/cgi/` business paths (token endpoints excluded), answered or refused.
    pub cgi_calls: AtomicU64,
    /// Business calls refused by the per-path limit (14001).
    pub cgi_rate_limited: AtomicU64,
    /// Messages accepted by `/cgi/message/send`.
    pub messages_sent: AtomicU64,
    /// File Service signatures handed out (step 1).
    pub file_credentials: AtomicU64,
    /// File Service step-2 requests.
    pub file_upload_requests: AtomicU64,
    /// File Service uploads stored (an npath given).
    pub file_uploads_completed: AtomicU64,
    /// File Service step-2 requests refused.
    pub file_uploads_rejected: AtomicU64,
    /// File Service step-2 bodies that ended short.
    pub file_uploads_aborted: AtomicU64,
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
    /// See [`Stats`].
    pub oauth_token_calls: u64,
    /// See [`Stats`].
    pub oauth_token_rejected_concurrent: u64,
    /// See [`Stats`].
    pub cgi_calls: u64,
    /// See [`Stats`].
    pub cgi_rate_limited: u64,
    /// See [`Stats`].
    pub messages_sent: u64,
    /// See [`Stats`].
    pub file_credentials: u64,
    /// See [`Stats`].
    pub file_upload_requests: u64,
    /// See [`Stats`].
    pub file_uploads_completed: u64,
    /// See [`Stats`].
    pub file_uploads_rejected: u64,
    /// See [`Stats`].
    pub file_uploads_aborted: u64,
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
            oauth_token_calls: g(&self.oauth_token_calls),
            oauth_token_rejected_concurrent: g(&self.oauth_token_rejected_concurrent),
            cgi_calls: g(&self.cgi_calls),
            cgi_rate_limited: g(&self.cgi_rate_limited),
            messages_sent: g(&self.messages_sent),
            file_credentials: g(&self.file_credentials),
            file_upload_requests: g(&self.file_upload_requests),
            file_uploads_completed: g(&self.file_uploads_completed),
            file_uploads_rejected: g(&self.file_uploads_rejected),
            file_uploads_aborted: g(&self.file_uploads_aborted),
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
    /// What a plain sink answers for: a body read and discarded, unparsed.
    pub(super) fn unread(route: &'static str) -> Self {
        Self {
            bytes: Bytes::new(),
            sha256: [0; 32],
            size: 0,
            filename: String::new(),
            content_type: None,
            route,
        }
    }

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

/// A business call as the sandbox received it, for tests that compare bytes.
#[derive(Debug, Clone, Serialize)]
pub(super) struct Received {
    pub(super) path: String,
    pub(super) query: String,
    pub(super) headers: Vec<(String, String)>,
    pub(super) body: String,
}

/// A message `/cgi/message/send` accepted.
#[derive(Debug, Clone, Serialize)]
pub(super) struct SentMessage {
    pub(super) to_user: serde_json::Value,
    pub(super) msg_type: String,
    pub(super) media_id: Option<String>,
    /// The user the call acted as (`currentOpenUserId` or `x-fs-userid`).
    pub(super) sender: Option<String>,
    /// `legacy` or `oauth`: how the call authenticated.
    pub(super) style: &'static str,
}

/// The whole sandbox state.
#[derive(Debug)]
pub(super) struct State {
    pub(super) opts: SandboxOptions,
    /// The legacy (`/cgi/corpAccessToken/get/V2`) and OAuth (`/oauth2.0/token`) books.
    tokens: [Mutex<TokenBook>; 2],
    pub(super) media: Mutex<HashMap<String, Media>>,
    /// Business calls per path in the last 20 s.
    windows: Mutex<HashMap<String, VecDeque<Instant>>>,
    pub(super) received: Mutex<VecDeque<Received>>,
    pub(super) messages: Mutex<Vec<SentMessage>>,
    pub(super) files: Mutex<Files>,
    pub(super) stats: Stats,
    pub(super) faults: Mutex<Faults>,
}

/// Marks the token endpoint busy while a call is being answered.
pub(super) struct TokenCall<'a>(&'a Mutex<TokenBook>);

impl Drop for TokenCall<'_> {
    fn drop(&mut self) {
        self.0.lock().in_flight = false;
    }
}

/// Which token endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Endpoint {
    Legacy = 0,
    OAuth = 1,
}

impl State {
    pub(super) fn new(opts: SandboxOptions) -> Self {
        Self {
            opts,
            tokens: Default::default(),
            media: Mutex::default(),
            windows: Mutex::default(),
            received: Mutex::default(),
            messages: Mutex::default(),
            files: Mutex::default(),
            stats: Stats::default(),
            faults: Mutex::default(),
        }
    }

    /// Fxiaoke forbids concurrent token calls and allows at most 10 a minute.
    pub(super) fn enter_token_call(
        &self,
        endpoint: Endpoint,
    ) -> Result<TokenCall<'_>, &'static str> {
        let mut book = self.tokens[endpoint as usize].lock();
        let now = self.opts.clock.now();
        while book
            .recent_calls
            .front()
            .is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(60))
        {
            book.recent_calls.pop_front();
        }
        if book.in_flight {
            match endpoint {
                Endpoint::Legacy => self.stats.bump(|s| &s.token_rejected_concurrent),
                Endpoint::OAuth => self.stats.bump(|s| &s.oauth_token_rejected_concurrent),
            }
            return Err("concurrent token calls are not allowed");
        }
        if book.recent_calls.len() >= 10 {
            self.stats.bump(|s| &s.token_rejected_rate);
            return Err("token interface call limit exceeded (10 per minute)");
        }
        book.recent_calls.push_back(now);
        book.in_flight = true;
        Ok(TokenCall(&self.tokens[endpoint as usize]))
    }

    /// The current token while it is young, else a new one; `expiresIn` is the remaining life.
    pub(super) fn issue_token(&self, endpoint: Endpoint) -> (String, u64) {
        let ttl = self.opts.token_ttl;
        let mut book = self.tokens[endpoint as usize].lock();
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
        let prefix = match endpoint {
            Endpoint::Legacy => "sbx",
            Endpoint::OAuth => "sbxo",
        };
        let token = format!("{prefix}{}", uuid::Uuid::new_v4().simple());
        book.current = Some((token.clone(), now));
        book.valid.insert(token.clone(), now);
        book.issued.push(token.clone());
        self.stats.bump(|s| &s.tokens_issued);
        (token, ttl.as_secs())
    }

    pub(super) fn token_valid(&self, endpoint: Endpoint, token: &str) -> bool {
        let book = self.tokens[endpoint as usize].lock();
        book.valid.get(token).is_some_and(|issued| {
            self.opts.clock.now().duration_since(*issued) < self.opts.token_ttl
        })
    }

    pub(super) fn issued_tokens(&self) -> Vec<String> {
        self.tokens
            .iter()
            .flat_map(|b| b.lock().issued.clone())
            .collect()
    }

    pub(super) fn revoke_tokens(&self) {
        for book in &self.tokens {
            let mut book = book.lock();
            book.current = None;
            book.valid.clear();
        }
    }

    /// Takes one call on `path` from Fxiaoke's per-interface limit (`per_20s` calls in any
    /// 20 s); `false`: the limit is reached (14001).
    pub(super) fn take_path_call(&self, path: &str, per_20s: u32) -> bool {
        let now = self.opts.clock.now();
        let mut windows = self.windows.lock();
        let window = windows.entry(path.to_string()).or_default();
        while window
            .front()
            .is_some_and(|t| now.duration_since(*t) >= PATH_WINDOW)
        {
            window.pop_front();
        }
        if window.len() >= per_20s as usize {
            return false;
        }
        window.push_back(now);
        true
    }

    /// Keeps the last business calls (a short ring: tests look at the latest).
    pub(super) fn remember(&self, call: Received) {
        let mut received = self.received.lock();
        if received.len() >= 64 {
            received.pop_front();
        }
        received.push_back(call);
    }
}

/// One signature step 1 handed out.
#[derive(Debug, Clone)]
pub(super) struct Credential {
    pub(super) headers: Vec<(&'static str, String)>,
    pub(super) content_type: String,
    pub(super) size: u64,
    pub(super) expiry_ms: u64,
    pub(super) link: String,
    pub(super) temporary: bool,
    pub(super) used: bool,
}

/// What step 2 stored: the npath's file.
#[derive(Debug, Clone)]
pub(super) struct StoredFile {
    pub(super) sha256: [u8; 32],
    pub(super) size: u64,
    pub(super) filename: String,
}

/// The File Service's book: signatures by `sign`, files by npath.
#[derive(Debug, Default)]
pub(super) struct Files {
    pub(super) credentials: HashMap<String, Credential>,
    pub(super) stored: HashMap<String, StoredFile>,
}
