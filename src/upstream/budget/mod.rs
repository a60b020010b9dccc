//! `UpstreamBudget`: the corp's allowance at Fxiaoke (design §2, fxiaoke.md §5), taken before
//! every upstream call: at most `upstream_requests_per_20s` calls per interface in any 20 s (a
//! short wait is allowed, then 942902) and the optional daily call budget. A `BudgetStore`
//! counts: `memory` (this process) or `redis` (one budget for every replica, behind
//! `store::FailOver` with `quota_fail_mode`). Not a caller's quota: the corp's, shared by all
//! its callers.

pub mod memory;
pub mod redis;

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::clock::{cst_day, Clock};
use crate::error::GatewayError;
use crate::store::{FailOver, StoreFuture};

/// Fxiaoke's per-interface window.
pub const WINDOW: Duration = Duration::from_secs(20);

/// What the budget store said.
#[derive(Debug, PartialEq, Eq)]
pub enum BudgetAnswer {
    /// One call taken; calls left today when a daily budget is set.
    Taken(Option<u64>),
    /// The 20 s window is full for this long.
    Window(Duration),
    /// Today's budget is spent.
    DaySpent,
}

/// What a guarded take said.
#[derive(Debug, PartialEq, Eq)]
pub enum Guarded {
    /// The guard held nothing: the budget's answer.
    Answer(BudgetAnswer),
    /// The guard's value: nothing was taken.
    Held(String),
}

/// One call to count: on `interface` of `corp`, at most `per_20s` in any 20 s and at most
/// `daily` on the CST day of `unix_secs`.
#[derive(Debug, Clone, Copy)]
pub struct Call<'a> {
    /// The corp.
    pub corp: &'a str,
    /// The interface (path): each has its own 20 s window.
    pub interface: &'a str,
    /// Calls allowed in any 20 s.
    pub per_20s: u32,
    /// Calls allowed on one CST day; unlimited when `None`.
    pub daily: Option<u64>,
    /// Now, for the CST day.
    pub unix_secs: u64,
}

/// Where the corp's calls are counted. `Err` only when the store itself failed.
pub trait BudgetStore: Send + Sync + std::fmt::Debug {
    /// Takes `call`, unless `guard` (a key of the same store: a dedupe entry, say) holds a
    /// value: then nothing is taken and the value is the answer, in the same round trip. A
    /// store that cannot see such keys (this process's own) takes the call whatever the guard.
    fn take<'a>(&'a self, call: Call<'a>, guard: Option<&'a str>) -> StoreFuture<'a, Guarded>;
}

/// Redis first; a failure answers per the fail mode (this replica's own count, or not at all).
impl BudgetStore for FailOver<dyn BudgetStore> {
    fn take<'a>(&'a self, call: Call<'a>, guard: Option<&'a str>) -> StoreFuture<'a, Guarded> {
        Box::pin(self.run(move |s| s.take(call, guard)))
    }
}

/// How long a request may wait, in all, for a slot in the corp's 20 s window before 942902.
const BUDGET_QUEUE_BOUND: Duration = Duration::from_secs(2);

/// `daily` when no daily budget is set.
const NO_DAILY: u64 = u64::MAX;
/// `left` before the store has said.
const UNKNOWN: u64 = u64::MAX;

/// The corp's allowance at Fxiaoke. Its limits are live: a reload sets them
/// (`set_limits`) and the next call is held to the new ones.
#[derive(Debug)]
pub struct UpstreamBudget {
    corp: String,
    per_20s: AtomicU32,
    /// The daily budget (`NO_DAILY`: none).
    daily: AtomicU64,
    clock: Arc<dyn Clock>,
    store: Arc<dyn BudgetStore>,
    /// Calls left today as the store last said (`u64::MAX`: not yet known).
    left: AtomicU64,
}

impl UpstreamBudget {
    /// `per_20s` calls per interface per 20 s and `daily` calls a day for `corp`, counted in
    /// `store`.
    pub fn new(
        corp: &str,
        per_20s: u32,
        daily: Option<u64>,
        clock: Arc<dyn Clock>,
        store: Arc<dyn BudgetStore>,
    ) -> Self {
        Self {
            corp: corp.to_string(),
            per_20s: AtomicU32::new(per_20s),
            daily: AtomicU64::new(daily.unwrap_or(NO_DAILY)),
            clock,
            store,
            left: AtomicU64::new(UNKNOWN),
        }
    }

    fn daily(&self) -> Option<u64> {
        Some(self.daily.load(Ordering::Relaxed)).filter(|d| *d != NO_DAILY)
    }

    /// New limits (a reload): the next call is held to them, and what is left today is the
    /// new daily budget less today's use, never a fresh budget.
    pub fn set_limits(&self, per_20s: u32, daily: Option<u64>) {
        let before = self.daily();
        self.per_20s.store(per_20s, Ordering::Relaxed);
        self.daily
            .store(daily.unwrap_or(NO_DAILY), Ordering::Relaxed);
        let left = self.left.load(Ordering::Relaxed);
        let used = before
            .filter(|_| left != UNKNOWN)
            .map(|b| b.saturating_sub(left));
        let now_left = match (daily, used) {
            (Some(limit), Some(used)) => limit.saturating_sub(used),
            // Today's use is not known yet (no call since the start, or no budget before):
            // the next call's answer from the store says.
            _ => UNKNOWN,
        };
        self.left.store(now_left, Ordering::Relaxed);
    }

    /// Takes one call on `interface`, waiting up to `BUDGET_QUEUE_BOUND` in all for the
    /// window: a request that loses the freed slot to another waits again, but never past the
    /// bound.
    pub async fn acquire(&self, interface: &str) -> Result<(), GatewayError> {
        self.acquire_unless(interface, None).await.map(|_| ())
    }

    /// As `acquire`, unless `guard` holds a value in the store (a file recorded already): then
    /// nothing is taken and the value comes back (`Ok(Some)`), in the same round trip.
    pub async fn acquire_unless(
        &self,
        interface: &str,
        guard: Option<&str>,
    ) -> Result<Option<String>, GatewayError> {
        let give_up = tokio::time::Instant::now() + BUDGET_QUEUE_BOUND;
        loop {
            let now = self.clock.unix_secs();
            let call = Call {
                corp: &self.corp,
                interface,
                per_20s: self.per_20s.load(Ordering::Relaxed),
                daily: self.daily(),
                unix_secs: now,
            };
            let answer = self
                .store
                .take(call, guard)
                .await
                .map_err(|_| GatewayError::QuotaStoreDown)?;
            let answer = match answer {
                Guarded::Held(value) => return Ok(Some(value)),
                Guarded::Answer(a) => a,
            };
            match answer {
                BudgetAnswer::Taken(left) => {
                    if let Some(left) = left {
                        self.left.store(left, Ordering::Relaxed);
                    }
                    return Ok(None);
                }
                BudgetAnswer::Window(wait) if tokio::time::Instant::now() + wait <= give_up => {
                    tokio::time::sleep(wait).await;
                }
                BudgetAnswer::Window(wait) => {
                    return Err(GatewayError::UpstreamBudget {
                        retry_after: wait,
                        daily: false,
                        upstream_code: None,
                    })
                }
                BudgetAnswer::DaySpent => {
                    self.left.store(0, Ordering::Relaxed);
                    return Err(GatewayError::UpstreamBudget {
                        retry_after: Duration::from_secs(cst_day(now).1),
                        daily: true,
                        upstream_code: None,
                    });
                }
            }
        }
    }

    /// Calls left today, when a daily budget is set.
    pub fn remaining_today(&self) -> Option<u64> {
        let limit = self.daily()?;
        Some(match self.left.load(Ordering::Relaxed) {
            UNKNOWN => limit,
            left => left.min(limit),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::memory::MemoryBudget;
    use super::*;
    use crate::clock::ManualClock;

    #[tokio::test]
    async fn a_raised_daily_budget_counts_todays_use_and_applies_at_once() {
        let clock = ManualClock::new(0);
        let store = Arc::new(MemoryBudget::new(clock.clone()));
        let budget = UpstreamBudget::new("c", 100, Some(5), clock.clone(), store);
        for _ in 0..5 {
            budget.acquire("/x").await.expect("within the day's 5");
        }
        assert_eq!(budget.remaining_today(), Some(0));
        assert!(budget.acquire("/x").await.is_err());
        budget.set_limits(100, Some(1000));
        assert_eq!(
            budget.remaining_today(),
            Some(995),
            "the new limit less today's use"
        );
        budget
            .acquire("/x")
            .await
            .expect("the raised budget applies to the next call");
        assert_eq!(budget.remaining_today(), Some(994));
    }

    #[tokio::test(start_paused = true)]
    async fn a_window_that_stays_full_is_waited_for_at_most_the_bound_in_all() {
        let clock = ManualClock::new(0);
        let store = Arc::new(MemoryBudget::new(clock.clone()));
        let budget = UpstreamBudget::new("c", 1, None, clock.clone(), store);
        budget
            .acquire("/media/upload")
            .await
            .expect("the first call");
        // One second before the slot frees, with the store's clock standing still: every
        // answer is "wait 1 s", as it is for a request that keeps losing the freed slot.
        clock.advance(Duration::from_secs(19));
        let started = tokio::time::Instant::now();
        let waited = tokio::time::timeout(Duration::from_secs(60), budget.acquire("/media/upload"))
            .await
            .expect("acquire gives up by itself");
        assert!(matches!(
            waited,
            Err(GatewayError::UpstreamBudget { daily: false, .. })
        ));
        assert!(
            started.elapsed() <= BUDGET_QUEUE_BOUND,
            "{:?}",
            started.elapsed()
        );
    }
}
