//! The refresher: the one task per corp that calls the token endpoint. It
//!
//! * fetches at start, and again once `refresh_at` of the lifetime the token had when fetched
//!   (its `expiresIn`) has passed, so the call lands in Fxiaoke's new-token window;
//! * keeps a failed or same-token refresh from looping: exponential backoff, and never more
//!   than `MAX_CALLS_PER_MINUTE` calls in any 60 s;
//! * keeps serving the old token while it is valid, so only its expiry makes `/readyz` fail;
//! * on `recheck` (an upstream 20016 or 20005 on some call) fetches once, the token staying in
//!   use meanwhile; the same token handed back means the rejection was about that call, and
//!   it is marked confirmed rather than fetched again (fxiaoke.md §1: don't loop);
//! * takes turns with other replicas through the `TokenStore`: adopts a newer stored token,
//!   else takes the turn (a lease), else waits for the holder's token.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::Instrument as _;

use super::endpoint::{self, Fetched};
use super::store::{StoredToken, TokenStore, Turn};
use super::{ApiStyle, CorpToken, Endpoint, Shared, TokenState};
use crate::clock::Clock;
use crate::config::{CorpConfig, Secret};
use crate::metrics::{Metrics, RefreshResult};
use crate::upstream::envelope::{Envelope, UpstreamCode};
use crate::upstream::timing::Timing;
use crate::upstream::transport::{self, HttpClient};

/// Fxiaoke allows 10 token calls a minute; one is kept in reserve for clock skew.
const MAX_CALLS_PER_MINUTE: usize = 9;
/// First retry delay after a failed fetch; doubles up to `MAX_BACKOFF`.
const MIN_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// How often a replica waiting on another's refresh looks for its token.
const SHARED_POLL: Duration = Duration::from_millis(50);
/// How long a replica waits on another's refresh before trying again itself.
const TURN_WAIT: Duration = Duration::from_secs(12);

pub(super) struct Refresher {
    cfg: CorpConfig,
    /// Deadlines and the refresh point in force (a reload changes them).
    timing: Arc<Timing>,
    flow: ApiStyle,
    base: String,
    client: HttpClient,
    metrics: Metrics,
    shared: Arc<Shared>,
    store: Arc<dyn TokenStore>,
    clock: Arc<dyn Clock>,
    /// This process's own token calls in the last minute.
    calls: VecDeque<Instant>,
    backoff: Duration,
    /// Earliest next call after a failure or a same-token answer.
    not_before: Instant,
}

/// What the turn-taking decided.
enum Decision {
    /// Another replica's token was taken over; no call needed.
    Adopted,
    /// This replica fetches, holding the turn until its token is shared.
    Fetch(Turn),
    /// All replicas together used the minute's calls: try again then.
    Wait(Duration),
}

impl Refresher {
    pub(super) fn new(
        endpoint: Endpoint,
        flow: ApiStyle,
        metrics: Metrics,
        shared: Arc<Shared>,
        store: Arc<dyn TokenStore>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        // Token calls get their own connection each time (at most 9 a minute): a pooled
        // connection the server has just closed would fail the call for nothing.
        let Endpoint { cfg, timing, base } = endpoint;
        let client = transport::unpooled(timing.clone(), &transport::Egress::of(&cfg));
        let not_before = clock.now();
        Self {
            cfg,
            timing,
            flow,
            base,
            client,
            metrics,
            shared,
            store,
            clock,
            calls: VecDeque::new(),
            backoff: MIN_BACKOFF,
            not_before,
        }
    }

    /// Runs until every provider is gone; `eager`: fetch at once, else when first asked.
    pub(super) async fn run(mut self, eager: bool) {
        if !eager {
            tokio::select! {
                _ = self.shared.wake.notified() => {}
                // Never asked for, and every provider gone: nothing left to wait for.
                _ = self.shared.publish.closed() => return,
            }
        }
        loop {
            let state = self.shared.publish.borrow().clone();
            let due = self.due(&state);
            if self.clock.now() < due {
                tokio::select! {
                    _ = self.clock.sleep_until(due) => {}
                    // A reader or an invalidation: recompute what is due.
                    _ = self.shared.wake.notified() => continue,
                }
            }
            // Nobody else holds the channel once every provider is gone: stop.
            if self.shared.publish.receiver_count() == 0 {
                return;
            }
            let turn = match self.decide(&state).await {
                Decision::Adopted => {
                    self.succeeded();
                    continue;
                }
                Decision::Wait(d) => {
                    self.not_before = self.clock.now() + d;
                    continue;
                }
                Decision::Fetch(turn) => turn,
            };
            self.attempt(&state).await;
            drop(turn);
        }
    }

    /// When the next call is due: the token's refresh time (or now, with no usable token),
    /// after any backoff, within the calls-per-minute limit.
    fn due(&mut self, state: &TokenState) -> Instant {
        let now = self.clock.now();
        let due = match (&state.token, state.usable(now)) {
            // From the refresh point in force, so a reload that moves it reschedules this
            // token too.
            (Some(t), Some(_)) if !state.suspect => {
                t.refresh_due(self.timing.refresh_at()).max(self.not_before)
            }
            _ => self.not_before,
        };
        due.max(rate_slot(&mut self.calls, now))
    }

    fn succeeded(&mut self) {
        self.backoff = MIN_BACKOFF;
        self.not_before = self.clock.now();
    }

    /// The next call waits `backoff` from the start of the attempt that failed (measured from
    /// its start, not its answer, so the schedule does not drift with the endpoint's latency).
    fn back_off(&mut self, started: Instant) {
        self.not_before = started + self.backoff;
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
    }

    fn count(&self, result: RefreshResult) {
        self.metrics
            .token
            .refresh
            .with_label_values(&[&self.cfg.name, self.flow.label(), result.as_str()])
            .inc();
    }

    /// One call to the token endpoint, and what follows from its answer.
    async fn attempt(&mut self, state: &TokenState) {
        let started = self.clock.now();
        self.calls.push_back(started);
        let issued_ms = self.clock.unix_ms();
        // A trace of its own: one fetch serves every request that waits for it.
        let span = tracing::info_span!(
            "token_fetch",
            otel.kind = "client",
            otel.status_code = tracing::field::Empty,
            url.path = self.flow.token_path(),
            fxgate.corp = self.cfg.name.as_str(),
            fxgate.token_flow = self.flow.label(),
        );
        let fetched = self.fetch().instrument(span.clone()).await;
        if matches!(fetched, Fetched::Failed(_)) {
            span.record("otel.status_code", "ERROR");
        }
        drop(span);
        match fetched {
            Fetched::Token {
                token,
                corp_id,
                expires_in,
            } => {
                self.took(state, started, issued_ms, token, corp_id, expires_in)
                    .await
            }
            Fetched::Failed(why) => {
                self.count(RefreshResult::Error);
                tracing::warn!(corp = %self.cfg.name, flow = %self.flow, error = %why, retry_in_ms = self.backoff.as_millis() as u64, "corp token fetch failed");
                self.back_off(started);
                self.shared.publish.send_modify(|s| {
                    s.attempts += 1;
                    s.last_error = Some(why);
                    // A suspect token stays in use (and suspect: the check is retried).
                });
            }
        }
    }

    /// A token came back: the same one (a check passed, or Fxiaoke's same-token window) or a
    /// new one, shared and published.
    async fn took(
        &mut self,
        state: &TokenState,
        started: Instant,
        issued_ms: u64,
        token: String,
        corp_id: String,
        expires_in: Duration,
    ) {
        let same = state
            .token
            .as_ref()
            .is_some_and(|c| c.access_token.expose() == token);
        if same && state.suspect {
            // The token endpoint stands by it: the rejection was about one call.
            self.count(RefreshResult::SameToken);
            tracing::info!(corp = %self.cfg.name, flow = %self.flow, "the token endpoint handed back the rejected token; the rejection was about that call");
            self.succeeded();
            let now = self.clock.now();
            self.shared.publish.send_modify(|s| {
                s.suspect = false;
                s.confirmed_at = Some(now);
                s.attempts += 1;
                s.last_error = None;
            });
            return;
        }
        if same {
            // Still inside Fxiaoke's same-token window: try again later, the old
            // token stays in service meanwhile.
            self.count(RefreshResult::SameToken);
            self.back_off(started);
            self.shared.publish.send_modify(|s| s.attempts += 1);
            return;
        }
        let token = CorpToken {
            access_token: Secret::new(token),
            corp_id,
            fetched_at: started,
            expires_at: started + expires_in,
            issued_ms,
        };
        self.count(RefreshResult::Ok);
        self.share(&token).await;
        tracing::info!(corp = %self.cfg.name, flow = %self.flow, expires_in_s = expires_in.as_secs(), same_token = same, "corp token fetched");
        self.succeeded();
        self.publish(token);
    }

    fn publish(&self, token: CorpToken) {
        self.shared.publish.send_modify(|s| {
            s.token = Some(Arc::new(token));
            s.suspect = false;
            s.confirmed_at = None;
            s.attempts += 1;
            s.last_error = None;
        });
    }

    /// Decides, with the other replicas, who fetches: adopts a token another replica stored
    /// if it is newer than ours (and not the one Fxiaoke rejected), else takes the turn, else
    /// waits for the holder's token, taking over if the holder's turn lapses.
    async fn decide(&self, state: &TokenState) -> Decision {
        let give_up = tokio::time::Instant::now() + TURN_WAIT;
        loop {
            if self.adopt(state).await {
                return Decision::Adopted;
            }
            if let Ok(Some(turn)) = self.store.try_turn().await {
                return match self.store.take_call_slot(MAX_CALLS_PER_MINUTE).await {
                    Ok(Some(wait)) => Decision::Wait(wait),
                    _ => Decision::Fetch(turn),
                };
            }
            // Another replica is fetching: its token lands in the store, or its turn lapses.
            loop {
                if tokio::time::Instant::now() > give_up {
                    // The holder keeps renewing without producing a token: don't starve.
                    return Decision::Wait(Duration::from_secs(1));
                }
                tokio::time::sleep(SHARED_POLL).await;
                let stored = self.store.read().await.ok().flatten();
                if stored.is_some_and(|t| self.adoptable(&t, state)) {
                    break;
                }
                if !self.store.turn_taken().await.unwrap_or(false) {
                    break;
                }
            }
        }
    }

    /// Takes over the stored token if it should replace ours.
    async fn adopt(&self, state: &TokenState) -> bool {
        let Ok(Some(stored)) = self.store.read().await else {
            return false;
        };
        if !self.adoptable(&stored, state) {
            return false;
        }
        let token = CorpToken::from_stored(stored, self.clock.as_ref());
        tracing::info!(corp = %self.cfg.name, flow = %self.flow, "corp token taken over from the shared store");
        self.count(RefreshResult::Shared);
        self.publish(token);
        true
    }

    /// Whether a stored token should replace the one this replica holds.
    fn adoptable(&self, stored: &StoredToken, state: &TokenState) -> bool {
        let now = self.clock.unix_ms();
        let lifetime = stored.expires_ms.saturating_sub(stored.issued_ms);
        let margin = (super::EXPIRY_MARGIN.as_millis() as u64).min(lifetime / 50);
        if stored.expires_ms <= now + margin {
            return false;
        }
        match &state.token {
            None => true,
            Some(cur) if cur.access_token.expose() == stored.token => false,
            // Ours was rejected by Fxiaoke: any other live token is better.
            Some(_) if state.suspect => true,
            Some(cur) => stored.issued_ms > cur.issued_ms,
        }
    }

    /// Writes a freshly fetched token to the store, unless a newer one is already there.
    async fn share(&self, token: &CorpToken) {
        let stored = token.to_stored(self.clock.as_ref());
        match self.store.write_if_newer(&stored).await {
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
        let req = match endpoint::request(&self.base, &self.cfg, self.flow) {
            Ok(r) => r,
            Err(why) => return Fetched::Failed(why),
        };
        // One deadline for the whole call, head and body: this task is the corp's only way to
        // a token, so an answer that stalls after its head must not hold it (issue 14).
        let deadline = tokio::time::Instant::now()
            + self.timing.connect_timeout()
            + self.timing.upstream_timeout().min(Duration::from_secs(30));
        let resp = match tokio::time::timeout_at(deadline, self.client.request(req)).await {
            Err(_) => return Fetched::Failed("token endpoint timed out".into()),
            Ok(Err(e)) => return Fetched::Failed(transport::transport_detail(&e)),
            Ok(Ok(r)) => r,
        };
        let status = resp.status();
        let env = match tokio::time::timeout_at(deadline, Envelope::read(resp.into_body())).await {
            Err(_) => return Fetched::Failed("token endpoint stalled in its answer's body".into()),
            Ok(Err(e)) => return Fetched::Failed(e.description()),
            Ok(Ok(e)) => e,
        };
        let code = env.code();
        self.metrics
            .upstream
            .requests
            .with_label_values(&[&self.cfg.name, self.flow.token_path(), code.label()])
            .inc();
        if code != UpstreamCode::Success {
            // errorMessage is Fxiaoke's text, free of our secrets; traceId helps their support.
            return Fetched::Failed(format!(
                "HTTP {status}, errorCode {}, errorMessage {:?}, traceId {:?}",
                code.label(),
                env.str_field("errorMessage").unwrap_or(""),
                env.trace_id().unwrap_or_default()
            ));
        }
        endpoint::parse(&env, self.flow)
    }
}

/// The earliest instant at which another call keeps us within `MAX_CALLS_PER_MINUTE`.
fn rate_slot(calls: &mut VecDeque<Instant>, now: Instant) -> Instant {
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
        let slot = rate_slot(&mut calls, now);
        assert_eq!(slot, now + Duration::from_secs(10));
        calls.pop_front();
        assert_eq!(rate_slot(&mut calls, now), now);
    }

    #[test]
    fn old_calls_leave_the_window() {
        let now = Instant::now();
        let mut calls: VecDeque<Instant> = (0..20).map(|_| now - Duration::from_secs(61)).collect();
        assert_eq!(rate_slot(&mut calls, now), now);
        assert!(calls.is_empty());
    }
}
