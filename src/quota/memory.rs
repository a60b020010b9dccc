//! `MemoryQuotas`: caller quota state in this process (`backend = "memory"`, and each
//! replica's own counters while Redis is down and quotas fail open). State is keyed by caller
//! name, so it survives a reload: a caller whose `requests_per_minute` changed starts
//! a fresh rate window, everything else carries on.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use parking_lot::Mutex;

use super::{Held, QuotaStore, Reserved, StoreFuture, UploadSlot};
use crate::clock::{cst_day, Clock};
use crate::store::entry;

/// Quota state of this process; cheap to clone.
#[derive(Debug, Clone)]
pub struct MemoryQuotas(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    clock: Arc<dyn Clock>,
    /// GCRA theoretical arrival time per caller, with the rate it was computed for.
    rates: Mutex<HashMap<String, (u32, Option<Instant>)>>,
    slots: Arc<Mutex<HashMap<String, u64>>>,
    /// (CST day, bytes used or reserved on it) per caller.
    bytes: Mutex<HashMap<String, (u64, u64)>>,
}

/// Holds one of a caller's slots; dropping it frees the slot.
#[derive(Debug)]
pub struct CountedSlot {
    slots: Arc<Mutex<HashMap<String, u64>>>,
    client: String,
}

impl Drop for CountedSlot {
    fn drop(&mut self) {
        if let Some(n) = self.slots.lock().get_mut(&self.client) {
            *n = n.saturating_sub(1);
        }
    }
}

fn ready<'a, T: Send + 'a>(v: T) -> StoreFuture<'a, T> {
    Box::pin(std::future::ready(Ok(v)))
}

impl MemoryQuotas {
    /// Empty state, timed by `clock`.
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        Self(Arc::new(Inner {
            clock,
            rates: Mutex::default(),
            slots: Arc::default(),
            bytes: Mutex::default(),
        }))
    }

    /// GCRA: `per_minute` at once, then one per 60 s / `per_minute`.
    fn take_rate(&self, client: &str, per_minute: u32) -> Result<(), Duration> {
        let now = self.0.clock.now();
        let per_minute = per_minute.max(1);
        let interval = Duration::from_secs(60) / per_minute;
        let tolerance = interval * (per_minute - 1);
        let mut rates = self.0.rates.lock();
        let state = match rates.get_mut(client) {
            Some(s) if s.0 == per_minute => s,
            _ => {
                rates.insert(client.to_string(), (per_minute, None));
                rates.get_mut(client).ok_or(Duration::ZERO)?
            }
        };
        let current = state.1.map_or(now, |t| t.max(now));
        let earliest = current.checked_sub(tolerance).unwrap_or(now);
        if now < earliest {
            return Err(earliest - now);
        }
        state.1 = Some(current + interval);
        Ok(())
    }

    fn take_slot(&self, client: &str, max: u32) -> Option<UploadSlot> {
        let mut slots = self.0.slots.lock();
        let n = entry(&mut slots, client)?;
        if *n >= u64::from(max) {
            return None;
        }
        *n += 1;
        Some(UploadSlot::from(Held::Counted(CountedSlot {
            slots: self.0.slots.clone(),
            client: client.to_string(),
        })))
    }

    fn take_bytes(
        &self,
        client: &str,
        n: u64,
        limit: u64,
        unix_secs: u64,
    ) -> Result<u64, Duration> {
        let (day, to_midnight) = cst_day(unix_secs);
        let mut bytes = self.0.bytes.lock();
        let used = entry(&mut bytes, client).ok_or(Duration::from_secs(to_midnight))?;
        if used.0 != day {
            *used = (day, 0);
        }
        if used.1.saturating_add(n) > limit {
            return Err(Duration::from_secs(to_midnight));
        }
        used.1 += n;
        Ok(day)
    }
}

impl QuotaStore for MemoryQuotas {
    fn rate<'a>(&'a self, client: &'a str, rpm: u32) -> StoreFuture<'a, Result<(), Duration>> {
        ready(self.take_rate(client, rpm))
    }
    fn acquire_slot<'a>(
        &'a self,
        client: &'a str,
        max: u32,
    ) -> StoreFuture<'a, Option<UploadSlot>> {
        ready(self.take_slot(client, max))
    }
    fn slots_in_use<'a>(&'a self, client: &'a str) -> StoreFuture<'a, u64> {
        ready(self.0.slots.lock().get(client).copied().unwrap_or(0))
    }
    fn reserve_bytes<'a>(
        &'a self,
        client: &'a str,
        n: u64,
        limit: u64,
        unix_secs: u64,
    ) -> StoreFuture<'a, Result<Reserved, Duration>> {
        let by: Arc<dyn QuotaStore> = Arc::new(self.clone());
        ready(
            self.take_bytes(client, n, limit, unix_secs)
                .map(|day| Reserved { day, by }),
        )
    }
    fn refund_bytes(&self, client: &str, n: u64, day: u64) -> BoxFuture<'static, ()> {
        if let Some(used) = self.0.bytes.lock().get_mut(client) {
            if used.0 == day {
                used.1 = used.1.saturating_sub(n);
            }
        }
        Box::pin(std::future::ready(()))
    }
    fn bytes_today<'a>(&'a self, client: &'a str, unix_secs: u64) -> StoreFuture<'a, u64> {
        let today = cst_day(unix_secs).0;
        let used = self.0.bytes.lock().get(client).copied();
        ready(used.filter(|u| u.0 == today).map_or(0, |u| u.1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::config::ClientConfig;
    use crate::quota::Quotas;

    #[test]
    fn gcra_allows_the_minute_at_once_then_one_per_interval() {
        let clock = ManualClock::new(0);
        let q = MemoryQuotas::new(clock.clone());
        for _ in 0..6 {
            assert!(q.take_rate("c", 6).is_ok());
        }
        assert_eq!(q.take_rate("c", 6).unwrap_err(), Duration::from_secs(10));
        clock.advance(Duration::from_secs(10));
        assert!(q.take_rate("c", 6).is_ok());
        assert!(q.take_rate("c", 6).is_err());
        // Another limit (a reload changed it) starts afresh.
        assert!(q.take_rate("c", 100).is_ok());
        clock.advance(Duration::from_secs(60));
        for _ in 0..99 {
            assert!(q.take_rate("c", 100).is_ok());
        }
    }

    #[tokio::test]
    async fn an_upload_spanning_cst_midnight_is_charged_once() {
        // 23:59:58 CST.
        let clock = ManualClock::new(1_795_535_998_000);
        let store = MemoryQuotas::new(clock.clone());
        let quotas = Quotas::new(Arc::new(store.clone()), clock.clone());
        let mut cfg = crate::middleware::testing::caller("c");
        cfg.bytes_per_day = Some(100 << 20);
        let cfg = Arc::new(cfg);
        let used = |at: u64| {
            futures_util::FutureExt::now_or_never(store.bytes_today("c", at))
                .and_then(Result::ok)
                .unwrap_or(u64::MAX)
        };
        let mut t = quotas.bytes_ticket(&cfg, None).await.unwrap();
        t.grow_to(3 << 20).await.unwrap();
        clock.advance(Duration::from_secs(5));
        t.grow_to(8 << 20).await.unwrap();
        t.grow_to(9 << 20).await.unwrap();
        t.settle(9 << 20);
        // The 3 MiB before midnight were yesterday's; today has only the 6 MiB after it.
        assert_eq!(used(clock.unix_secs()), 6 << 20);
    }

    #[test]
    fn slots_are_counted_and_freed_on_drop() {
        let q = MemoryQuotas::new(ManualClock::new(0));
        let a = q.take_slot("c", 2);
        let b = q.take_slot("c", 2);
        assert!(a.is_some() && b.is_some());
        assert!(q.take_slot("c", 2).is_none());
        drop(a);
        assert!(q.take_slot("c", 2).is_some());
    }

    #[tokio::test]
    async fn bytes_are_reserved_grown_settled_and_refunded() {
        let clock = ManualClock::new(1_795_500_000_000);
        let store = MemoryQuotas::new(clock.clone());
        let quotas = Quotas::new(Arc::new(store.clone()), clock.clone());
        let cfg = Arc::new(ClientConfig {
            name: "c".into(),
            keys: Vec::new(),
            cert_subject: Some("CN=c".into()),
            corp: "default".into(),
            requests_per_minute: None,
            bytes_per_day: Some(10 << 20),
            max_concurrent_uploads: None,
            max_file_bytes: None,
            routes: None,
            api_style: crate::route::ApiStyle::Legacy,
            act_as: Vec::new(),
        });
        let today = || {
            futures_util::FutureExt::now_or_never(store.bytes_today("c", clock.unix_secs()))
                .and_then(Result::ok)
                .unwrap_or(u64::MAX)
        };
        // Announced 4 MiB, the file turned out 3 MiB: 3 MiB stay used.
        let t = quotas.bytes_ticket(&cfg, Some(4 << 20)).await.unwrap();
        t.settle(3 << 20);
        assert_eq!(today(), 3 << 20);
        // A failed upload refunds everything, chunked growth included.
        let mut t = quotas.bytes_ticket(&cfg, None).await.unwrap();
        t.grow_to(5 << 20).await.unwrap();
        assert_eq!(today(), 8 << 20);
        drop(t);
        assert_eq!(today(), 3 << 20);
        // Chunked growth reserves ahead, but never past the limit when what is needed fits.
        let mut t = quotas.bytes_ticket(&cfg, None).await.unwrap();
        t.grow_to((7 << 20) - 10).await.unwrap();
        t.grow_to(7 << 20).await.unwrap();
        assert!(t.grow_to((7 << 20) + 1).await.is_err());
        t.settle(7 << 20);
        assert_eq!(today(), 10 << 20);
        // Over the limit: refused with the time to CST midnight.
        let err = quotas.bytes_ticket(&cfg, Some(1)).await.unwrap_err();
        assert!(matches!(
            err,
            crate::error::GatewayError::QuotaExceeded {
                kind: "bytes_per_day",
                ..
            }
        ));
        // Next CST day, fresh budget.
        clock.advance(Duration::from_secs(86_400));
        assert_eq!(today(), 0);
        assert!(quotas.bytes_ticket(&cfg, Some(8 << 20)).await.is_ok());
    }
}
