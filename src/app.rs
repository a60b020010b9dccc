//! Composition root: builds the shared `AppState` (config, metrics, corps with their token
//! providers, the in-process sandbox when configured) and assembles the caller-facing tower
//! stack in `service`, outermost first. `App::spawn` is used by `main` and by the tests.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use prometheus::Registry;
use tokio_util::sync::CancellationToken;
use tower::ServiceBuilder;

use crate::config::{BaseUrl, Config};
use crate::dedupe::Dedupe;
use crate::error::GatewayError;
use crate::metrics::Metrics;
use crate::middleware::access_log::AccessLogLayer;
use crate::middleware::auth::{AuthLayer, ClientRegistry};
use crate::middleware::error_response::ErrorResponseLayer;
use crate::middleware::request_id::RequestIdLayer;
use crate::routes::Router;
use crate::sandbox::{SandboxHandle, SandboxOptions};
use crate::upstream::Corp;
use crate::{admin, server};

/// What every request handler shares.
#[derive(Debug)]
pub struct AppState {
    /// The validated configuration.
    pub cfg: Arc<Config>,
    /// The corps, by name.
    pub corps: BTreeMap<String, Arc<Corp>>,
    /// The metric families.
    pub metrics: Metrics,
    /// The registry `/metrics` encodes.
    pub registry: Registry,
    /// Callers.
    pub clients: Arc<ClientRegistry>,
    /// The dedupe index.
    pub dedupe: Dedupe,
    /// The in-process sandbox, kept alive while the app runs.
    _sandboxes: Vec<SandboxHandle>,
}

impl AppState {
    /// The corp named in a caller's config (validated at load, so a miss is a bug).
    pub fn corp(&self, name: &str) -> Result<Arc<Corp>, GatewayError> {
        self.corps
            .get(name)
            .cloned()
            .ok_or_else(|| GatewayError::Internal {
                detail: format!("caller refers to unknown corp {name}"),
            })
    }

    /// Forgets a deleted mediaId wherever fxgate remembers it (the dedupe index).
    pub async fn forget_media(&self, corp: &str, media_id: &str) {
        self.dedupe.store.forget_media(corp, media_id).await;
    }

    /// Whether every corp holds a usable token.
    pub fn ready(&self) -> bool {
        self.corps.values().all(|c| c.tokens.ready())
    }
}

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
        // Quota layers (request rate, concurrency, bytes) go here: they need the Principal
        // and must run before the body is read.
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
    let registry = Registry::new();
    let metrics = Metrics::register(&registry)?;
    let cfg = Arc::new(cfg);

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
            Corp::spawn(corp_cfg.clone(), base, metrics.clone()),
        );
    }
    let state = Arc::new(AppState {
        clients: Arc::new(ClientRegistry::new(&cfg.clients)),
        dedupe: Dedupe::memory(&cfg.dedupe),
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
