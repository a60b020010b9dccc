//! Per-caller quotas and the corp's upstream budget (design §2, §4 step 2), with an injectable
//! `Clock` so the arithmetic is tested without sleeping.
//!
//! * `RateLimit`: GCRA; `requests_per_minute` may arrive at once, then one per 60 s / rpm.
//! * concurrency: a semaphore per caller; the permit lives as long as the request.
//! * `DailyBytes`: bytes per calendar day (Asia/Shanghai, UTC+8, where Fxiaoke's quotas reset),
//!   reserved by `Content-Length` before the body is read, grown as a chunked body flows,
//!   settled to the file's real size on success and refunded on failure or a dedupe hit.
//! * `UpstreamBudget`: at most `upstream_requests_per_20s` calls per interface in any 20 s
//!   (a short wait is allowed, then 942902) and the optional daily call budget.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

pub mod shared;

use shared::{BudgetAnswer, SharedQuotas};

use crate::config::ClientConfig;
use crate::error::GatewayError;

/// Fxiaoke's daily quotas reset at 00:00 China Standard Time (UTC+8, no DST).
const CST_OFFSET_SECS: u64 = 8 * 3600;
const DAY: u64 = 86_400;
/// How long a request may wait for a slot in the corp's 20 s window before 942902.
const BUDGET_QUEUE_BOUND: Duration = Duration::from_secs(2);
const WINDOW: Duration = Duration::from_secs(20);

/// Time, injectable.
pub trait Clock: Send + Sync + fmt::Debug {
    /// Monotonic now.
    fn now(&self) -> Instant;
    /// Seconds since the Unix epoch (for calendar days).
    fn unix_secs(&self) -> u64;
}

/// The real clock.
#[derive(Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
    fn unix_secs(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    }
}

/// The CST calendar day of `unix_secs`, and the seconds until the next one starts.
pub fn cst_day(unix_secs: u64) -> (u64, u64) {
    let shifted = unix_secs + CST_OFFSET_SECS;
    (shifted / DAY, DAY - shifted % DAY)
}

/// GCRA request-rate limiter.
#[derive(Debug)]
pub struct RateLimit {
    interval: Duration,
    tolerance: Duration,
    tat: Mutex<Option<Instant>>,
}

impl RateLimit {
    /// `per_minute` requests a minute, all of which may come at once.
    pub fn per_minute(per_minute: u32) -> Self {
        let interval = Duration::from_secs(60) / per_minute.max(1);
        Self {
            interval,
            tolerance: interval * per_minute.max(1).saturating_sub(1),
            tat: Mutex::new(None),
        }
    }

    /// Takes one request, or says how long until one would pass.
    pub fn check(&self, now: Instant) -> Result<(), Duration> {
        let mut tat = self.tat.lock();
        let current = tat.map_or(now, |t| t.max(now));
        let earliest = current.checked_sub(self.tolerance).unwrap_or(now);
        if now < earliest {
            return Err(earliest - now);
        }
        *tat = Some(current + self.interval);
        Ok(())
    }
}

/// Bytes per CST day.
#[derive(Debug)]
pub struct DailyBytes {
    limit: u64,
    /// (day, bytes used or reserved on it)
    used: Mutex<(u64, u64)>,
}

impl DailyBytes {
    /// A budget of `limit` bytes a day.
    pub fn new(limit: u64) -> Self {
        Self {
            limit,
            used: Mutex::new((0, 0)),
        }
    }

    /// Reserves `n` bytes today, or says how long until tomorrow.
    pub fn reserve(&self, n: u64, unix_secs: u64) -> Result<u64, Duration> {
        let (day, to_midnight) = cst_day(unix_secs);
        let mut used = self.used.lock();
        if used.0 != day {
            *used = (day, 0);
        }
        if used.1.saturating_add(n) > self.limit {
            return Err(Duration::from_secs(to_midnight));
        }
        used.1 += n;
        Ok(day)
    }

    /// Returns `n` bytes reserved on `day` (nothing if that day is over).
    pub fn refund(&self, n: u64, day: u64) {
        let mut used = self.used.lock();
        if used.0 == day {
            used.1 = used.1.saturating_sub(n);
        }
    }

    /// (used today, limit).
    pub fn usage(&self, unix_secs: u64) -> (u64, u64) {
        let used = self.used.lock();
        (
            if used.0 == cst_day(unix_secs).0 {
                used.1
            } else {
                0
            },
            self.limit,
        )
    }

    fn carry_from(&self, other: &DailyBytes) {
        *self.used.lock() = *other.used.lock();
    }
}

/// A caller's quota state. Survives reloads when the caller's config is unchanged.
#[derive(Debug)]
pub struct ClientQuota {
    /// The config it enforces.
    pub cfg: Arc<ClientConfig>,
    rate: Option<RateLimit>,
    concurrency: Option<Arc<Semaphore>>,
    bytes: Option<DailyBytes>,
}

impl ClientQuota {
    /// Fresh state for `cfg`; `previous` (same caller, changed limits) hands on today's bytes.
    pub fn new(cfg: Arc<ClientConfig>, previous: Option<&ClientQuota>) -> Self {
        let q = Self {
            rate: cfg.requests_per_minute.map(RateLimit::per_minute),
            concurrency: cfg
                .max_concurrent_uploads
                .map(|n| Arc::new(Semaphore::new(n as usize))),
            bytes: cfg.bytes_per_day.map(DailyBytes::new),
            cfg,
        };
        if let (Some(new), Some(old)) = (&q.bytes, previous.and_then(|p| p.bytes.as_ref())) {
            new.carry_from(old);
        }
        q
    }

    fn reject(&self, kind: &'static str, retry_after: Duration) -> GatewayError {
        GatewayError::QuotaExceeded {
            kind,
            retry_after: retry_after.max(Duration::from_secs(1)),
        }
    }

    /// Request rate: global in Redis when shared, else (or with Redis down and failing open)
    /// this replica's own.
    pub async fn check_rate(
        &self,
        clock: &dyn Clock,
        shared: Option<&SharedQuotas>,
    ) -> Result<(), GatewayError> {
        let (Some(rate), Some(rpm)) = (&self.rate, self.cfg.requests_per_minute) else {
            return Ok(());
        };
        if let Some(sh) = shared {
            match sh.rate(&self.cfg.name, rpm).await {
                Ok(r) => return r.map_err(|d| self.reject("requests_per_minute", d)),
                Err(_) if !sh.fail_open => return Err(GatewayError::QuotaStoreDown),
                Err(_) => {}
            }
        }
        rate.check(clock.now())
            .map_err(|d| self.reject("requests_per_minute", d))
    }

    /// A concurrent-upload slot, held until dropped.
    pub async fn acquire_upload(
        &self,
        shared: Option<&SharedQuotas>,
    ) -> Result<Option<UploadSlot>, GatewayError> {
        let (Some(sem), Some(max)) = (&self.concurrency, self.cfg.max_concurrent_uploads) else {
            return Ok(None);
        };
        let full = || self.reject("max_concurrent_uploads", Duration::from_secs(1));
        if let Some(sh) = shared {
            match sh.acquire_slot(&self.cfg.name, max).await {
                Ok(Some(lease)) => return Ok(Some(UploadSlot::Shared(lease))),
                Ok(None) => return Err(full()),
                Err(_) if !sh.fail_open => return Err(GatewayError::QuotaStoreDown),
                Err(_) => {}
            }
        }
        sem.clone()
            .try_acquire_owned()
            .map(|p| Some(UploadSlot::Local(p)))
            .map_err(|_| full())
    }

    /// A byte ticket with `announced` bytes reserved up front.
    pub async fn bytes_ticket(
        self: &Arc<Self>,
        announced: Option<u64>,
        clock: Arc<dyn Clock>,
        shared: Option<SharedQuotas>,
    ) -> Result<BytesTicket, GatewayError> {
        let mut ticket = BytesTicket {
            quota: self.clone(),
            clock,
            shared,
            local: Reservation::default(),
            remote: Reservation::default(),
            settled: false,
        };
        if let Some(n) = announced {
            ticket.reserve(n).await?;
        }
        Ok(ticket)
    }

    /// JSON for `/admin/clients`: usage across replicas when shared and Redis answers.
    pub async fn usage(
        &self,
        clock: &dyn Clock,
        shared: Option<&SharedQuotas>,
    ) -> serde_json::Value {
        let c = &self.cfg;
        let mut in_flight = match (&self.concurrency, c.max_concurrent_uploads) {
            (Some(s), Some(max)) => Some(max as u64 - s.available_permits() as u64),
            _ => None,
        };
        let mut bytes_today = self.bytes.as_ref().map(|b| b.usage(clock.unix_secs()).0);
        if let Some(sh) = shared {
            if in_flight.is_some() {
                if let Ok(n) = sh.slots_in_use(&c.name).await {
                    in_flight = in_flight.map(|local| local + n);
                }
            }
            if bytes_today.is_some() {
                if let Ok(n) = sh.bytes_today(&c.name, clock.unix_secs()).await {
                    bytes_today = bytes_today.map(|local| local + n);
                }
            }
        }
        serde_json::json!({
            "name": c.name,
            "corp": c.corp,
            "auth": if c.key_sha256.is_some() { "key" } else { "certificate" },
            "routes": c.routes,
            "limits": {
                "requests_per_minute": c.requests_per_minute,
                "max_concurrent_uploads": c.max_concurrent_uploads,
                "bytes_per_day": c.bytes_per_day,
                "max_file_bytes": c.max_file_bytes,
            },
            "usage": {
                "uploads_in_flight": in_flight,
                "bytes_today": bytes_today,
            },
        })
    }
}

/// A concurrent-upload slot: this replica's semaphore, or a lease in Redis.
#[derive(Debug)]
pub enum UploadSlot {
    /// From this replica's semaphore.
    Local(OwnedSemaphorePermit),
    /// Leased in Redis, shared by replicas.
    Shared(crate::store::Lease),
}

/// Bytes reserved on one CST day.
#[derive(Debug, Default, Clone, Copy)]
struct Reservation {
    day: u64,
    bytes: u64,
}

impl Reservation {
    fn add(&mut self, day: u64, n: u64) {
        if self.bytes > 0 && day != self.day {
            // Midnight passed mid-upload: yesterday's part is gone with yesterday.
            self.bytes = 0;
        }
        self.day = day;
        self.bytes += n;
    }
}

/// The bytes an upload has reserved against its caller's daily budget — in Redis when shared,
/// in this replica's counter otherwise (or while Redis is down and quotas fail open). Dropped
/// unsettled (the upload failed, or was a dedupe hit) it refunds everything.
#[derive(Debug)]
pub struct BytesTicket {
    quota: Arc<ClientQuota>,
    clock: Arc<dyn Clock>,
    shared: Option<SharedQuotas>,
    local: Reservation,
    remote: Reservation,
    settled: bool,
}

impl BytesTicket {
    fn reserved(&self) -> u64 {
        self.local.bytes + self.remote.bytes
    }

    async fn reserve(&mut self, n: u64) -> Result<(), GatewayError> {
        let (Some(bytes), Some(limit)) = (&self.quota.bytes, self.quota.cfg.bytes_per_day) else {
            return Ok(());
        };
        let now = self.clock.unix_secs();
        if let Some(sh) = &self.shared {
            match sh.reserve_bytes(&self.quota.cfg.name, n, limit, now).await {
                Ok(Ok(day)) => {
                    self.remote.add(day, n);
                    return Ok(());
                }
                Ok(Err(wait)) => return Err(self.quota.reject("bytes_per_day", wait)),
                Err(_) if !sh.fail_open => return Err(GatewayError::QuotaStoreDown),
                Err(_) => {}
            }
        }
        match bytes.reserve(n, now) {
            Ok(day) => {
                self.local.add(day, n);
                Ok(())
            }
            Err(wait) => Err(self.quota.reject("bytes_per_day", wait)),
        }
    }

    /// Accounts for `total` file bytes seen so far, reserving more if the body outgrows what
    /// was reserved (chunked bodies reserve as they flow).
    pub async fn grow_to(&mut self, total: u64) -> Result<(), GatewayError> {
        let reserved = self.reserved();
        if total > reserved {
            let needed = total - reserved;
            // Reserve ahead in 1 MiB steps so a chunked body does not take the lock (or a
            // Redis round trip) per chunk; near the limit, exactly what is needed.
            if needed < 1 << 20 && self.reserve(1 << 20).await.is_ok() {
                return Ok(());
            }
            self.reserve(needed).await?;
        }
        Ok(())
    }

    /// The upload succeeded with `size` file bytes: keep those, refund the rest.
    pub fn settle(mut self, size: u64) {
        let excess = self.reserved().saturating_sub(size);
        // Give back from the shared reservation first: it is what other replicas see.
        let from_remote = excess.min(self.remote.bytes);
        let from_local = (excess - from_remote).min(self.local.bytes);
        self.settled = true;
        self.refund(
            Reservation {
                day: self.local.day,
                bytes: from_local,
            },
            Reservation {
                day: self.remote.day,
                bytes: from_remote,
            },
        );
    }

    fn refund(&self, local: Reservation, remote: Reservation) {
        if local.bytes > 0 {
            if let Some(bytes) = &self.quota.bytes {
                bytes.refund(local.bytes, local.day);
            }
        }
        if remote.bytes > 0 {
            if let (Some(sh), Ok(rt)) = (&self.shared, tokio::runtime::Handle::try_current()) {
                let (sh, name) = (sh.clone(), self.quota.cfg.name.clone());
                // Off the request path; with Redis down the bytes stay counted until midnight.
                rt.spawn(async move {
                    let _ = sh.refund_bytes(&name, remote.bytes, remote.day).await;
                });
            }
        }
    }
}

impl Drop for BytesTicket {
    fn drop(&mut self) {
        if !self.settled {
            self.refund(self.local, self.remote);
        }
    }
}

/// The corp's allowance at Fxiaoke.
#[derive(Debug)]
pub struct UpstreamBudget {
    per_20s: usize,
    windows: Mutex<HashMap<&'static str, VecDeque<Instant>>>,
    daily: Option<(u64, Mutex<(u64, u64)>)>,
    clock: Arc<dyn Clock>,
    /// The budget in Redis, shared by replicas, and the corp's name there.
    shared: Option<(SharedQuotas, String)>,
    /// Calls left today as Redis last said, for the gauge (`u64::MAX`: not yet known).
    shared_left: std::sync::atomic::AtomicU64,
}

impl UpstreamBudget {
    /// `per_20s` calls per interface per 20 s, and `daily` calls a day.
    pub fn new(per_20s: u32, daily: Option<u64>, clock: Arc<dyn Clock>) -> Self {
        Self {
            per_20s: per_20s as usize,
            windows: Mutex::default(),
            daily: daily.map(|d| (d, Mutex::new((0, 0)))),
            clock,
            shared: None,
            shared_left: std::sync::atomic::AtomicU64::new(u64::MAX),
        }
    }

    /// The same budget, kept in Redis for every replica of `corp`.
    pub fn shared(mut self, quotas: SharedQuotas, corp: &str) -> Self {
        self.shared = Some((quotas, corp.to_string()));
        self
    }

    /// One call from the shared budget; `None` when Redis failed and quotas fail open (the
    /// caller then uses this replica's own window).
    async fn take_shared(&self, interface: &'static str) -> Option<Result<(), GatewayError>> {
        let (sh, corp) = self.shared.as_ref()?;
        let daily = self.daily.as_ref().map(|(limit, _)| *limit);
        let answer = sh
            .budget(
                corp,
                interface,
                self.per_20s as u32,
                daily,
                self.clock.unix_secs(),
            )
            .await;
        Some(match answer {
            Ok(BudgetAnswer::Taken(left)) => {
                if let Some(left) = left {
                    self.shared_left
                        .store(left, std::sync::atomic::Ordering::Relaxed);
                }
                Ok(())
            }
            Ok(BudgetAnswer::Window(wait)) => Err(GatewayError::UpstreamBudget {
                retry_after: wait,
                daily: false,
                upstream_code: None,
            }),
            Ok(BudgetAnswer::DaySpent) => {
                self.shared_left
                    .store(0, std::sync::atomic::Ordering::Relaxed);
                Err(GatewayError::UpstreamBudget {
                    retry_after: Duration::from_secs(cst_day(self.clock.unix_secs()).1),
                    daily: true,
                    upstream_code: None,
                })
            }
            Err(_) if !sh.fail_open => Err(GatewayError::QuotaStoreDown),
            Err(_) => return None,
        })
    }

    /// Takes one call on `interface`, waiting up to `BUDGET_QUEUE_BOUND` for the window.
    pub async fn acquire(&self, interface: &'static str) -> Result<(), GatewayError> {
        loop {
            let taken = match self.take_shared(interface).await {
                Some(r) => r,
                None => self.try_acquire(interface),
            };
            match taken {
                Ok(()) => return Ok(()),
                Err(GatewayError::UpstreamBudget {
                    retry_after,
                    daily: false,
                    ..
                }) if retry_after <= BUDGET_QUEUE_BOUND => {
                    tokio::time::sleep(retry_after).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Takes one call now, or says when one would pass.
    pub fn try_acquire(&self, interface: &'static str) -> Result<(), GatewayError> {
        let now = self.clock.now();
        if let Some((limit, used)) = &self.daily {
            let (day, to_midnight) = cst_day(self.clock.unix_secs());
            let used = used.lock();
            if used.0 == day && used.1 >= *limit {
                return Err(GatewayError::UpstreamBudget {
                    retry_after: Duration::from_secs(to_midnight),
                    daily: true,
                    upstream_code: None,
                });
            }
        }
        {
            let mut windows = self.windows.lock();
            let w = windows.entry(interface).or_default();
            while w.front().is_some_and(|t| now.duration_since(*t) >= WINDOW) {
                w.pop_front();
            }
            if w.len() >= self.per_20s {
                let wait = w.front().map_or(Duration::ZERO, |t| {
                    (*t + WINDOW).saturating_duration_since(now)
                });
                return Err(GatewayError::UpstreamBudget {
                    retry_after: wait.max(Duration::from_millis(1)),
                    daily: false,
                    upstream_code: None,
                });
            }
            w.push_back(now);
        }
        if let Some((_, used)) = &self.daily {
            let (day, _) = cst_day(self.clock.unix_secs());
            let mut used = used.lock();
            if used.0 != day {
                *used = (day, 0);
            }
            used.1 += 1;
        }
        Ok(())
    }

    /// Calls left today, when a daily budget is set.
    pub fn remaining_today(&self) -> Option<u64> {
        let (limit, used) = self.daily.as_ref()?;
        let shared = self.shared_left.load(std::sync::atomic::Ordering::Relaxed);
        if self.shared.is_some() && shared != u64::MAX {
            return Some(shared);
        }
        let used = used.lock();
        let today = cst_day(self.clock.unix_secs()).0;
        Some(if used.0 == today {
            limit.saturating_sub(used.1)
        } else {
            *limit
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    /// A clock tests move by hand.
    #[derive(Debug)]
    struct FakeClock {
        start: Instant,
        offset_ms: AtomicU64,
        unix: AtomicU64,
    }

    impl FakeClock {
        fn new(unix: u64) -> Arc<Self> {
            Arc::new(Self {
                start: Instant::now(),
                offset_ms: AtomicU64::new(0),
                unix: AtomicU64::new(unix),
            })
        }
        fn advance(&self, d: Duration) {
            self.offset_ms
                .fetch_add(d.as_millis() as u64, Ordering::SeqCst);
            self.unix.fetch_add(d.as_secs(), Ordering::SeqCst);
        }
    }

    impl Clock for FakeClock {
        fn now(&self) -> Instant {
            self.start + Duration::from_millis(self.offset_ms.load(Ordering::SeqCst))
        }
        fn unix_secs(&self) -> u64 {
            self.unix.load(Ordering::SeqCst)
        }
    }

    #[test]
    fn gcra_allows_the_minute_at_once_then_one_per_interval() {
        let clock = FakeClock::new(0);
        let r = RateLimit::per_minute(6);
        for _ in 0..6 {
            assert!(r.check(clock.now()).is_ok());
        }
        let wait = r.check(clock.now()).unwrap_err();
        assert_eq!(wait, Duration::from_secs(10));
        clock.advance(Duration::from_secs(10));
        assert!(r.check(clock.now()).is_ok());
        assert!(r.check(clock.now()).is_err());
        clock.advance(Duration::from_secs(60));
        for _ in 0..6 {
            assert!(r.check(clock.now()).is_ok());
        }
    }

    #[test]
    fn cst_days_start_at_utc_16h() {
        // 2026-11-24T15:59:59Z is 23:59:59 CST; one second later a new CST day begins.
        let before = 1_795_535_999;
        let (d1, left) = cst_day(before);
        assert_eq!(left, 1);
        assert_eq!(cst_day(before + 1).0, d1 + 1);
    }

    #[tokio::test]
    async fn bytes_are_reserved_grown_settled_and_refunded() {
        let clock = FakeClock::new(1_795_500_000);
        let cfg = ClientConfig {
            name: "c".into(),
            key_sha256: None,
            cert_subject: Some("CN=c".into()),
            corp: "default".into(),
            requests_per_minute: None,
            bytes_per_day: Some(10 << 20),
            max_concurrent_uploads: None,
            max_file_bytes: None,
            routes: None,
        };
        let q = Arc::new(ClientQuota::new(Arc::new(cfg), None));
        let used = |q: &ClientQuota| {
            q.bytes
                .as_ref()
                .map(|b| b.usage(clock.unix_secs()).0)
                .unwrap()
        };
        // Announced 4 MiB, the file turned out 3 MiB: 3 MiB stay used.
        let t = q
            .bytes_ticket(Some(4 << 20), clock.clone(), None)
            .await
            .unwrap();
        t.settle(3 << 20);
        assert_eq!(used(&q), 3 << 20);
        // A failed upload refunds everything, chunked growth included.
        let mut t = q.bytes_ticket(None, clock.clone(), None).await.unwrap();
        t.grow_to(5 << 20).await.unwrap();
        assert_eq!(used(&q), 8 << 20);
        drop(t);
        assert_eq!(used(&q), 3 << 20);
        // Chunked growth reserves ahead, but never past the limit when what is needed fits.
        let mut t = q.bytes_ticket(None, clock.clone(), None).await.unwrap();
        t.grow_to((7 << 20) - 10).await.unwrap();
        t.grow_to(7 << 20).await.unwrap();
        assert!(t.grow_to((7 << 20) + 1).await.is_err());
        t.settle(7 << 20);
        assert_eq!(used(&q), 10 << 20);
        // Over the limit: refused with the time to CST midnight.
        let err = q
            .bytes_ticket(Some(1), clock.clone(), None)
            .await
            .unwrap_err();
        assert!(matches!(
            err,
            GatewayError::QuotaExceeded {
                kind: "bytes_per_day",
                ..
            }
        ));
        // Next CST day, fresh budget.
        clock.advance(Duration::from_secs(DAY));
        assert_eq!(used(&q), 0);
        assert!(q
            .bytes_ticket(Some(8 << 20), clock.clone(), None)
            .await
            .is_ok());
    }

    #[test]
    fn upstream_window_is_per_interface_and_slides() {
        let clock = FakeClock::new(1_795_500_000);
        let b = UpstreamBudget::new(3, Some(5), clock.clone());
        for _ in 0..3 {
            b.try_acquire("/media/upload").unwrap();
        }
        let err = b.try_acquire("/media/upload").unwrap_err();
        assert!(
            matches!(err, GatewayError::UpstreamBudget { daily: false, retry_after, .. } if retry_after == WINDOW)
        );
        b.try_acquire("/media/download").unwrap();
        clock.advance(WINDOW);
        b.try_acquire("/media/upload").unwrap();
        assert_eq!(b.remaining_today(), Some(0));
        let err = b.try_acquire("/media/delete").unwrap_err();
        assert!(matches!(
            err,
            GatewayError::UpstreamBudget { daily: true, .. }
        ));
    }
}
