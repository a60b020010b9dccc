//! `UpstreamBudget`: the corp's allowance at Fxiaoke (design §2, fxiaoke.md §5), taken before
//! every upstream call: at most `upstream_requests_per_20s` calls per interface in any 20 s (a
//! short wait is allowed, then 942902) and the optional daily call budget. The counting is the
//! quota store's (`QuotaStore::budget`), so replicas sharing Redis share one budget.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::clock::Clock;
use crate::error::GatewayError;
use crate::quota::{cst_day, BudgetAnswer, QuotaStore};

/// How long a request may wait, in all, for a slot in the corp's 20 s window before 942902.
const BUDGET_QUEUE_BOUND: Duration = Duration::from_secs(2);

/// The corp's allowance at Fxiaoke.
#[derive(Debug)]
pub struct UpstreamBudget {
    corp: String,
    per_20s: u32,
    daily: Option<u64>,
    clock: Arc<dyn Clock>,
    store: Arc<dyn QuotaStore>,
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
        store: Arc<dyn QuotaStore>,
    ) -> Self {
        Self {
            corp: corp.to_string(),
            per_20s,
            daily,
            clock,
            store,
            left: AtomicU64::new(u64::MAX),
        }
    }

    /// Takes one call on `interface`, waiting up to `BUDGET_QUEUE_BOUND` in all for the
    /// window: a request that loses the freed slot to another waits again, but never past the
    /// bound.
    pub async fn acquire(&self, interface: &str) -> Result<(), GatewayError> {
        let give_up = tokio::time::Instant::now() + BUDGET_QUEUE_BOUND;
        loop {
            let now = self.clock.unix_secs();
            let answer = self
                .store
                .budget(&self.corp, interface, self.per_20s, self.daily, now)
                .await
                .map_err(|_| GatewayError::QuotaStoreDown)?;
            match answer {
                BudgetAnswer::Taken(left) => {
                    if let Some(left) = left {
                        self.left.store(left, Ordering::Relaxed);
                    }
                    return Ok(());
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
        let limit = self.daily?;
        Some(match self.left.load(Ordering::Relaxed) {
            u64::MAX => limit,
            left => left,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::quota::memory::MemoryQuotas;

    #[tokio::test(start_paused = true)]
    async fn a_window_that_stays_full_is_waited_for_at_most_the_bound_in_all() {
        let clock = ManualClock::new(0);
        let store = Arc::new(MemoryQuotas::new(clock.clone()));
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
