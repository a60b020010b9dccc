//! The Redis backend (`[store] backend = "redis"`): one Redis connection per serving thread
//! (each made on that thread's runtime, so a command never wakes another thread; the
//! supervisor's connection serves everything else), the store's health, and the one place
//! every Redis command goes through. Each command is bounded by
//! `store.timeout`; a failure marks the store down, after which commands fail at once (no
//! request waits on a dead Redis) until the supervisor task reconnects. Callers decide what a
//! failure means for them: the token falls back to local fetching, dedupe to a miss, quotas to
//! `quota_fail_mode`. Every failure is counted in `fxgate_store_errors_total{store,op}`.
//!
//! Key names (all under `store.key_prefix`, default `fxgate`) are listed in docs/operations.md.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use parking_lot::Mutex;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, RedisResult};
use tokio::sync::Notify;

use super::StoreError;
use crate::config::StoreConfig;
use crate::metrics::Metrics;
use crate::worker::PerWorker;

/// How often a down store is retried, and a healthy one pinged (an idle connection can die
/// unnoticed; the ping finds out before a request does).
const PROBE_INTERVAL: Duration = Duration::from_millis(500);
const PING_INTERVAL: Duration = Duration::from_secs(2);

/// A serving thread's connection slot.
#[derive(Debug, Default)]
struct Local {
    conn: ArcSwapOption<MultiplexedConnection>,
    connecting: tokio::sync::Mutex<()>,
}

/// A process's handle on Redis; cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct Redis {
    client: redis::Client,
    /// The supervisor's connection, which decides whether the store is up.
    conn: ArcSwapOption<MultiplexedConnection>,
    /// Each serving thread's own, made on first use while the store is up.
    local: PerWorker<Local>,
    up: AtomicBool,
    last_error: Mutex<Option<String>>,
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
        let client = redis::Client::open(cfg.redis_url.expose())
            .map_err(|e| StoreError::Redis(e.to_string()))?;
        let this = Arc::new(Self {
            client,
            conn: ArcSwapOption::empty(),
            local: PerWorker::new(workers, Local::default),
            up: AtomicBool::new(false),
            last_error: Mutex::new(None),
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
    async fn open(&self) -> Result<MultiplexedConnection, StoreError> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.timeout.max(Duration::from_millis(500))))
            .set_response_timeout(Some(self.timeout));
        let mut conn = self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(|e| StoreError::Redis(e.to_string()))?;
        let _: String = redis::cmd("PING")
            .query_async(&mut conn)
            .await
            .map_err(|e| StoreError::Redis(e.to_string()))?;
        Ok(conn)
    }

    async fn connect(&self) -> Result<(), StoreError> {
        let conn = self.open().await?;
        self.conn.store(Some(Arc::new(conn)));
        self.up.store(true, Ordering::Release);
        self.metrics.store_up.set(1);
        *self.last_error.lock() = None;
        Ok(())
    }

    fn mark_down(&self, why: &str) {
        self.conn.store(None);
        for local in self.local.all() {
            local.conn.store(None);
        }
        *self.last_error.lock() = Some(why.to_string());
        self.metrics.store_up.set(0);
        if self.up.swap(false, Ordering::AcqRel) {
            tracing::warn!(error = %why, "redis store lost; falling back per the fail modes");
            self.broken.notify_one();
        }
    }

    /// Whether the last command (or probe) succeeded.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    /// One line for `/readyz`.
    pub fn status(&self) -> String {
        match (self.is_up(), self.last_error.lock().clone()) {
            (true, _) => "store redis: ok".into(),
            (false, Some(e)) => format!("store redis: down ({e}); serving per the fail modes"),
            (false, None) => "store redis: down; serving per the fail modes".into(),
        }
    }

    /// The calling thread's connection: a serving thread's own (made now if it has none
    /// yet), else the supervisor's; `None` while the store is down.
    async fn connection(&self) -> Option<Arc<MultiplexedConnection>> {
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

    /// `prefix:a:b:c`.
    pub fn key(&self, parts: &[&str]) -> String {
        let mut k = self.prefix.clone();
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
        F: FnOnce(MultiplexedConnection) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        let Some(conn) = self.connection().await else {
            self.metrics
                .store_errors
                .with_label_values(&[store, op])
                .inc();
            return Err(StoreError::Down);
        };
        self.metrics
            .store_calls
            .with_label_values(&[store, op])
            .inc();
        let result =
            tokio::time::timeout(self.timeout, f(MultiplexedConnection::clone(&conn))).await;
        let err = match result {
            Ok(Ok(v)) => return Ok(v),
            Ok(Err(e)) => {
                // A script or type error is ours to fix, not a sign the store is gone.
                let broken = e.is_io_error()
                    || e.is_connection_dropped()
                    || e.is_timeout()
                    || e.is_unrecoverable_error();
                let err = StoreError::Redis(e.to_string());
                if broken {
                    self.mark_down(&err.to_string());
                }
                err
            }
            Err(_) => {
                self.mark_down("command timed out");
                StoreError::Timeout
            }
        };
        self.metrics
            .store_errors
            .with_label_values(&[store, op])
            .inc();
        tracing::debug!(store, op, error = %err, "redis command failed");
        Err(err)
    }
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
                    let _ = this
                        .run("store", "ping", |mut c| async move {
                            redis::cmd("PING").query_async::<String>(&mut c).await
                        })
                        .await;
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

static RENEW_IF_OWNER: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"#,
    )
});

static RELEASE_IF_OWNER: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"#,
    )
});

/// Something this process holds in Redis for `ttl` at a time: a task renews it every third of
/// its life while held, and dropping it stops the renewal and releases it in the background.
/// If the process dies, or the release cannot reach Redis, it lapses after `ttl` and another
/// replica takes over. Key leases (`Redis::try_lease`) and upload slots are both held this way.
pub struct Lease {
    renewer: tokio::task::JoinHandle<()>,
    // Behind a mutex only so that a `Lease` is `Sync` (requests hold leases across awaits by
    // reference); it is taken once, on drop.
    release: Mutex<Option<futures_util::future::BoxFuture<'static, ()>>>,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease").finish_non_exhaustive()
    }
}

impl Lease {
    /// Starts holding: `renew` runs every `ttl / 3` until it answers `false` (the lease is
    /// lost); `release` runs once, when the lease is dropped.
    pub fn hold<R, F>(
        ttl: Duration,
        mut renew: R,
        release: impl Future<Output = ()> + Send + 'static,
    ) -> Self
    where
        R: FnMut() -> F + Send + 'static,
        F: Future<Output = bool> + Send,
    {
        let renewer = tokio::spawn(async move {
            loop {
                tokio::time::sleep(ttl / 3).await;
                if !renew().await {
                    return;
                }
            }
        });
        Self {
            renewer,
            release: Mutex::new(Some(Box::pin(release))),
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.renewer.abort();
        if let (Some(release), Ok(rt)) = (
            self.release.get_mut().take(),
            tokio::runtime::Handle::try_current(),
        ) {
            rt.spawn(release);
        }
    }
}

impl Redis {
    /// Takes the lease on `key` if nobody holds it; `Ok(None)` when somebody does.
    pub async fn try_lease(
        self: &Arc<Self>,
        store: &'static str,
        key: String,
        ttl: Duration,
    ) -> Result<Option<Lease>, StoreError> {
        let (k, owner) = (key.clone(), self.owner.clone());
        let set: Option<String> = self
            .run(store, "lease", |mut c| async move {
                redis::cmd("SET")
                    .arg(&k)
                    .arg(&owner)
                    .arg("NX")
                    .arg("PX")
                    .arg(ttl.as_millis() as u64)
                    .query_async(&mut c)
                    .await
            })
            .await?;
        if set.is_none() {
            return Ok(None);
        }
        let renew = {
            let (redis, key) = (self.clone(), key.clone());
            move || {
                let (redis, k) = (redis.clone(), key.clone());
                async move {
                    let owner = redis.owner.clone();
                    let renewed: Result<i64, _> = redis
                        .run(store, "lease", |mut c| async move {
                            RENEW_IF_OWNER
                                .key(&k)
                                .arg(&owner)
                                .arg(ttl.as_millis() as u64)
                                .invoke_async(&mut c)
                                .await
                        })
                        .await;
                    // Lost (lapsed, or Redis is gone): whoever holds the key now owns it.
                    matches!(renewed, Ok(1))
                }
            }
        };
        let redis = self.clone();
        let release = async move {
            let owner = redis.owner.clone();
            let _: Result<i64, _> = redis
                .run(store, "lease", |mut c| async move {
                    RELEASE_IF_OWNER
                        .key(&key)
                        .arg(&owner)
                        .invoke_async(&mut c)
                        .await
                })
                .await;
        };
        Ok(Some(Lease::hold(ttl, renew, release)))
    }
}
