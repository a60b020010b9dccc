//! `MemoryBudget`: the corp's allowance at Fxiaoke counted in this process (`backend =
//! "memory"`, and each replica's own count while Redis is down and the budget fails open).
//! State is keyed by corp name, so it survives a reload.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::{BudgetAnswer, BudgetStore, Call, Guarded, WINDOW};
use crate::clock::{cst_day, Clock};
use crate::store::{entry, StoreFuture};

/// Interfaces of one corp with calls in the last 20 s, at most. Fxiaoke has a few hundred
/// interfaces; a caller spraying distinct paths meets this bound (942902 for a new one)
/// instead of growing the table without end (design §9: bounded tables).
const MAX_INTERFACES: usize = 4096;
/// Below this many windows a corp's table is not swept.
const SWEEP_FROM: usize = 64;

/// Budget state of this process; cheap to clone.
#[derive(Debug, Clone)]
pub struct MemoryBudget(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    clock: Arc<dyn Clock>,
    /// Call times in the last 20 s per corp and interface.
    windows: Mutex<HashMap<String, HashMap<String, VecDeque<Instant>>>>,
    /// (CST day, calls on it) per corp.
    daily: Mutex<HashMap<String, (u64, u64)>>,
}

impl MemoryBudget {
    /// Nothing counted yet, timed by `clock`.
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        Self(Arc::new(Inner {
            clock,
            windows: Mutex::default(),
            daily: Mutex::default(),
        }))
    }

    fn take_call(
        &self,
        corp: &str,
        interface: &str,
        per_20s: u32,
        daily: Option<u64>,
        unix_secs: u64,
    ) -> BudgetAnswer {
        let now = self.0.clock.now();
        let day = cst_day(unix_secs).0;
        let mut calls = self.0.daily.lock();
        let Some(today) = entry(&mut calls, corp) else {
            return BudgetAnswer::Window(WINDOW);
        };
        if today.0 != day {
            *today = (day, 0);
        }
        if daily.is_some_and(|limit| today.1 >= limit) {
            return BudgetAnswer::DaySpent;
        }
        let mut windows = self.0.windows.lock();
        let Some(corp_windows) = entry(&mut windows, corp) else {
            return BudgetAnswer::Window(WINDOW);
        };
        if !corp_windows.contains_key(interface) && !make_room(corp_windows, now) {
            return BudgetAnswer::Window(WINDOW);
        }
        let Some(w) = entry(corp_windows, interface) else {
            return BudgetAnswer::Window(WINDOW);
        };
        while w.front().is_some_and(|t| now.duration_since(*t) >= WINDOW) {
            w.pop_front();
        }
        if w.len() >= per_20s as usize {
            let wait = w.front().map_or(Duration::ZERO, |t| {
                (*t + WINDOW).saturating_duration_since(now)
            });
            return BudgetAnswer::Window(wait.max(Duration::from_millis(1)));
        }
        w.push_back(now);
        today.1 += 1;
        BudgetAnswer::Taken(daily.map(|limit| limit.saturating_sub(today.1)))
    }
}

/// Before a new interface's window is added: drops every window whose last call left the 20 s
/// window (it would allow a full window again anyway); false when `MAX_INTERFACES` are live.
fn make_room(windows: &mut HashMap<String, VecDeque<Instant>>, now: Instant) -> bool {
    if windows.len() >= SWEEP_FROM {
        windows.retain(|_, w| w.back().is_some_and(|t| now.duration_since(*t) < WINDOW));
    }
    windows.len() < MAX_INTERFACES
}

impl BudgetStore for MemoryBudget {
    /// The guard names a key of a shared store, which this process cannot see: the call is
    /// taken (the caller looks its file up itself).
    fn take<'a>(&'a self, c: Call<'a>, _guard: Option<&'a str>) -> StoreFuture<'a, Guarded> {
        let answer = self.take_call(c.corp, c.interface, c.per_20s, c.daily, c.unix_secs);
        Box::pin(std::future::ready(Ok(Guarded::Answer(answer))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;

    #[test]
    fn budget_windows_of_quiet_interfaces_are_dropped_and_live_ones_are_bounded() {
        let clock = ManualClock::new(0);
        let q = MemoryBudget::new(clock.clone());
        let windows = |q: &MemoryBudget| q.0.windows.lock().get("c").map_or(0, HashMap::len);
        for round in 0..5 {
            for i in 0..1000 {
                let path = format!("/cgi/x/{round}/{i}");
                let answer = q.take_call("c", &path, 100, None, 0);
                assert!(matches!(answer, BudgetAnswer::Taken(_)), "{path}");
            }
            clock.advance(WINDOW);
        }
        // Every round's paths went quiet before the next: only the last round's are kept.
        assert!(windows(&q) <= 1000, "{}", windows(&q));
        for i in 0..MAX_INTERFACES {
            q.take_call("c", &format!("/cgi/y/{i}"), 100, None, 0);
        }
        assert!(windows(&q) <= MAX_INTERFACES);
        let refused = q.take_call("c", "/cgi/one/more", 100, None, 0);
        assert!(matches!(refused, BudgetAnswer::Window(_)));
        // An interface already counted is still served.
        let known = q.take_call("c", "/cgi/y/1", 100, None, 0);
        assert!(matches!(known, BudgetAnswer::Taken(_)));
    }

    #[test]
    fn the_daily_budget_is_never_overshot_by_concurrent_callers() {
        let q = Arc::new(MemoryBudget::new(ManualClock::new(0)));
        let taken: usize = std::thread::scope(|s| {
            let workers: Vec<_> = (0..8)
                .map(|_| {
                    let q = q.clone();
                    s.spawn(move || {
                        (0..100)
                            .filter(|_| {
                                let answer = q.take_call("corp", "/x", 10_000, Some(50), 0);
                                matches!(answer, BudgetAnswer::Taken(_))
                            })
                            .count()
                    })
                })
                .collect();
            workers.into_iter().map(|w| w.join().unwrap_or(0)).sum()
        });
        assert_eq!(taken, 50);
    }

    #[test]
    fn upstream_window_is_per_interface_and_slides() {
        let clock = ManualClock::new(1_795_500_000_000);
        let q = MemoryBudget::new(clock.clone());
        let take = |i: &str| q.take_call("corp", i, 3, Some(5), clock.unix_secs());
        for _ in 0..3 {
            assert!(matches!(take("/media/upload"), BudgetAnswer::Taken(_)));
        }
        assert_eq!(take("/media/upload"), BudgetAnswer::Window(WINDOW));
        assert_eq!(take("/media/download"), BudgetAnswer::Taken(Some(1)));
        clock.advance(WINDOW);
        assert_eq!(take("/media/upload"), BudgetAnswer::Taken(Some(0)));
        assert_eq!(take("/media/delete"), BudgetAnswer::DaySpent);
    }
}
