//! The corp access token (design §5). One refresher task per corp owns every call to the
//! token endpoint, which makes "never two token calls in flight" structural; readers only
//! look at the published state (`watch`) and, when it holds no usable token, wake the
//! refresher and wait for its next attempt. The refresher:
//!
//! * fetches at start, and again once `refresh_at` of the lifetime the token had when fetched
//!   (its `expiresIn`) has passed, so the call lands in Fxiaoke's new-token window;
//! * keeps a failed or same-token refresh from looping: exponential backoff, and never more
//!   than `MAX_CALLS_PER_MINUTE` calls in any 60 s;
//! * keeps serving the old token while it is valid, so only its expiry makes `/readyz` fail;
//! * on `invalidate` (an upstream 20016) fetches once; if Fxiaoke hands back the same token
//!   it is accepted rather than retried (fxiaoke.md §1: don't loop).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{header, Request};
use tokio::sync::{watch, Notify};

use super::envelope::Envelope;
use super::shared_token::{unix_ms, SharedToken, StoredToken, LEASE};
use super::transport::{self, HttpClient};
use crate::body::full;
use crate::config::{CorpConfig, Secret};
use crate::error::GatewayError;
use crate::metrics::Metrics;
use crate::store::Lease;

/// Fxiaoke allows 10 token calls a minute; one is kept in reserve for clock skew.
const MAX_CALLS_PER_MINUTE: usize = 9;
/// First retry delay after a failed fetch; doubles up to `MAX_BACKOFF`.
const MIN_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// A token this close to its expiry is not handed out: the request could outlive it. Capped
/// at 2% of the lifetime so that it never reaches past `refresh_at` for short-lived tokens.
const EXPIRY_MARGIN: Duration = Duration::from_secs(2);
/// How long a request waits for a token before answering 950301.
const READER_WAIT: Duration = Duration::from_secs(15);
/// How often a replica waiting on another's refresh looks for its token.
const SHARED_POLL: Duration = Duration::from_millis(50);

/// A corp access token. `Debug` never shows the token itself.
#[derive(Debug, Clone)]
pub struct CorpToken {
    /// The `corpAccessToken`.
    pub access_token: Secret,
    /// The `corpId` it belongs to.
    pub corp_id: String,
    /// When it was fetched.
    pub fetched_at: Instant,
    /// When it stops being accepted.
    pub expires_at: Instant,
    /// When the refresher fetches its successor.
    pub refresh_at: Instant,
    /// Unix ms when its fetch started: orders tokens across replicas.
    pub issued_ms: u64,
}

impl CorpToken {
    /// A token another replica fetched, placed on this process's clock.
    fn from_stored(t: StoredToken) -> Self {
        let now = Instant::now();
        let now_ms = unix_ms();
        let at = |ms: u64| now + Duration::from_millis(ms.saturating_sub(now_ms));
        Self {
            access_token: Secret::new(t.token),
            corp_id: t.corp_id,
            fetched_at: now
                .checked_sub(Duration::from_millis(now_ms.saturating_sub(t.issued_ms)))
                .unwrap_or(now),
            expires_at: at(t.expires_ms),
            refresh_at: at(t.refresh_ms),
            issued_ms: t.issued_ms,
        }
    }
}

#[derive(Debug, Clone, Default)]
struct TokenState {
    token: Option<Arc<CorpToken>>,
    /// Fxiaoke rejected `token` (20016); a fetch is due.
    invalidated: bool,
    /// Completed fetch attempts, successful or not.
    attempts: u64,
    /// The last attempt failed, and why (free of secrets).
    last_error: Option<String>,
}

impl TokenState {
    fn usable(&self) -> Option<Arc<CorpToken>> {
        let t = self.token.as_ref()?;
        let margin = EXPIRY_MARGIN.min((t.expires_at - t.fetched_at) / 50);
        (!self.invalidated && Instant::now() + margin < t.expires_at).then(|| t.clone())
    }
}

/// Hands out the corp's token; cheap to clone.
#[derive(Debug, Clone)]
pub struct TokenProvider {
    corp: String,
    state: watch::Receiver<TokenState>,
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    publish: watch::Sender<TokenState>,
    wake: Notify,
}

impl TokenProvider {
    /// Starts the corp's refresher task, which fetches the first token at once.
    /// With `shared`, replicas take turns under a Redis lease and share what one fetched.
    pub fn spawn(
        cfg: CorpConfig,
        base: String,
        metrics: Metrics,
        shared: Option<SharedToken>,
    ) -> Self {
        let (publish, state) = watch::channel(TokenState::default());
        let shared_state = Arc::new(Shared {
            publish,
            wake: Notify::new(),
        });
        // Token calls get their own connection each time (at most 9 a minute): a pooled
        // connection the server has just closed would fail the call for nothing.
        let client = transport::unpooled(cfg.connect_timeout);
        let refresher = Refresher {
            cfg: cfg.clone(),
            base,
            client,
            metrics,
            shared: shared_state.clone(),
            store: shared,
        };
        tokio::spawn(refresher.run());
        Self {
            corp: cfg.name,
            state,
            shared: shared_state,
        }
    }

    /// A usable token: the cached one, or the next one the refresher fetches.
    pub async fn get(&self) -> Result<Arc<CorpToken>, GatewayError> {
        let mut rx = self.state.clone();
        let seen_attempts = {
            let s = rx.borrow_and_update();
            if let Some(t) = s.usable() {
                return Ok(t);
            }
            // During an outage answer at once rather than queue behind the backoff.
            if s.last_error.is_some() {
                self.shared.wake.notify_one();
                return Err(self.no_token());
            }
            s.attempts
        };
        self.shared.wake.notify_one();
        let wait = async {
            loop {
                if rx.changed().await.is_err() {
                    return Err(self.no_token());
                }
                let s = rx.borrow_and_update();
                if let Some(t) = s.usable() {
                    return Ok(t);
                }
                if s.attempts > seen_attempts && !s.invalidated {
                    return Err(self.no_token());
                }
            }
        };
        tokio::time::timeout(READER_WAIT, wait)
            .await
            .unwrap_or_else(|_| Err(self.no_token()))
    }

    /// Marks `token` rejected by Fxiaoke (20016) and wakes the refresher, once per token:
    /// a later rejection of an already-replaced token changes nothing.
    pub fn invalidate(&self, token: &CorpToken) {
        let changed = self.shared.publish.send_if_modified(|s| match &s.token {
            Some(cur) if cur.access_token == token.access_token && !s.invalidated => {
                s.invalidated = true;
                true
            }
            _ => false,
        });
        if changed {
            tracing::warn!(corp = %self.corp, "Fxiaoke rejected the corp token (20016); refreshing");
            self.shared.wake.notify_one();
        }
    }

    /// Whether a usable token is held right now (`/readyz`).
    pub fn ready(&self) -> bool {
        self.state.borrow().usable().is_some()
    }

    /// Age of the current token, for `fxgate_token_age_seconds`.
    pub fn age(&self) -> Option<Duration> {
        self.state
            .borrow()
            .token
            .as_ref()
            .map(|t| t.fetched_at.elapsed())
    }

    fn no_token(&self) -> GatewayError {
        GatewayError::NoToken {
            corp: self.corp.clone(),
        }
    }
}

struct Refresher {
    cfg: CorpConfig,
    base: String,
    client: HttpClient,
    metrics: Metrics,
    shared: Arc<Shared>,
    /// The token shared with other replicas, when Redis is configured.
    store: Option<SharedToken>,
}

/// What the shared store said about the refresh that is due.
enum Turn {
    /// Another replica's token was taken over; no call needed.
    Adopted,
    /// This replica holds the lease: fetch, then share, then drop it.
    Fetch(Lease),
    /// All replicas together used the minute's calls: try again then.
    Wait(Duration),
    /// Redis does not answer: fetch alone, as a single replica would.
    Alone,
}

/// What a fetch gave.
enum Fetched {
    Token {
        token: String,
        corp_id: String,
        expires_in: Duration,
    },
    Failed(String),
}

impl Refresher {
    async fn run(self) {
        let mut calls: VecDeque<Instant> = VecDeque::new();
        let mut backoff = MIN_BACKOFF;
        // Earliest next call after a failure or a same-token answer.
        let mut not_before = Instant::now();
        loop {
            let state = self.shared.publish.borrow().clone();
            let due = match (&state.token, state.usable()) {
                (Some(t), Some(_)) => t.refresh_at.max(not_before),
                _ => not_before,
            };
            let due = due.max(rate_slot(&mut calls));
            if Instant::now() < due {
                tokio::select! {
                    _ = tokio::time::sleep_until(due.into()) => {}
                    // A reader or an invalidation: recompute what is due.
                    _ = self.shared.wake.notified() => continue,
                }
            }
            // Nobody else holds the channel once every provider is gone: stop.
            if self.shared.publish.receiver_count() == 0 {
                return;
            }
            let current = state.token.clone();
            let mut _lease = None; // held until the fetched token is shared
            if let Some(store) = &self.store {
                match self.turn(store, &state).await {
                    Turn::Adopted => {
                        backoff = MIN_BACKOFF;
                        not_before = Instant::now();
                        continue;
                    }
                    Turn::Wait(d) => {
                        not_before = Instant::now() + d;
                        continue;
                    }
                    Turn::Fetch(l) => _lease = Some(l),
                    Turn::Alone => {}
                }
            }
            calls.push_back(Instant::now());
            let started = Instant::now();
            let issued_ms = unix_ms();
            let fetched = self.fetch().await;
            match fetched {
                Fetched::Token {
                    token,
                    corp_id,
                    expires_in,
                } => {
                    let same = current
                        .as_ref()
                        .is_some_and(|c| c.access_token.expose() == token);
                    if same && !state.invalidated {
                        // Still inside Fxiaoke's same-token window: try again later, the old
                        // token stays in service meanwhile.
                        self.metrics
                            .token_refresh
                            .with_label_values(&[&self.cfg.name, "same_token"])
                            .inc();
                        not_before = Instant::now() + backoff;
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                        self.shared.publish.send_modify(|s| s.attempts += 1);
                        continue;
                    }
                    self.metrics
                        .token_refresh
                        .with_label_values(&[&self.cfg.name, "ok"])
                        .inc();
                    let refresh_in = expires_in.mul_f64(self.cfg.refresh_at);
                    let token = CorpToken {
                        access_token: Secret::new(token),
                        corp_id,
                        fetched_at: started,
                        expires_at: started + expires_in,
                        refresh_at: started + refresh_in,
                        issued_ms,
                    };
                    if let Some(store) = &self.store {
                        self.share(store, &token).await;
                    }
                    tracing::info!(corp = %self.cfg.name, expires_in_s = expires_in.as_secs(), same_token = same, "corp token fetched");
                    backoff = MIN_BACKOFF;
                    not_before = Instant::now();
                    self.shared.publish.send_modify(|s| {
                        s.token = Some(Arc::new(token));
                        s.invalidated = false;
                        s.attempts += 1;
                        s.last_error = None;
                    });
                }
                Fetched::Failed(why) => {
                    self.metrics
                        .token_refresh
                        .with_label_values(&[&self.cfg.name, "error"])
                        .inc();
                    tracing::warn!(corp = %self.cfg.name, error = %why, retry_in_ms = backoff.as_millis() as u64, "corp token fetch failed");
                    not_before = Instant::now() + backoff;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    self.shared.publish.send_modify(|s| {
                        s.attempts += 1;
                        s.last_error = Some(why);
                        // An invalidated token stays refused; a merely old one stays in use.
                    });
                }
            }
        }
    }

    /// Decides, with the other replicas, who fetches: adopts a token another replica stored
    /// if it is newer than ours (and not the one Fxiaoke rejected), else takes the lease, else
    /// waits for the lease holder's token, taking over if the holder's lease lapses.
    async fn turn(&self, store: &SharedToken, state: &TokenState) -> Turn {
        let waited_until = Instant::now() + LEASE + Duration::from_secs(2);
        loop {
            match store.read().await {
                Ok(Some(stored)) if self.adoptable(&stored, state) => {
                    let token = CorpToken::from_stored(stored);
                    tracing::info!(corp = %self.cfg.name, "corp token taken over from the shared store");
                    self.metrics
                        .token_refresh
                        .with_label_values(&[&self.cfg.name, "shared"])
                        .inc();
                    self.shared.publish.send_modify(|s| {
                        s.token = Some(Arc::new(token));
                        s.invalidated = false;
                        s.attempts += 1;
                        s.last_error = None;
                    });
                    return Turn::Adopted;
                }
                Ok(_) => {}
                Err(_) => return Turn::Alone,
            }
            match store.try_lease().await {
                Ok(Some(lease)) => {
                    return match store.take_call_slot(MAX_CALLS_PER_MINUTE).await {
                        Ok(None) => Turn::Fetch(lease),
                        Ok(Some(wait)) => Turn::Wait(wait),
                        Err(_) => Turn::Alone,
                    };
                }
                Ok(None) => {}
                Err(_) => return Turn::Alone,
            }
            // Another replica is fetching: its token lands in the store, or its lease lapses.
            loop {
                if Instant::now() > waited_until {
                    // The holder keeps renewing without producing a token: don't starve.
                    return Turn::Wait(Duration::from_secs(1));
                }
                tokio::time::sleep(SHARED_POLL).await;
                match store.read().await {
                    Ok(Some(stored)) if self.adoptable(&stored, state) => break,
                    Ok(_) => {}
                    Err(_) => return Turn::Alone,
                }
                match store.lease_held().await {
                    Ok(true) => {}
                    Ok(false) => break,
                    Err(_) => return Turn::Alone,
                }
            }
        }
    }

    /// Whether a stored token should replace the one this replica holds.
    fn adoptable(&self, stored: &StoredToken, state: &TokenState) -> bool {
        let now = unix_ms();
        let lifetime = stored.expires_ms.saturating_sub(stored.issued_ms);
        let margin = (EXPIRY_MARGIN.as_millis() as u64).min(lifetime / 50);
        if stored.expires_ms <= now + margin {
            return false;
        }
        match &state.token {
            None => true,
            Some(cur) if cur.access_token.expose() == stored.token => false,
            // Ours was rejected by Fxiaoke: any other live token is better.
            Some(_) if state.invalidated => true,
            Some(cur) => stored.issued_ms > cur.issued_ms,
        }
    }

    /// Writes a freshly fetched token to the store, unless a newer one is already there.
    async fn share(&self, store: &SharedToken, token: &CorpToken) {
        let now = Instant::now();
        let now_ms = unix_ms();
        let ms = |at: Instant| now_ms + at.saturating_duration_since(now).as_millis() as u64;
        let stored = StoredToken {
            token: token.access_token.expose().to_string(),
            corp_id: token.corp_id.clone(),
            issued_ms: token.issued_ms,
            expires_ms: ms(token.expires_at),
            refresh_ms: ms(token.refresh_at),
        };
        match store.write_if_newer(&stored).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::info!(corp = %self.cfg.name, "a newer corp token was already shared; kept it")
            }
            Err(e) => {
                tracing::warn!(corp = %self.cfg.name, error = %e, "could not share the corp token")
            }
        }
    }

    async fn fetch(&self) -> Fetched {
        let trace = uuid::Uuid::new_v4();
        let uri = match format!(
            "{}/cgi/corpAccessToken/get/V2?thirdTraceId={trace}",
            self.base
        )
        .parse::<http::Uri>()
        {
            Ok(u) => u,
            Err(_) => return Fetched::Failed("invalid base_url".into()),
        };
        let body = serde_json::json!({
            "appId": self.cfg.app_id,
            "appSecret": self.cfg.app_secret.expose(),
            "permanentCode": self.cfg.permanent_code.expose(),
        });
        let req = Request::post(uri)
            .header(header::CONTENT_TYPE, "application/json; charset=utf-8")
            .body(full(body.to_string()));
        let req = match req {
            Ok(r) => r,
            Err(e) => return Fetched::Failed(format!("cannot build request: {e}")),
        };
        let deadline =
            self.cfg.connect_timeout + self.cfg.upstream_timeout.min(Duration::from_secs(30));
        let resp = match tokio::time::timeout(deadline, self.client.request(req)).await {
            Err(_) => return Fetched::Failed("token endpoint timed out".into()),
            Ok(Err(e)) => return Fetched::Failed(transport::transport_detail(&e)),
            Ok(Ok(r)) => r,
        };
        let status = resp.status();
        let env = match Envelope::read(resp.into_body()).await {
            Ok(e) => e,
            Err(e) => return Fetched::Failed(e.description()),
        };
        let code = env.error_code();
        self.metrics
            .upstream_requests
            .with_label_values(&[
                &self.cfg.name,
                "/cgi/corpAccessToken/get/V2",
                &code.map_or("none".into(), |c| c.to_string()),
            ])
            .inc();
        if code != Some(0) {
            // errorMessage is Fxiaoke's text, free of our secrets; traceId helps their support.
            return Fetched::Failed(format!(
                "HTTP {status}, errorCode {}, errorMessage {:?}, traceId {:?}",
                code.map_or("none".into(), |c| c.to_string()),
                env.str_field("errorMessage").unwrap_or(""),
                env.trace_id().unwrap_or_default()
            ));
        }
        let json = env.json.as_ref();
        let token = json
            .and_then(|j| j.get("corpAccessToken"))
            .and_then(|v| v.as_str())
            .filter(|t| !t.is_empty());
        let corp_id = json.and_then(|j| j.get("corpId")).and_then(|v| v.as_str());
        let expires_in = json
            .and_then(|j| j.get("expiresIn"))
            .and_then(|v| v.as_u64())
            .filter(|e| *e > 0);
        match (token, corp_id, expires_in) {
            (Some(t), Some(c), Some(e)) => Fetched::Token {
                token: t.to_string(),
                corp_id: c.to_string(),
                expires_in: Duration::from_secs(e.min(7200)),
            },
            _ => Fetched::Failed(
                "token answer lacks corpAccessToken, corpId or a positive expiresIn".into(),
            ),
        }
    }
}

/// The earliest instant at which another call keeps us within `MAX_CALLS_PER_MINUTE`.
fn rate_slot(calls: &mut VecDeque<Instant>) -> Instant {
    let now = Instant::now();
    while calls
        .front()
        .is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(60))
    {
        calls.pop_front();
    }
    if calls.len() < MAX_CALLS_PER_MINUTE {
        now
    } else {
        calls.front().map_or(now, |t| *t + Duration::from_secs(60))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_slot_keeps_calls_under_the_minute_limit() {
        let now = Instant::now();
        let mut calls: VecDeque<Instant> = (0..MAX_CALLS_PER_MINUTE as u64)
            .map(|i| now - Duration::from_secs(50) + Duration::from_secs(i))
            .collect();
        // The window is full: the next call waits for the oldest to age out of the minute.
        let slot = rate_slot(&mut calls);
        assert!(slot >= now + Duration::from_secs(9), "{:?}", slot - now);
        calls.pop_front();
        assert!(rate_slot(&mut calls) <= Instant::now());
    }

    #[test]
    fn old_calls_leave_the_window() {
        let now = Instant::now();
        let mut calls: VecDeque<Instant> = (0..20).map(|_| now - Duration::from_secs(61)).collect();
        assert!(rate_slot(&mut calls) <= Instant::now());
        assert!(calls.is_empty());
    }
}
