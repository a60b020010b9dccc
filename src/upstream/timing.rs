//! A corp's deadlines and refresh point, which a reload changes in place (design §12): every
//! upstream call, connect and token schedule reads them when it starts, so the next one after a
//! reload uses the new values and one in flight keeps the ones it started with.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::config::CorpConfig;

/// `upstream_timeout`, `connect_timeout` and `refresh_at` in force for one corp.
#[derive(Debug)]
pub struct Timing {
    upstream_ns: AtomicU64,
    connect_ns: AtomicU64,
    /// `f64::to_bits` of the fraction.
    refresh_at: AtomicU64,
}

fn ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl Timing {
    /// The values of `cfg`.
    pub fn new(cfg: &CorpConfig) -> Self {
        let t = Self {
            upstream_ns: AtomicU64::new(0),
            connect_ns: AtomicU64::new(0),
            refresh_at: AtomicU64::new(0),
        };
        t.set(cfg);
        t
    }

    /// Only a connect deadline, fixed (a client that is not a corp's: the OTLP exporter).
    pub fn connect_within(d: Duration) -> Self {
        Self {
            upstream_ns: AtomicU64::new(ns(d)),
            connect_ns: AtomicU64::new(ns(d)),
            refresh_at: AtomicU64::new(0),
        }
    }

    /// Puts `cfg`'s values in force; whether any of them changed.
    pub fn set(&self, cfg: &CorpConfig) -> bool {
        let old = (
            self.upstream_timeout(),
            self.connect_timeout(),
            self.refresh_at(),
        );
        self.upstream_ns
            .store(ns(cfg.upstream_timeout), Ordering::Relaxed);
        self.connect_ns
            .store(ns(cfg.connect_timeout), Ordering::Relaxed);
        self.refresh_at
            .store(cfg.refresh_at.to_bits(), Ordering::Relaxed);
        old != (cfg.upstream_timeout, cfg.connect_timeout, cfg.refresh_at)
    }

    /// How long Fxiaoke may take to answer a call (and to send each part of a streamed one).
    pub fn upstream_timeout(&self) -> Duration {
        Duration::from_nanos(self.upstream_ns.load(Ordering::Relaxed))
    }

    /// How long a new connection to Fxiaoke may take.
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_nanos(self.connect_ns.load(Ordering::Relaxed))
    }

    /// The fraction of a token's lifetime after which its successor is fetched.
    pub fn refresh_at(&self) -> f64 {
        f64::from_bits(self.refresh_at.load(Ordering::Relaxed))
    }
}
