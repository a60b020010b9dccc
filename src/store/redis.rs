//! The Redis backend (`[store] backend = "redis"`): one Redis connection per serving thread
//! (each made on that thread's runtime, so a command never wakes another thread; the
//! supervisor's connection serves everything else), the store's health, and the one place
//! every Redis command goes through. Each command is bounded by
//! `store.timeout`; a failure marks the store down, after which commands fail at once (no
//! request waits on a dead Redis) until the supervisor task reconnects (under Sentinel, asking
//! the sentinels again). What a failure means is `store::FailOver`'s to decide. Every failure
//! is counted in `fxgate_store_errors_total{store,op,kind}`. Connections come from
//! `store::conn` (one address, the sentinels' master, or a Cluster).
//!
//! Key names (all under `store.key_prefix`, default `fxgate`) are listed in docs/operations.md.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwapOption;
use parking_lot::Mutex;
use redis::RedisResult;
use tokio::sync::Notify;

use super::conn::{Conn, Source};
use super::failure::{kind_of, refuses};
use super::StoreError;
use crate::config::StoreConfig;
use crate::metrics::FailureKind;
use crate::metrics::Metrics;
use crate::worker::PerWorker;

/// The version of the key layout, in every key: a release that renames a key or changes what
/// it holds bumps it, so two releases on one Redis never misread each other's keys (during a
/// rolling upgrade across a bump each side keeps its own state; docs/operations.md).
pub const KEY_SCHEMA: &str = "v2";

/// Which Redis Cluster slot a key shares (its hash tag).
#[derive(Debug, Clone, Copy)]
pub enum Tag<'a> {
    /// Everything of one corp: its tokens, budget, dedupe entries and locks.
    Corp(&'a str),
    /// Everything of one caller: its quotas.
    Client(&'a str),
    /// A key no script or transaction shares with another (a session, the probe).
    Own,
}

/// A name as it may stand inside a hash tag: `{` and `}` would end the tag early.
fn tag_safe(name: &str) -> std::borrow::Cow<'_, str> {
    if name.contains(['{', '}', '%']) {
        name.replace('%', "%25")
            .replace('{', "%7B")
            .replace('}', "%7D")
            .into()
    } else {
        name.into()
    }
}

/// How often a down store is retried, and a healthy one probed (an idle connection can die
/// unnoticed, and a full or read-only Redis still answers PING: the probe is a write).
const PROBE_INTERVAL: Duration = Duration::from_millis(500);
const PING_INTERVAL: Duration = Duration::from_secs(2);
/// A Redis that refused a command (full, read-only, an ACL denial) counts as failing for this
/// long (ms) after the last refusal: long enough for a probe to have looked again.
const REFUSING_HOLD_MS: u64 = 10_000;
/// A failure of one kind is logged at warn at most this often (ms; each is counted).
const WARN_EVERY_MS: u64 = 1_000;

/// A serving thread's connection slot.
#[derive(Debug, Default)]
struct Local {
    conn: ArcSwapOption<Conn>,
    connecting: tokio::sync::Mutex<()>,
}

/// A process's handle on Redis; cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct Redis {
    /// Where connections come from (one address, the sentinels' master, a Cluster).
    source: Source,
    /// The supervisor's connection, which decides whether the store is up.
    conn: ArcSwapOption<Conn>,
    /// Each serving thread's own, made on first use while the store is up.
    local: PerWorker<Local>,
    up: AtomicBool,
    /// Until when (ms after `born`) a refusal keeps the store counted as failing.
    refusing_until: AtomicU64,
    /// When each kind of failure was last logged at warn (ms after `born`, 0: never).
    warned: [AtomicU64; 8],
    born: Instant,
    last_error: Mutex<Option<String>>,
    /// Redis's clock less this host's (ms), as last measured: what makes times this process
    /// writes for others to read (the budget's call log) agree with every other replica's.
    clock_offset_ms: AtomicI64,
    prefix: String,
    timeout: Duration,
    metrics: Metrics,
    broken: Notify,
    /// Identifies this process in leases and locks.
    pub owner: String,
}

impl Redis {
    /// Connects (a Redis that is down at start is not fatal: the process serves per the fail
    /// modes and the supervisor keeps trying) and starts the supervisor.
    pub async fn start(
        cfg: &StoreConfig,
        metrics: Metrics,
        workers: usize,
    ) -> Result<Arc<Self>, StoreError> {
        let source = Source::of(cfg)?;
        let this = Arc::new(Self {
            source,
            conn: ArcSwapOption::empty(),
            local: PerWorker::new(workers, Local::default),
            up: AtomicBool::new(false),
            refusing_until: AtomicU64::new(0),
            warned: Default::default(),
            born: Instant::now(),
            last_error: Mutex::new(None),
            clock_offset_ms: AtomicI64::new(0),
            prefix: cfg.key_prefix.clone(),
            timeout: cfg.timeout,
            metrics,
            broken: Notify::new(),
            owner: uuid::Uuid::new_v4().simple().to_string(),
        });
        match this.connect().await {
            Ok(()) => tracing::info!(prefix = %this.prefix, "redis store connected"),
            Err(e) => {
                tracing::warn!(error = %e, "redis store unreachable at start; serving per the fail modes until it answers");
                this.mark_down(&e.to_string());
            }
        }
        tokio::spawn(supervise(Arc::downgrade(&this)));
        Ok(this)
    }

    /// A new connection, answering PING, whose driver runs on the calling runtime.
    async fn open(&self) -> Result<Conn, StoreError> {
        let mut conn = self.source.open(self.timeout).await?;
        let _: String = redis::cmd("PING")
            .query_async(&mut conn)
            .await
            .map_err(|e| StoreError::Redis(e.to_string()))?;
        Ok(conn)
    }

    async fn connect(&self) -> Result<(), StoreError> {
        // Sentinel: the master may have moved since the last connection.
        self.source.resolve(self.timeout).await?;
        let conn = self.open().await?;
        let before = host_ms();
        let time: (i64, i64) = redis::cmd("TIME")
            .query_async(&mut conn.clone())
            .await
            .map_err(|e| StoreError::Redis(e.to_string()))?;
        self.set_clock(before, time);
        self.conn.store(Some(Arc::new(conn)));
        self.up.store(true, Ordering::Release);
        *self.last_error.lock() = None;
        Ok(())
    }

    /// Takes Redis's answer to `TIME` (seconds, microseconds), asked at `before` on this
    /// host's clock and answered now, as the offset between the two clocks.
    fn set_clock(&self, before: i64, (secs, micros): (i64, i64)) {
        // Halfway through the round trip is when Redis most likely read its clock.
        let mid = (before + host_ms()) / 2;
        let offset = secs * 1000 + micros / 1000 - mid;
        self.clock_offset_ms.store(offset, Ordering::Relaxed);
    }

    /// Now on Redis's clock (ms since the Unix epoch), as this host reckons it from the last
    /// measurement (at connect, then with every probe): every replica's times agree within
    /// a round trip, whatever their own clocks say, without asking Redis per call.
    pub fn clock_ms(&self) -> i64 {
        host_ms() + self.clock_offset_ms.load(Ordering::Relaxed)
    }

    fn mark_down(&self, why: &str) {
        self.conn.store(None);
        for local in self.local.all() {
            local.conn.store(None);
        }
        *self.last_error.lock() = Some(why.to_string());
        if self.up.swap(false, Ordering::AcqRel) {
            tracing::warn!(error = %why, "redis store lost; falling back per the fail modes");
            self.broken.notify_one();
        }
    }

    /// Whether the store is connected (commands are tried).
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.born.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Whether Redis refused a command recently (full, read-only, an ACL denial).
    fn refusing(&self) -> bool {
        self.now_ms() < self.refusing_until.load(Ordering::Relaxed)
    }

    /// Connected, and doing what fxgate asks of it: what `/readyz` and `fxgate_store_up` say.
    pub fn healthy(&self) -> bool {
        self.is_up() && !self.refusing()
    }

    /// One line for `/readyz`.
    pub fn status(&self) -> String {
        match (self.is_up(), self.last_error.lock().clone()) {
            (true, Some(e)) if self.refusing() => {
                format!("store redis: failing ({e}); serving per the fail modes")
            }
            (true, _) => "store redis: ok".into(),
            (false, Some(e)) => format!("store redis: down ({e}); serving per the fail modes"),
            (false, None) => "store redis: down; serving per the fail modes".into(),
        }
    }

    /// The calling thread's connection: a serving thread's own (made now if it has none
    /// yet), else the supervisor's; `None` while the store is down.
    async fn connection(&self) -> Option<Arc<Conn>> {
        let shared = self.conn.load_full()?;
        if crate::worker::index() == 0 {
            return Some(shared);
        }
        let local = self.local.get();
        if let Some(conn) = local.conn.load_full() {
            return Some(conn);
        }
        // One connect per thread at a time: the requests that meet an empty slot together
        // wait for the one connection rather than each opening their own.
        let _connecting = local.connecting.lock().await;
        if let Some(conn) = local.conn.load_full() {
            return Some(conn);
        }
        match self.open().await {
            Ok(conn) => {
                let conn = Arc::new(conn);
                local.conn.store(Some(conn.clone()));
                Some(conn)
            }
            // This thread's connection failed where the supervisor's works (Redis at its
            // `maxclients`, say): the thread uses the supervisor's from now on, and tries its
            // own again only after the store next reconnects (`mark_down` empties the slots).
            // Retrying per command would put a connect attempt in front of every request.
            Err(e) => {
                tracing::warn!(error = %e, "redis: a serving thread's own connection failed; it shares the supervisor's");
                local.conn.store(Some(shared.clone()));
                Some(shared)
            }
        }
    }

    /// `prefix:v2:{tag}:a:b:c` (`Tag::Own`: no tag). Every key carries `KEY_SCHEMA`, and
    /// every key one script or transaction touches carries the same tag, so in a Cluster
    /// they share a slot.
    pub fn key(&self, tag: Tag<'_>, parts: &[&str]) -> String {
        // Built in place, once per command: this runs on every request that touches Redis.
        let (kind, name) = match tag {
            Tag::Corp(name) => ("corp:", tag_safe(name)),
            Tag::Client(name) => ("client:", tag_safe(name)),
            Tag::Own => ("", "".into()),
        };
        let len = self.prefix.len()
            + KEY_SCHEMA.len()
            + 4
            + kind.len()
            + name.len()
            + parts.iter().map(|p| p.len() + 1).sum::<usize>();
        let mut k = String::with_capacity(len);
        k.push_str(&self.prefix);
        k.push(':');
        k.push_str(KEY_SCHEMA);
        if !kind.is_empty() {
            k.push_str(":{");
            k.push_str(kind);
            k.push_str(&name);
            k.push('}');
        }
        for p in parts {
            k.push(':');
            k.push_str(p);
        }
        k
    }

    /// Runs one command (or script, or pipeline) on the shared connection, bounded by the
    /// store timeout, counting a failure under `store` (`token`, `dedupe`, `quota`,
    /// `budget`) and `op`.
    pub async fn run<T, F, Fut>(&self, store: &str, op: &str, f: F) -> Result<T, StoreError>
    where
        F: FnOnce(Conn) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        let Some(conn) = self.connection().await else {
            self.count_failure(store, op, FailureKind::Io, "store down");
            return Err(StoreError::Down);
        };
        self.metrics
            .store
            .calls
            .with_label_values(&[store, op])
            .inc();
        let result = tokio::time::timeout(self.timeout, f(Conn::clone(&conn))).await;
        let (err, kind) = match result {
            Ok(Ok(v)) => return Ok(v),
            Ok(Err(e)) => {
                // A script or type error is ours to fix, not a sign the store is gone.
                let broken = e.is_io_error()
                    || e.is_connection_dropped()
                    || e.is_timeout()
                    || e.is_unrecoverable_error();
                let err = StoreError::Redis(e.to_string());
                let kind = kind_of(&e);
                // Under Sentinel a read-only node is a master that was demoted: reconnect,
                // which asks the sentinels where the master is now.
                let moved = kind == FailureKind::Readonly && self.source.follows_failover();
                if broken || moved {
                    self.mark_down(&err.to_string());
                }
                (err, kind)
            }
            Err(_) => {
                self.mark_down("command timed out");
                (StoreError::Timeout, FailureKind::Timeout)
            }
        };
        self.count_failure(store, op, kind, &err.to_string());
        Err(err)
    }

    /// Counts a failed command by kind, logs it at warn (at most once a second per kind),
    /// and, when Redis refused it, marks the store failing (`healthy`, which `/readyz` and
    /// `fxgate_store_up` read) until a probe finds it doing what fxgate asks again.
    fn count_failure(&self, store: &str, op: &str, kind: FailureKind, why: &str) {
        self.metrics
            .store
            .errors
            .with_label_values(&[store, op, kind.as_str()])
            .inc();
        let now = self.now_ms().max(1);
        if refuses(kind) {
            self.refusing_until
                .store(now + REFUSING_HOLD_MS, Ordering::Relaxed);
            *self.last_error.lock() = Some(why.to_string());
        }
        let last = &self.warned[kind as usize];
        let seen = last.load(Ordering::Relaxed);
        let due = seen == 0 || now >= seen + WARN_EVERY_MS;
        if due
            && last
                .compare_exchange(seen, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(store, op, kind = kind.as_str(), error = %why, "redis command failed; serving per the fail modes");
        }
    }
}

/// This host's clock, ms since the Unix epoch.
fn host_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Builds what `serve` would connect with (the URL or the sentinels or the nodes, the
/// credentials, the TLS files), without connecting: `check-config` calls it, so a file that
/// does not parse fails there rather than at start. Errors never repeat a URL.
pub fn check(cfg: &StoreConfig) -> Result<(), StoreError> {
    Source::of(cfg).map(|_| ())
}

/// Reconnects a down store and pings a healthy one, for as long as the process holds it.
async fn supervise(weak: Weak<Redis>) {
    loop {
        let Some(this) = weak.upgrade() else { return };
        if this.is_up() {
            let broken = this.broken.notified();
            tokio::select! {
                _ = broken => {}
                _ = tokio::time::sleep(PING_INTERVAL) => {
                    // A write, with the process's own key: a Redis that answers PING can
                    // still refuse every write (full, read-only, an ACL without it).
                    // Redis's clock rides along, for `clock_ms`.
                    let key = this.key(Tag::Own, &["probe", &this.owner]);
                    let before = host_ms();
                    let probed = this
                        .run("store", "probe", |mut c| async move {
                            redis::pipe()
                                .cmd("SET")
                                .arg(&key)
                                .arg(1)
                                .arg("PX")
                                .arg(PING_INTERVAL.as_millis() as u64 * 3)
                                .ignore()
                                .cmd("TIME")
                                .query_async::<((i64, i64),)>(&mut c)
                                .await
                        })
                        .await;
                    if let Ok((time,)) = probed {
                        this.set_clock(before, time);
                    }
                }
            }
        } else {
            match this.connect().await {
                Ok(()) => tracing::info!("redis store reachable again; sharing resumes"),
                Err(e) => {
                    *this.last_error.lock() = Some(e.to_string());
                    drop(this);
                    tokio::time::sleep(PROBE_INTERVAL).await;
                }
            }
        }
    }
}
