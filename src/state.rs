//! `AppState`: what every handler and the admin listener share (config, metrics, corps with
//! their token providers, callers, the dedupe index, the shared store), and the reload that
//! swaps the callers. Built by the composition root (`app`), which nothing here imports.

use std::collections::BTreeMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use prometheus::Registry;

use crate::clock::Clock;
use crate::config::{Config, Diff, PassthroughConfig, UploadConfig};
use crate::dedupe::Dedupe;
use crate::error::GatewayError;
use crate::metrics::Metrics;
use crate::middleware::auth::ClientRegistry;
use crate::quota::Quotas;
use crate::sandbox::SandboxHandle;
use crate::session::Sessions;
use crate::store::{ModeSwitch, Redis};
use crate::upstream::Corp;

/// Why a reload applied nothing.
#[derive(Debug, Clone, PartialEq)]
pub enum ReloadError {
    /// The file does not load (its message names the key).
    Invalid(String),
    /// It changes keys only a restart applies (listed).
    RestartRequired(Vec<String>),
}

/// What every request handler shares.
#[derive(Debug)]
pub struct AppState {
    /// The validated configuration the process started with (what needs a restart to change
    /// is read here).
    pub cfg: Arc<Config>,
    /// The configuration last applied (by start or reload): what a reload is compared with.
    pub applied: ArcSwap<Config>,
    /// `[upload]` in force (a reload swaps it; an upload reads it once, at its start).
    pub upload: Arc<ArcSwap<UploadConfig>>,
    /// `[passthrough]` in force (likewise).
    pub passthrough: Arc<ArcSwap<PassthroughConfig>>,
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
    /// `quota_fail_mode` in force (a reload changes it).
    pub quota_mode: Arc<ModeSwitch>,
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
        self.dedupe.forget_media(corp, media_id).await;
    }

    /// Re-reads the config file and applies it whole, or refuses it whole (design §12): every
    /// live key (`Diff::restart_required` says which are not) is put in force at once; a
    /// change to any other key needs a restart, and then nothing is applied. Quota state is
    /// kept by caller name in the store, so it survives; requests in flight finish under the
    /// rules they started with (each reads its limits and deadlines when it starts).
    pub fn reload(&self) -> Result<Diff, ReloadError> {
        let path = self.cfg.source.clone().ok_or_else(|| {
            ReloadError::Invalid("this process was not started from a config file".into())
        })?;
        let new = Config::load(&path, None)
            .map_err(|e| ReloadError::Invalid(format!("{}: {e}", path.display())))?;
        let diff = Diff::between(&self.applied.load(), &new);
        let restart = diff.restart_required();
        if !restart.is_empty() {
            return Err(ReloadError::RestartRequired(restart));
        }
        if new.log.level != self.applied.load().log.level {
            // First: the one step that could still fail (validated, so it should not).
            crate::telemetry::set_log_level(&new.log.directive())
                .map_err(|e| ReloadError::Invalid(format!("{}: log.level: {e}", path.display())))?;
        }
        for (name, c) in &new.corps {
            if let Some(corp) = self.corps.get(name) {
                corp.apply(c);
            }
        }
        self.dedupe.apply(&new.dedupe);
        self.quota_mode.set(new.store.quota_fail_mode);
        self.metrics.init_clients(&new);
        self.upload.store(Arc::new(new.upload.clone()));
        self.passthrough.store(Arc::new(new.passthrough.clone()));
        self.clients
            .store(Arc::new(ClientRegistry::new(&new.clients)));
        self.applied.store(Arc::new(new));
        Ok(diff)
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

    /// Logs and applies a reload (SIGHUP, `POST /admin/reload`, a change of the config file):
    /// one structured event naming every change, old → new (never a secret), or why nothing
    /// was applied.
    pub fn reload_logged(&self, trigger: &str) -> Result<Diff, ReloadError> {
        let result = self.reload();
        self.metrics
            .count_reload(crate::metrics::Reloaded::Config, result.is_ok());
        match &result {
            Ok(diff) => tracing::info!(
                trigger,
                changes = %diff.to_json(),
                "config applied"
            ),
            Err(ReloadError::RestartRequired(keys)) => tracing::error!(
                trigger,
                restart_required = ?keys,
                "configuration reload refused: these keys need a restart; nothing was applied"
            ),
            Err(ReloadError::Invalid(e)) => tracing::error!(
                trigger,
                error = %e,
                "configuration reload rejected; the previous configuration stays in force"
            ),
        }
        result
    }

    /// Readiness (design §12), each check with whether it passes and what it found: the
    /// config is loaded (listeners are up, or nothing would answer); every corp obtained its
    /// legacy token at least once since start (losing it later is an outage callers hear as
    /// 503 / 950301 and the token alerts carry, not a reason to leave the Service); with
    /// `quota_fail_mode = "closed"`, the shared store is up.
    pub fn readiness(&self) -> Vec<(String, bool, String)> {
        let mut checks = vec![("config".to_string(), true, "loaded".to_string())];
        for (name, corp) in &self.corps {
            let (ok, found) = match (corp.tokens.ready(), corp.tokens.obtained()) {
                (true, _) => (true, "token ok"),
                (false, true) => (
                    true,
                    "obtained once; no valid token now (callers get 503 / 950301)",
                ),
                (false, false) => (false, "no token obtained yet"),
            };
            checks.push((format!("corp {name}"), ok, found.to_string()));
        }
        if let Some(redis) = &self.redis {
            let closed = self.quota_mode.get() == crate::store::FailMode::Closed;
            let ok = redis.healthy() || !closed;
            let mode = if closed {
                "needed: quota_fail_mode = closed"
            } else {
                "not needed: quota_fail_mode = open"
            };
            checks.push((
                "store".to_string(),
                ok,
                format!("{} ({mode})", redis.status()),
            ));
        }
        checks
    }

    /// Whether this replica can serve (`readiness` all passes).
    pub fn ready(&self) -> bool {
        self.readiness().iter().all(|(_, ok, _)| *ok)
    }
}
