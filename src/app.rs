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

use crate::config::{BaseUrl, Config};
use crate::dedupe::Dedupe;
use crate::metrics::Metrics;
use crate::middleware::access_log::AccessLogLayer;
use crate::middleware::auth::{AuthLayer, ClientRegistry};
use crate::middleware::error_response::ErrorResponseLayer;
use crate::middleware::quota::QuotaLayer;
use crate::middleware::request_id::RequestIdLayer;
use crate::quota::shared::SharedQuotas;
use crate::quota::{Clock, SystemClock};
use crate::routes::Router;
use crate::sandbox::SandboxOptions;
use crate::state::AppState;
use crate::store::Redis;
use crate::upstream::Corp;
use crate::{admin, server};

/// The caller-facing service, outermost layer first.
pub fn service(state: Arc<AppState>) -> crate::server::AppService {
    let stack = ServiceBuilder::new()
        // First: every response, synthesised errors included, carries the request id, and
        // every log line below can name it.
        .layer(RequestIdLayer)
        // Outside the error conversion, so 401s, 413s and 5xx are logged and counted too.
        .layer(AccessLogLayer::new(state.metrics.clone()))
        // The one place a GatewayError becomes an envelope (and is logged once).
        .layer(ErrorResponseLayer)
        // Before any body byte is read: who is calling.
        .layer(AuthLayer::new(state.clients.clone()))
        // Needs the Principal; decides rate, concurrency and bytes before the body is read.
        .layer(QuotaLayer::new(
            state.clock.clone(),
            state.metrics.clone(),
            state.quotas.clone(),
        ))
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
    server: tokio::task::JoinHandle<()>,
    admin: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Stops accepting, lets in-flight requests finish up to `shutdown_grace`, then returns.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        let _ = self.server.await;
        self.admin.abort();
    }
}

/// Builds the app from `cfg` and starts its listeners.
pub async fn spawn(cfg: Config) -> Result<Running, crate::BoxError> {
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let registry = Registry::new();
    let metrics = Metrics::register(&registry)?;
    metrics.init_series(&cfg);
    let cfg = Arc::new(cfg);
    let redis = if cfg.store.redis {
        metrics.register_store(&registry)?;
        Some(Redis::start(&cfg.store, metrics.clone()).await?)
    } else {
        None
    };
    let quotas = redis
        .as_ref()
        .map(|r| SharedQuotas::new(r.clone(), cfg.store.quota_fail_open));

    let mut sandboxes = Vec::new();
    let mut corps = BTreeMap::new();
    for (name, corp_cfg) in &cfg.corps {
        let base = match &corp_cfg.base_url {
            BaseUrl::Url(u) => u.clone(),
            BaseUrl::Sandbox => {
                // One in-process sandbox accepts whatever credentials the config holds.
                let opts = SandboxOptions {
                    app_id: corp_cfg.app_id.clone(),
                    app_secret: corp_cfg.app_secret.expose().to_string(),
                    permanent_code: corp_cfg.permanent_code.expose().to_string(),
                    ..SandboxOptions::default()
                };
                let handle = crate::sandbox::spawn("127.0.0.1:0".parse()?, opts).await?;
                tracing::info!(corp = %name, addr = %handle.addr(), "built-in sandbox started for this corp");
                let url = handle.url();
                sandboxes.push(handle);
                url
            }
        };
        corps.insert(
            name.clone(),
            Corp::spawn(
                corp_cfg.clone(),
                base,
                metrics.clone(),
                clock.clone(),
                quotas.clone(),
            ),
        );
    }
    let state = Arc::new(AppState {
        clients: Arc::new(ArcSwap::from_pointee(ClientRegistry::new(
            &cfg.clients,
            None,
        ))),
        clock,
        dedupe: match &redis {
            Some(r) => Dedupe::redis(&cfg.dedupe, r.clone()),
            None => Dedupe::memory(&cfg.dedupe),
        },
        redis,
        quotas,
        cfg: cfg.clone(),
        corps,
        metrics,
        registry,
        _sandboxes: sandboxes,
    });

    let shutdown = CancellationToken::new();
    let listener = server::Listener::bind(&cfg.server).await?;
    let addr = listener.local_addr()?;
    let admin_listener = tokio::net::TcpListener::bind(cfg.server.admin_listen).await?;
    let admin_addr = admin_listener.local_addr()?;
    let server =
        tokio::spawn(listener.serve(service(state.clone()), cfg.server.clone(), shutdown.clone()));
    let admin = tokio::spawn(admin::serve(admin_listener, state.clone()));
    Ok(Running {
        addr,
        admin_addr,
        state,
        shutdown,
        server,
        admin,
    })
}
