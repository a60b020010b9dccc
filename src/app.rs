//! Composition root: builds the shared `AppState` (config, metrics, corps with their token
//! providers, the in-process sandbox when configured) and assembles the caller-facing tower
//! stack in `service`, outermost first. `App::spawn` is used by `main` and by the tests.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use prometheus::Registry;
use tokio_util::sync::CancellationToken;
use tower::ServiceBuilder;

use arc_swap::ArcSwap;

use crate::clock::{Clock, SystemClock};
use crate::config::{BaseUrl, Config};
use crate::dedupe::Dedupe;
use crate::metrics::Metrics;
use crate::middleware::access_log::AccessLogLayer;
use crate::middleware::auth::{AuthLayer, ClientRegistry, PreAuthPool};
use crate::middleware::catch_panic::CatchPanicLayer;
use crate::middleware::error_response::ErrorResponseLayer;
use crate::middleware::path::CanonicalPathLayer;
use crate::middleware::quota::QuotaLayer;
use crate::middleware::request_id::RequestIdLayer;
use crate::middleware::sensitive::SensitiveHeadersLayer;
use crate::middleware::shed::ShedLayer;
use crate::middleware::trace::TraceLayer;
use crate::quota::memory::MemoryQuotas;
use crate::quota::redis::RedisQuotas;
use crate::quota::{QuotaStore, Quotas};
use crate::routes::Router;
use crate::sandbox::{SandboxHandle, SandboxOptions};
use crate::server::workers::Workers;
use crate::server::{AppService, ServeOptions};
use crate::session::redis::RedisSessions;
use crate::session::{MemorySessions, SessionStore, Sessions};
use crate::state::AppState;
use crate::store::{Backend, FailMode, FailOver, ModeSwitch, Redis};
use crate::upstream::budget::memory::MemoryBudget;
use crate::upstream::budget::redis::RedisBudget;
use crate::upstream::budget::BudgetStore;
use crate::upstream::token::redis::RedisTokens;
use crate::upstream::token::store::{MemoryTokens, TokenStore};
use crate::upstream::token::ApiStyle;
use crate::upstream::transport::Egress;
use crate::upstream::Corp;
use crate::{admin, server};

/// Bound on `fxg_` tokens one replica keeps in memory (an SDK re-fetches one every ~2 h).
const SESSIONS_MAX: u64 = 100_000;

/// The caller-facing service, outermost layer first.
pub fn service(state: Arc<AppState>) -> AppService {
    let stack = ServiceBuilder::new()
        // First: credentials are marked sensitive before anything can log or print them.
        .layer(SensitiveHeadersLayer)
        // Every response, synthesised errors included, carries the request id, and every log
        // line below can name it.
        .layer(RequestIdLayer)
        // Outside the error conversion, so 401s, 413s, 503s and 5xx are logged and counted too;
        // resolves the request's route once for every layer below.
        .layer(AccessLogLayer::new(state.metrics.clone()))
        // Inside the access log (which reads the trace id it finds), outside everything that
        // works: the `request` span, continuing the caller's W3C trace, covers it all.
        .layer(TraceLayer)
        // The one place a GatewayError becomes an envelope (and is logged once).
        .layer(ErrorResponseLayer)
        // A panic below becomes a 500 envelope instead of a dropped connection.
        .layer(CatchPanicLayer::new(state.metrics.clone()))
        // Before anything decides on the path (auth, allow-lists, budgets, the upstream URL):
        // one spelling per path, every other one 400 / 940004.
        .layer(CanonicalPathLayer)
        // Before any body byte is read: who is calling. A key or certificate costs a hash;
        // the only body read for a caller not yet known runs in its own small pool
        // (`server.max_unauthenticated`), never in the callers' places below.
        .layer(AuthLayer::new(
            state.clients.clone(),
            state.sessions.clone(),
            state.passthrough.clone(),
            PreAuthPool::new(state.cfg.server.unauthenticated),
            state.clock.clone(),
        ))
        // Inside auth, so anonymous clients never take a caller's place: at most
        // `max_inflight` requests inside, the rest shed at once with 503 rather than queued
        // (a queue only adds latency under overload).
        .layer(ShedLayer::new(
            state.cfg.server.max_inflight,
            state.metrics.clone(),
        ))
        // Needs the Principal; decides rate, concurrency and bytes before the body is read.
        .layer(QuotaLayer::new(state.quotas.clone(), state.metrics.clone()))
        .service(Router::new(state));
    tower::util::BoxCloneService::new(stack)
}

/// A running gateway.
#[derive(Debug)]
pub struct Running {
    /// Where callers connect.
    pub addr: SocketAddr,
    /// Where `/metrics`, `/healthz`, `/readyz` are served.
    pub admin_addr: SocketAddr,
    /// The shared state.
    pub state: Arc<AppState>,
    shutdown: CancellationToken,
    server: Option<Workers>,
    admin: Option<tokio::task::JoinHandle<()>>,
}

impl Running {
    /// Stops accepting, lets in-flight requests finish up to `shutdown_grace`, then returns.
    pub async fn shutdown(mut self) {
        self.shutdown.cancel();
        if let Some(server) = self.server.take() {
            server.join().await;
        }
        if let Some(admin) = self.admin.take() {
            let _ = admin.await;
        }
    }
}

impl Drop for Running {
    // The serving threads are not tasks of the caller's runtime, which would end them when it
    // ends: a gateway dropped without `shutdown` (a test's) still stops serving.
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Builds the app from `cfg` on the system clock and starts its listeners.
pub async fn spawn(cfg: Config) -> Result<Running, crate::body::BoxError> {
    spawn_with(cfg, SystemClock::shared()).await
}

/// Builds the app from `cfg`, timed by `clock` (tests pass a `ManualClock`), and starts its
/// listeners.
pub async fn spawn_with(
    cfg: Config,
    clock: Arc<dyn Clock>,
) -> Result<Running, crate::body::BoxError> {
    let registry = Registry::new();
    let metrics = Metrics::register(&registry)?;
    metrics.init_series(&cfg);
    let cfg = Arc::new(cfg);
    // First: a certificate that does not load stops the start before anything is spawned.
    let gateway = server::workers::Bound::bind(&cfg.server)?;
    let stores = Stores::open(&cfg, &metrics, &registry, &clock).await?;
    let (corps, sandboxes) = spawn_corps(&cfg, &metrics, &clock, &stores).await?;
    let state = Arc::new(AppState {
        clients: Arc::new(ArcSwap::from_pointee(ClientRegistry::new(&cfg.clients))),
        quotas: Quotas::new(stores.quotas.clone(), clock.clone()),
        sessions: Sessions::new(stores.sessions.clone(), clock.clone()),
        dedupe: stores.dedupe(&cfg, &clock),
        redis: stores.redis,
        quota_mode: stores.quota_mode,
        clock,
        tls: gateway.tls(),
        applied: ArcSwap::new(cfg.clone()),
        upload: Arc::new(ArcSwap::from_pointee(cfg.upload.clone())),
        passthrough: Arc::new(ArcSwap::from_pointee(cfg.passthrough.clone())),
        cfg: cfg.clone(),
        corps,
        metrics,
        registry,
        _sandboxes: sandboxes,
    });

    let shutdown = CancellationToken::new();
    let addr = gateway.local_addr();
    let admin_listener =
        server::Listener::plain(tokio::net::TcpListener::bind(cfg.server.admin_listen).await?);
    let admin_addr = admin_listener.local_addr()?;
    let server = gateway.serve(
        service(state.clone()),
        ServeOptions::gateway(&cfg.server),
        shutdown.clone(),
    )?;
    watch_files(&state, &shutdown).await;
    let admin = tokio::spawn(server::serve(
        admin_listener,
        admin::service(state.clone()),
        ServeOptions::admin(&cfg.server),
        shutdown.clone(),
    ));
    Ok(Running {
        addr,
        admin_addr,
        state,
        shutdown,
        server: Some(server),
        admin: Some(admin),
    })
}

/// With `server.watch_interval`: reloads the callers when the config file changes and the TLS
/// config when its files do, as SIGHUP would.
async fn watch_files(state: &Arc<AppState>, shutdown: &CancellationToken) {
    let Some(every) = state.cfg.server.watch_interval else {
        return;
    };
    if let Some(path) = state.cfg.source.clone() {
        let state = state.clone();
        crate::watch::spawn("config", vec![path], every, shutdown.clone(), move || {
            let _ = state.reload_logged("config file changed");
        })
        .await;
    }
    if let Some(tls) = &state.tls {
        let paths = tls.paths();
        let state = state.clone();
        crate::watch::spawn("tls", paths, every, shutdown.clone(), move || {
            let _ = state.reload_tls("TLS files changed");
        })
        .await;
    }
}

/// The stores of `[store]`: in memory, or in Redis behind the fail-mode decorator (quotas and
/// the corp budget per `quota_fail_mode`; the token always falls back to fetching alone; dedupe
/// falls back to no index: misses, nothing recorded).
struct Stores {
    redis: Option<Arc<Redis>>,
    /// `quota_fail_mode` in force, for the quota and budget stores (a reload changes it).
    quota_mode: Arc<ModeSwitch>,
    quotas: Arc<dyn QuotaStore>,
    /// The corps' allowance at Fxiaoke.
    budget: Arc<dyn BudgetStore>,
    sessions: Arc<dyn SessionStore>,
}

impl Stores {
    async fn open(
        cfg: &Config,
        metrics: &Metrics,
        registry: &Registry,
        clock: &Arc<dyn Clock>,
    ) -> Result<Self, crate::body::BoxError> {
        let local: Arc<dyn QuotaStore> = Arc::new(MemoryQuotas::new(clock.clone()));
        let own_budget: Arc<dyn BudgetStore> = Arc::new(MemoryBudget::new(clock.clone()));
        let own_sessions: Arc<dyn SessionStore> = Arc::new(MemorySessions::new(SESSIONS_MAX));
        let quota_mode = ModeSwitch::new(cfg.store.quota_fail_mode);
        Ok(match cfg.store.backend {
            Backend::Memory => Self {
                redis: None,
                quota_mode,
                quotas: local,
                budget: own_budget,
                sessions: own_sessions,
            },
            Backend::Redis => {
                metrics.register_store(registry)?;
                let redis = Redis::start(&cfg.store, metrics.clone(), cfg.server.workers).await?;
                let shared: Arc<dyn QuotaStore> = Arc::new(RedisQuotas::new(redis.clone()));
                let budget: Arc<dyn BudgetStore> = Arc::new(RedisBudget::new(redis.clone()));
                let sessions: Arc<dyn SessionStore> = Arc::new(RedisSessions::new(redis.clone()));
                Self {
                    quotas: Arc::new(FailOver::switched(shared, local, quota_mode.clone())),
                    budget: Arc::new(FailOver::switched(budget, own_budget, quota_mode.clone())),
                    quota_mode,
                    // Open: with Redis down a replica issues and checks its own tokens; an SDK
                    // holding one this replica does not know gets 20016 and fetches another.
                    sessions: Arc::new(FailOver::new(sessions, own_sessions, FailMode::Open)),
                    redis: Some(redis),
                }
            }
        })
    }

    /// Where `corp`'s `flow` token is shared (keys tagged by corp, one set per flow).
    fn tokens(
        &self,
        cfg: &Config,
        corp: &str,
        flow: ApiStyle,
        clock: &Arc<dyn Clock>,
    ) -> Arc<dyn TokenStore> {
        let alone: Arc<dyn TokenStore> = Arc::new(MemoryTokens);
        match &self.redis {
            None => alone,
            Some(redis) => {
                let shared: Arc<dyn TokenStore> = Arc::new(RedisTokens::new(
                    redis.clone(),
                    corp,
                    flow.label(),
                    clock.clone(),
                    cfg.store.lease_ttl,
                ));
                Arc::new(FailOver::new(shared, alone, FailMode::Open))
            }
        }
    }

    fn dedupe(&self, cfg: &Config, clock: &Arc<dyn Clock>) -> Dedupe {
        match &self.redis {
            Some(r) => Dedupe::redis(&cfg.dedupe, r.clone(), cfg.store.lease_ttl),
            None => Dedupe::memory(&cfg.dedupe, clock.clone()),
        }
    }
}

/// Each corp with its token refresher; a corp on `base_url = "sandbox"` gets an in-process
/// sandbox (on the same clock) that accepts whatever credentials the config holds.
async fn spawn_corps(
    cfg: &Config,
    metrics: &Metrics,
    clock: &Arc<dyn Clock>,
    stores: &Stores,
) -> Result<(BTreeMap<String, Arc<Corp>>, Vec<SandboxHandle>), crate::body::BoxError> {
    let mut sandboxes = Vec::new();
    let mut corps = BTreeMap::new();
    for (name, corp_cfg) in &cfg.corps {
        let base = match &corp_cfg.base_url {
            BaseUrl::Url(u) => {
                // Where this corp's calls go, so an egress proxy (or its absence) is never a
                // surprise found in a failed call.
                let via = u.parse().ok().and_then(|uri| Egress::proxy_for(&uri));
                tracing::info!(corp = %name, upstream = %u, proxy = via.as_deref().unwrap_or("none"),
                    extra_roots = corp_cfg.ca_file.as_ref().map(|r| r.certs.len()).unwrap_or(0),
                    "corp upstream");
                u.clone()
            }
            BaseUrl::Sandbox => {
                let opts = SandboxOptions {
                    app_id: corp_cfg.app_id.clone(),
                    app_secret: corp_cfg.app_secret.expose().to_string(),
                    permanent_code: corp_cfg.permanent_code.expose().to_string(),
                    clock: clock.clone(),
                    ..SandboxOptions::default()
                };
                let handle = crate::sandbox::spawn("127.0.0.1:0".parse()?, opts).await?;
                tracing::info!(corp = %name, addr = %handle.addr(), "built-in sandbox started for this corp");
                let url = handle.url();
                sandboxes.push(handle);
                url
            }
        };
        let corp = Corp::spawn(
            corp_cfg.clone(),
            base,
            metrics.clone(),
            clock.clone(),
            stores.budget.clone(),
            |flow| stores.tokens(cfg, name, flow, clock),
            cfg.server.workers,
        );
        corps.insert(name.clone(), corp);
    }
    Ok((corps, sandboxes))
}
