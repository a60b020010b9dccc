//! Time, injected (style §10). Everything that decides by time how long a thing lives or when
//! it is due — quotas, the corp token's refresh schedule, lease renewals, the dedupe index's
//! trust period, the sandbox's token lifetimes — asks a `Clock` instead of the wall clock, so
//! tests move time by hand (`ManualClock`) instead of sleeping. Request deadlines (how long a
//! caller waits on a socket) stay on tokio's timer: they bound real waits.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::future::BoxFuture;
use tokio::sync::Notify;

/// Fxiaoke's daily quotas reset at 00:00 China Standard Time (UTC+8, no DST).
const CST_OFFSET_SECS: u64 = 8 * 3600;
const DAY: u64 = 86_400;

/// The CST calendar day of `unix_secs`, and the seconds until the next one starts: the day
/// that callers' byte quotas and the corp's daily call budget are counted on.
pub fn cst_day(unix_secs: u64) -> (u64, u64) {
    let shifted = unix_secs + CST_OFFSET_SECS;
    (shifted / DAY, DAY - shifted % DAY)
}

/// A source of time.
pub trait Clock: Send + Sync + fmt::Debug {
    /// Monotonic now.
    fn now(&self) -> Instant;
    /// Milliseconds since the Unix epoch (calendar days, and orders of tokens across replicas).
    fn unix_ms(&self) -> u64;
    /// Resolves once `now()` has reached `at`.
    fn sleep_until(&self, at: Instant) -> BoxFuture<'static, ()>;

    /// Seconds since the Unix epoch.
    fn unix_secs(&self) -> u64 {
        self.unix_ms() / 1000
    }
}

/// The process's own clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl SystemClock {
    /// The system clock, shared.
    pub fn shared() -> Arc<dyn Clock> {
        Arc::new(Self)
    }
}

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
    fn unix_ms(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
    }
    fn sleep_until(&self, at: Instant) -> BoxFuture<'static, ()> {
        Box::pin(tokio::time::sleep_until(at.into()))
    }
}

/// A clock that moves only when told (`advance`); sleepers wake when it passes their instant.
/// For tests, which then run in milliseconds whatever span of time they cover.
#[derive(Debug)]
pub struct ManualClock {
    start: Instant,
    unix_start_ms: u64,
    shared: Arc<Moving>,
}

/// What sleepers share with the clock: how far it has moved, and the news that it moved.
#[derive(Debug, Default)]
struct Moving {
    offset_ms: AtomicU64,
    moved: Notify,
}

impl Moving {
    fn offset(&self) -> Duration {
        Duration::from_millis(self.offset_ms.load(Ordering::SeqCst))
    }
}

impl ManualClock {
    /// A clock standing at `unix_ms` (its monotonic time starts at the real now).
    pub fn new(unix_ms: u64) -> Arc<Self> {
        Arc::new(Self {
            start: Instant::now(),
            unix_start_ms: unix_ms,
            shared: Arc::default(),
        })
    }

    /// A clock standing at the real time now.
    pub fn at_now() -> Arc<Self> {
        Self::new(SystemClock.unix_ms())
    }

    /// Moves time forward by `d` and wakes every sleeper whose instant has come.
    pub fn advance(&self, d: Duration) {
        self.shared
            .offset_ms
            .fetch_add(d.as_millis() as u64, Ordering::SeqCst);
        self.shared.moved.notify_waiters();
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Instant {
        self.start + self.shared.offset()
    }
    fn unix_ms(&self) -> u64 {
        self.unix_start_ms + self.shared.offset().as_millis() as u64
    }
    fn sleep_until(&self, at: Instant) -> BoxFuture<'static, ()> {
        let (start, shared) = (self.start, self.shared.clone());
        Box::pin(async move {
            loop {
                // Registered before the time is read, so an advance in between is not missed.
                let moved = shared.moved.notified();
                tokio::pin!(moved);
                moved.as_mut().enable();
                if start + shared.offset() >= at {
                    return;
                }
                moved.await;
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cst_days_start_at_utc_16h() {
        // 2026-11-24T15:59:59Z is 23:59:59 CST; one second later a new CST day begins.
        let before = 1_795_535_999;
        let (d1, left) = cst_day(before);
        assert_eq!(left, 1);
        assert_eq!(cst_day(before + 1).0, d1 + 1);
    }

    #[tokio::test]
    async fn sleepers_wake_when_the_clock_passes_them_and_not_before() {
        let clock = ManualClock::new(1_000);
        let at = clock.now() + Duration::from_secs(10);
        let mut sleeper = tokio::spawn(clock.sleep_until(at));
        clock.advance(Duration::from_secs(9));
        assert!(
            tokio::time::timeout(Duration::from_millis(20), &mut sleeper)
                .await
                .is_err(),
            "woke 1 s early"
        );
        clock.advance(Duration::from_secs(1));
        sleeper.await.unwrap();
        assert_eq!(clock.unix_ms(), 11_000);
        assert_eq!(clock.unix_secs(), 11);
    }
}
