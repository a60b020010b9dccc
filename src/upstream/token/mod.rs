//! The corp access token (design §5). One refresher task per corp (`refresher`) owns every
//! call to the token endpoint, which makes "never two token calls in flight" structural;
//! readers only look at the published state (`watch`) and, when it holds no usable token,
//! wake the refresher and wait for its next attempt. Replicas share the token through a
//! `TokenStore` (`store`: alone in memory, or `redis`). Lifetimes and the refresh schedule run
//! on the injected `Clock`, so tests cover hours of token life in milliseconds.

mod endpoint;
pub mod redis;
mod refresher;
pub mod store;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{watch, Notify};

use crate::clock::Clock;
use crate::config::{CorpConfig, Secret};
use crate::error::GatewayError;
use crate::metrics::Metrics;
pub use crate::route::ApiStyle;
use crate::upstream::timing::Timing;
use refresher::Refresher;
use store::{StoredToken, TokenStore};

/// A token this close to its expiry is not handed out: the request could outlive it. Capped
/// at 2% of the lifetime so that it never reaches past `refresh_at` for short-lived tokens.
const EXPIRY_MARGIN: Duration = Duration::from_secs(2);
/// How long a request waits for a token before answering 950301.
const READER_WAIT: Duration = Duration::from_secs(15);
/// After a check handed the same token back (the rejection was about one call, not the
/// token), further rejections of that token are not re-checked for this long (design §9).
pub const RECHECK_QUIET: Duration = Duration::from_secs(60);

/// What a check of a token Fxiaoke rejected on one call found.
#[derive(Debug)]
pub enum Recheck {
    /// The token endpoint handed the same token back, or could not be asked: the rejection
    /// stands for that call alone, whose answer goes back as Fxiaoke gave it.
    Same,
    /// A new token came back: the call may be retried once with it.
    New(Arc<CorpToken>),
}

/// Whether Fxiaoke rejected a token of `style` with `code`: 20016 for both; 20005,
/// "accessToken missing or expired", in the OAuth style too (fxiaoke.md §2).
pub fn rejects(style: ApiStyle, code: crate::upstream::envelope::UpstreamCode) -> bool {
    use crate::upstream::envelope::UpstreamCode;
    code == UpstreamCode::TokenExpired
        || (style == ApiStyle::OAuth && code == UpstreamCode::Other(20005))
}

/// Where a corp's token endpoint is and how to call it: its settings (name, app id, secrets),
/// the deadlines and refresh point in force, and its base URL.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// The corp's configuration.
    pub cfg: CorpConfig,
    /// Its deadlines and refresh point (a reload changes them).
    pub timing: Arc<Timing>,
    /// Its base URL, without trailing slash.
    pub base: String,
}

/// A corp access token. `Debug` never shows the token itself.
#[derive(Debug, Clone)]
pub struct CorpToken {
    /// The `corpAccessToken`.
    pub access_token: Secret,
    /// The account it belongs to: the `corpId` (legacy) or the `ea` (OAuth).
    pub corp_id: String,
    /// When it was fetched.
    pub fetched_at: Instant,
    /// When it stops being accepted.
    pub expires_at: Instant,
    /// Unix ms when its fetch started: orders tokens across replicas.
    pub issued_ms: u64,
}

impl CorpToken {
    /// A token another replica fetched, placed on this process's clock.
    fn from_stored(t: StoredToken, clock: &dyn Clock) -> Self {
        let now = clock.now();
        let now_ms = clock.unix_ms();
        let at = |ms: u64| now + Duration::from_millis(ms.saturating_sub(now_ms));
        Self {
            access_token: Secret::new(t.token),
            corp_id: t.corp_id,
            fetched_at: now
                .checked_sub(Duration::from_millis(now_ms.saturating_sub(t.issued_ms)))
                .unwrap_or(now),
            expires_at: at(t.expires_ms),
            issued_ms: t.issued_ms,
        }
    }

    /// When its successor is due: once `fraction` (`refresh_at` in force) of the lifetime it
    /// had when fetched has passed.
    fn refresh_due(&self, fraction: f64) -> Instant {
        let life = self.expires_at.saturating_duration_since(self.fetched_at);
        self.fetched_at + life.mul_f64(fraction)
    }

    /// As stored for other replicas.
    fn to_stored(&self, clock: &dyn Clock) -> StoredToken {
        let now = clock.now();
        let now_ms = clock.unix_ms();
        let ms = |at: Instant| now_ms + at.saturating_duration_since(now).as_millis() as u64;
        StoredToken {
            token: self.access_token.expose().to_string(),
            corp_id: self.corp_id.clone(),
            issued_ms: self.issued_ms,
            expires_ms: ms(self.expires_at),
        }
    }
}

#[derive(Debug, Clone, Default)]
struct TokenState {
    token: Option<Arc<CorpToken>>,
    /// Fxiaoke rejected `token` on some call (20016, 20005): one check (a fetch) is due. The
    /// token stays in use meanwhile; one caller's rejection never stalls the others.
    suspect: bool,
    /// When a check last handed `token` back unchanged.
    confirmed_at: Option<Instant>,
    /// Completed fetch attempts, successful or not.
    attempts: u64,
    /// The last attempt failed, and why (free of secrets).
    last_error: Option<String>,
}

impl TokenState {
    fn usable(&self, now: Instant) -> Option<Arc<CorpToken>> {
        let t = self.token.as_ref()?;
        let margin = EXPIRY_MARGIN.min((t.expires_at - t.fetched_at) / 50);
        (now + margin < t.expires_at).then(|| t.clone())
    }
}

/// Hands out the corp's token; cheap to clone.
#[derive(Debug, Clone)]
pub struct TokenProvider {
    corp: String,
    flow: ApiStyle,
    state: watch::Receiver<TokenState>,
    shared: Arc<Shared>,
    clock: Arc<dyn Clock>,
}

#[derive(Debug)]
struct Shared {
    publish: watch::Sender<TokenState>,
    wake: Notify,
}

impl TokenProvider {
    /// Starts the refresher task of the corp's `flow` token, taking turns with other replicas
    /// through `store`. The legacy token is fetched at once (uploads need it and `/readyz`
    /// waits for it); the OAuth token when a call first needs it.
    pub fn spawn(
        endpoint: Endpoint,
        flow: ApiStyle,
        metrics: Metrics,
        store: Arc<dyn TokenStore>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        let (publish, state) = watch::channel(TokenState::default());
        let shared = Arc::new(Shared {
            publish,
            wake: Notify::new(),
        });
        let corp = endpoint.cfg.name.clone();
        let refresher = Refresher::new(
            endpoint,
            flow,
            metrics,
            shared.clone(),
            store,
            clock.clone(),
        );
        tokio::spawn(refresher.run(flow == ApiStyle::Legacy));
        Self {
            corp,
            flow,
            state,
            shared,
            clock,
        }
    }

    /// The refresh point changed (a reload): the refresher works out again when its next call
    /// is due. A provider that never fetched (an OAuth token nobody asked for) stays asleep.
    pub fn reschedule(&self) {
        if self.state.borrow().token.is_some() {
            self.shared.wake.notify_one();
        }
    }

    /// A usable token: the cached one, or the next one the refresher fetches.
    pub async fn get(&self) -> Result<Arc<CorpToken>, GatewayError> {
        let mut rx = self.state.clone();
        let seen_attempts = {
            let s = rx.borrow_and_update();
            if let Some(t) = s.usable(self.clock.now()) {
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
                if let Some(t) = s.usable(self.clock.now()) {
                    return Ok(t);
                }
                if s.attempts > seen_attempts {
                    return Err(self.no_token());
                }
            }
        };
        tokio::time::timeout(READER_WAIT, wait)
            .await
            .unwrap_or_else(|_| Err(self.no_token()))
    }

    /// Fxiaoke rejected `token` on one call: asks the refresher, single-flight, whether the
    /// token endpoint still hands out this token. Everyone keeps using it meanwhile. A token
    /// confirmed within `RECHECK_QUIET` is not asked about again.
    pub async fn recheck(&self, token: &Arc<CorpToken>) -> Recheck {
        let mut rx = self.state.clone();
        let now = self.clock.now();
        let seen_attempts = {
            let s = rx.borrow_and_update();
            match s.token.as_ref() {
                Some(cur) if cur.access_token != token.access_token => {
                    // Already replaced: retry with the successor.
                    return s.usable(now).map_or(Recheck::Same, Recheck::New);
                }
                None => return Recheck::Same,
                Some(_) => {}
            }
            if s.confirmed_at.is_some_and(|at| now < at + RECHECK_QUIET) {
                return Recheck::Same;
            }
            if s.suspect && s.last_error.is_some() {
                // The token endpoint is failing: don't queue behind its backoff.
                return Recheck::Same;
            }
            s.attempts
        };
        let asked = self.shared.publish.send_if_modified(|s| match &s.token {
            Some(cur) if cur.access_token == token.access_token && !s.suspect => {
                s.suspect = true;
                true
            }
            _ => false,
        });
        if asked {
            tracing::warn!(corp = %self.corp, flow = %self.flow, "Fxiaoke rejected the corp token on a call; checking it with the token endpoint");
        }
        self.shared.wake.notify_one();
        let wait = async {
            loop {
                if rx.changed().await.is_err() {
                    return Recheck::Same;
                }
                let s = rx.borrow_and_update();
                if s.attempts <= seen_attempts {
                    continue;
                }
                return match s.usable(self.clock.now()) {
                    Some(t) if t.access_token != token.access_token => Recheck::New(t),
                    _ => Recheck::Same,
                };
            }
        };
        tokio::time::timeout(READER_WAIT, wait)
            .await
            .unwrap_or(Recheck::Same)
    }

    /// Whether a usable token is held right now (`/readyz`).
    pub fn ready(&self) -> bool {
        self.state.borrow().usable(self.clock.now()).is_some()
    }

    /// Whether a token was obtained at least once since start (readiness: a Fxiaoke outage
    /// later makes callers wait for 950301, not the replica leave the Service).
    pub fn obtained(&self) -> bool {
        self.state.borrow().token.is_some()
    }

    /// Whether a token was ever asked for or fetched (a lazy flow nobody used is idle).
    pub fn in_use(&self) -> bool {
        let s = self.state.borrow();
        s.token.is_some() || s.attempts > 0
    }

    /// Its flow.
    pub fn flow(&self) -> ApiStyle {
        self.flow
    }

    /// Age of the current token, for `fxgate_token_age_seconds`.
    pub fn age(&self) -> Option<Duration> {
        let now = self.clock.now();
        self.state
            .borrow()
            .token
            .as_ref()
            .map(|t| now.saturating_duration_since(t.fetched_at))
    }

    fn no_token(&self) -> GatewayError {
        GatewayError::NoToken {
            corp: self.corp.clone(),
        }
    }
}
