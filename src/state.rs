//! `AppState`: what every handler and the admin listener share (config, metrics, corps with
//! their token providers, callers, the dedupe index, the shared store), and the reload that
//! swaps the callers. Built by the composition root (`app`), which nothing here imports.

use std::collections::BTreeMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use prometheus::Registry;

use crate::clock::Clock;
use crate::config::Config;
use crate::dedupe::Dedupe;
use crate::error::GatewayError;
use crate::metrics::Metrics;
use crate::middleware::auth::ClientRegistry;
use crate::quota::Quotas;
use crate::sandbox::SandboxHandle;
use crate::session::Sessions;
use crate::store::Redis;
use crate::upstream::Corp;

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
    /// The callers; swapped whole by a reload (their quota state lives in `quotas`).
    pub clients: Arc<ArcSwap<ClientRegistry>>,
    /// Time (injected).
    pub clock: Arc<dyn Clock>,
    /// The dedupe index.
    pub dedupe: Dedupe,
    /// The shared store, with `backend = "redis"`.
    pub redis: Option<Arc<Redis>>,
    /// Caller quotas, in the configured store.
    pub quotas: Quotas,
    /// The `fxg_` tokens fxgate issued (SDK drop-in).
    pub sessions: Sessions,
    /// The caller listener's TLS config, when it speaks HTTPS (reloadable).
    pub tls: Option<crate::server::Tls>,
    /// The in-process sandbox, kept alive while the app runs.
    pub(crate) _sandboxes: Vec<SandboxHandle>,
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

    /// Re-reads the config file and applies its `[[clients]]` (callers, keys, quotas). Quota
    /// state is kept by caller name in the store, so it survives; requests in flight finish under the rules they
    /// started with. A config that does not load, or names a corp this process does not
    /// run, is rejected and the old one stays.
    pub fn reload(&self) -> Result<usize, String> {
        let path = self
            .cfg
            .source
            .clone()
            .ok_or("this process was not started from a config file")?;
        let new = Config::load(&path, None).map_err(|e| format!("{}: {e}", path.display()))?;
        for c in &new.clients {
            if !self.corps.contains_key(&c.corp) {
                return Err(format!(
                    "client `{}` names corp `{}`, which needs a restart to add",
                    c.name, c.corp
                ));
            }
        }
        self.metrics.init_series(&new);
        let registry = ClientRegistry::new(&new.clients);
        let n = registry.all().len();
        self.clients.store(Arc::new(registry));
        Ok(n)
    }

    /// Rebuilds the caller listener's TLS config from its files (new connections get it; open
    /// ones keep theirs), logged and counted; on error the config in force stays.
    /// `None` when the listener is plain HTTP.
    pub fn reload_tls(&self, trigger: &str) -> Option<Result<(), String>> {
        let tls = self.tls.as_ref()?;
        let result = tls.reload().map_err(|e| e.to_string());
        self.metrics
            .count_reload(crate::metrics::Reloaded::Tls, result.is_ok());
        match &result {
            Ok(()) => tracing::info!(trigger, "TLS files reloaded: new connections use them"),
            Err(e) => {
                tracing::error!(trigger, error = %e, "TLS reload refused; the previous certificate stays in force")
            }
        }
        Some(result)
    }

    /// Logs and applies a reload of the callers (SIGHUP, `POST /admin/reload`, a change of the
    /// config file).
    pub fn reload_logged(&self, trigger: &str) -> Result<usize, String> {
        let result = self.reload();
        self.metrics
            .count_reload(crate::metrics::Reloaded::Config, result.is_ok());
        match result {
            Ok(n) => {
                tracing::info!(
                    trigger,
                    clients = n,
                    "configuration reloaded: clients and quotas applied"
                );
                Ok(n)
            }
            Err(e) => {
                tracing::error!(trigger, error = %e, "configuration reload rejected; the previous configuration stays in force");
                Err(e)
            }
        }
    }

    /// Whether every corp holds a usable token.
    pub fn ready(&self) -> bool {
        self.corps.values().all(|c| c.tokens.ready())
    }
}
