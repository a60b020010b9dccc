//! Every Prometheus family of design §7, registered into an injected `Registry` (never the
//! global one) so tests can build their own. Label values are bounded: routes come from the
//! route table, clients and corps from config, error codes from Fxiaoke's small code space.

mod labels;
mod reg;

use std::sync::Arc;

use prometheus::{
    HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Registry,
};

use reg::{Reg, CLIENT_DURATION_BUCKETS};

pub use labels::{DedupeResult, FailureKind, QuotaKind, RefreshResult, Reloaded};

/// All of fxgate's metric families, shared: one `Arc` clone per layer call instead of one per
/// family (the access log and quota layers clone it for every request).
#[derive(Debug, Clone)]
pub struct Metrics(Arc<Families>);

impl std::ops::Deref for Metrics {
    type Target = Families;
    fn deref(&self) -> &Families {
        &self.0
    }
}

/// The families, by concern. A new family is one field and one line in its group's `new`,
/// which registers it as it creates it.
#[derive(Debug)]
pub struct Families {
    /// What callers asked and got.
    pub http: Http,
    /// Calls to Fxiaoke and the corp's allowance there.
    pub upstream: Upstream,
    /// The corp access tokens.
    pub token: Token,
    /// The dedupe index.
    pub dedupe: Dedupe,
    /// Callers' quotas.
    pub quota: Quota,
    /// The shared store (Redis).
    pub store: Store,
    /// The process itself: build, tasks, reloads.
    pub process: Process,
}

/// Caller-facing requests.
#[derive(Debug)]
pub struct Http {
    /// `fxgate_requests_total{route,client,status}`
    pub requests: IntCounterVec,
    /// `fxgate_request_duration_seconds{route}`
    pub duration: HistogramVec,
    /// `fxgate_client_request_duration_seconds{client,class}`: per caller and status class
    /// (`2xx`, `4xx`, `5xx`, …), on fewer buckets, so a caller's latency has a view without
    /// multiplying the route histogram by every caller.
    pub client_duration: HistogramVec,
    /// `fxgate_upload_bytes_total{client,route}`
    pub upload_bytes: IntCounterVec,
    /// `fxgate_inflight_uploads`
    pub inflight_uploads: IntGauge,
    /// `fxgate_shed_total`: requests refused with 503 because `server.max_inflight` were in
    /// flight.
    pub shed: IntCounter,
    /// `fxgate_panics_total`: handler panics turned into 500s (a bug each).
    pub panics: IntCounter,
}

/// Fxiaoke, as fxgate calls it.
#[derive(Debug)]
pub struct Upstream {
    /// `fxgate_upstream_requests_total{corp,route,error_code}`
    pub requests: IntCounterVec,
    /// `fxgate_upstream_duration_seconds{route}`
    pub duration: HistogramVec,
    /// `fxgate_upstream_budget_remaining{corp}`
    pub budget_remaining: IntGaugeVec,
    /// `fxgate_upstream_budget_daily_limit{corp}`: the configured daily budget (beyond design
    /// §7, so alerts can compute the fraction left).
    pub budget_limit: IntGaugeVec,
}

/// The corp tokens.
#[derive(Debug)]
pub struct Token {
    /// `fxgate_token_refresh_total{corp,flow,result}`
    pub refresh: IntCounterVec,
    /// `fxgate_token_age_seconds{corp,flow}`, set at scrape time.
    pub age: IntGaugeVec,
    /// `fxgate_token_valid{corp,flow}`: 1 while a usable token is held (beyond design §7, for
    /// the "no valid token" alert), set at scrape time.
    pub valid: IntGaugeVec,
}

/// The dedupe index.
#[derive(Debug)]
pub struct Dedupe {
    /// `fxgate_dedupe_total{result}`
    pub results: IntCounterVec,
    /// `fxgate_dedupe_saved_bytes_total` (the unit last, as Prometheus names go).
    pub saved_bytes: IntCounter,
    /// `fxgate_dedupe_bytes_saved_total`: design §7's name, the same count; kept for one
    /// release so dashboards and rules can move (docs/operations.md, "Upgrades").
    pub bytes_saved: IntCounter,
}

/// Callers' quotas.
#[derive(Debug)]
pub struct Quota {
    /// `fxgate_quota_rejected_total{client,kind}`
    pub rejected: IntCounterVec,
}

/// The shared store.
#[derive(Debug)]
pub struct Store {
    /// `fxgate_store_errors_total{store,op,kind}`: shared-store (Redis) commands that failed.
    pub errors: IntCounterVec,
    /// `fxgate_store_up`: 1 while the shared store answers and accepts fxgate's commands
    /// (registered only with `backend = "redis"`: `register_store`; set at scrape time from
    /// `Redis::healthy`).
    pub up: IntGauge,
    /// `fxgate_store_calls_total{store,op}`: round trips to the shared store (one command,
    /// script or pipeline each), so the cost per request can be read off a dashboard.
    pub calls: IntCounterVec,
}

/// The process.
#[derive(Debug)]
pub struct Process {
    /// `fxgate_build_info{version}`
    pub build_info: IntGaugeVec,
    /// `fxgate_runtime_tasks`: tokio tasks alive, set at each scrape (a leak shows as growth).
    pub runtime_tasks: IntGauge,
    /// `fxgate_reloads_total{what,result}`: reloads of the callers (`config`) and of the TLS
    /// files (`tls`), by result (`ok`, `error`).
    pub reloads: IntCounterVec,
    /// `fxgate_reload_ok{what}`: 1 when the last reload of that kind applied (0: the files on
    /// disk are not what runs).
    pub reload_ok: IntGaugeVec,
}

impl Http {
    fn new(r: &Reg<'_>) -> prometheus::Result<Self> {
        Ok(Self {
            requests: r.counters(
                "fxgate_requests_total",
                "Requests answered, by route, caller and HTTP status",
                &["route", "client", "status"],
            )?,
            duration: r.durations(
                "fxgate_request_duration_seconds",
                "Time from request head to response head",
            )?,
            client_duration: r.keep(HistogramVec::new(
                HistogramOpts::new(
                    "fxgate_client_request_duration_seconds",
                    "Time from request head to response head, by caller and status class",
                )
                .buckets(CLIENT_DURATION_BUCKETS.to_vec()),
                &["client", "class"],
            ))?,
            upload_bytes: r.counters(
                "fxgate_upload_bytes_total",
                "File bytes received from callers",
                &["client", "route"],
            )?,
            inflight_uploads: r.gauge("fxgate_inflight_uploads", "Uploads streaming now")?,
            shed: r.counter("fxgate_shed_total", "Requests shed with 503 (max_inflight)")?,
            panics: r.counter("fxgate_panics_total", "Handler panics answered with a 500")?,
        })
    }
}

impl Upstream {
    fn new(r: &Reg<'_>) -> prometheus::Result<Self> {
        Ok(Self {
            requests: r.counters(
                "fxgate_upstream_requests_total",
                "Calls to Fxiaoke by errorCode of the answer",
                &["corp", "route", "error_code"],
            )?,
            duration: r.durations(
                "fxgate_upstream_duration_seconds",
                "Time Fxiaoke took to answer",
            )?,
            budget_remaining: r.gauges(
                "fxgate_upstream_budget_remaining",
                "Calls left in the corp's daily budget",
                &["corp"],
            )?,
            budget_limit: r.gauges(
                "fxgate_upstream_budget_daily_limit",
                "The corp's configured daily call budget",
                &["corp"],
            )?,
        })
    }
}

impl Token {
    fn new(r: &Reg<'_>) -> prometheus::Result<Self> {
        Ok(Self {
            refresh: r.counters(
                "fxgate_token_refresh_total",
                "Token endpoint calls by flow (legacy, oauth) and result (ok, same_token, error, shared)",
                &["corp", "flow", "result"],
            )?,
            age: r.gauges(
                "fxgate_token_age_seconds",
                "Age of the corp token in use, by flow",
                &["corp", "flow"],
            )?,
            valid: r.gauges(
                "fxgate_token_valid",
                "1 while the corp holds a usable access token of that flow",
                &["corp", "flow"],
            )?,
        })
    }
}

impl Dedupe {
    fn new(r: &Reg<'_>) -> prometheus::Result<Self> {
        let results = r.counters(
            "fxgate_dedupe_total",
            "Dedupe lookups by result (hit_claim, hit_stream, miss)",
            &["result"],
        )?;
        // Zero-valued series from the start, so rate() and alerts see them before the first
        // event.
        for result in DedupeResult::ALL {
            results.with_label_values(&[result.as_str()]);
        }
        Ok(Self {
            results,
            saved_bytes: r.counter(
                "fxgate_dedupe_saved_bytes_total",
                "File bytes not uploaded to Fxiaoke thanks to dedupe",
            )?,
            bytes_saved: r.counter(
                "fxgate_dedupe_bytes_saved_total",
                "Deprecated: fxgate_dedupe_saved_bytes_total, the same count (removed in the next release)",
            )?,
        })
    }
}

impl Quota {
    fn new(r: &Reg<'_>) -> prometheus::Result<Self> {
        Ok(Self {
            rejected: r.counters(
                "fxgate_quota_rejected_total",
                "Requests refused by a caller quota",
                &["client", "kind"],
            )?,
        })
    }
}

impl Store {
    fn new(r: &Reg<'_>) -> prometheus::Result<Self> {
        Ok(Self {
            errors: r.counters(
                "fxgate_store_errors_total",
                "Shared-store (Redis) commands that failed, by store, operation and kind (io, timeout, oom, readonly, noperm, noscript, crossslot, other)",
                &["store", "op", "kind"],
            )?,
            // Registered only with a shared store (`register_store`): a single replica has no
            // store to watch.
            up: IntGauge::new(
                "fxgate_store_up",
                "1 while the shared store (Redis) answers; 0 while fxgate runs on its fail modes",
            )?,
            calls: r.counters(
                "fxgate_store_calls_total",
                "Round trips to the shared store (Redis): one command, script or pipeline each",
                &["store", "op"],
            )?,
        })
    }
}

impl Process {
    fn new(r: &Reg<'_>) -> prometheus::Result<Self> {
        let build_info = r.gauges("fxgate_build_info", "Build version", &["version"])?;
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        let reloads = r.counters(
            "fxgate_reloads_total",
            "Reloads of the callers (config) and the TLS files (tls), by result",
            &["what", "result"],
        )?;
        let reload_ok = r.gauges(
            "fxgate_reload_ok",
            "1 when the last reload of the config or the TLS files applied; 0 when it was refused",
            &["what"],
        )?;
        for what in Reloaded::ALL {
            reload_ok.with_label_values(&[what.as_str()]).set(1);
            for result in ["ok", "error"] {
                reloads.with_label_values(&[what.as_str(), result]);
            }
        }
        Ok(Self {
            build_info,
            runtime_tasks: r.gauge("fxgate_runtime_tasks", "Tokio tasks alive in the process")?,
            reloads,
            reload_ok,
        })
    }
}

impl Metrics {
    /// Creates every family, registered into `registry`.
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let r = Reg(registry);
        let families = Families {
            http: Http::new(&r)?,
            upstream: Upstream::new(&r)?,
            token: Token::new(&r)?,
            dedupe: Dedupe::new(&r)?,
            quota: Quota::new(&r)?,
            store: Store::new(&r)?,
            process: Process::new(&r)?,
        };
        // process_resident_memory_bytes, process_open_fds, process_cpu_seconds_total, …
        #[cfg(target_os = "linux")]
        registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        Ok(Self(Arc::new(families)))
    }

    /// Creates the zero-valued per-corp and per-caller series (at start and after a reload).
    pub fn init_series(&self, cfg: &crate::config::Config) {
        for (name, corp) in &cfg.corps {
            for flow in crate::route::ApiStyle::ALL {
                for result in RefreshResult::ALL {
                    self.token
                        .refresh
                        .with_label_values(&[name, flow.label(), result.as_str()]);
                }
            }
            if let Some(budget) = corp.daily_call_budget {
                self.upstream
                    .budget_limit
                    .with_label_values(&[name])
                    .set(budget as i64);
                self.upstream
                    .budget_remaining
                    .with_label_values(&[name])
                    .set(budget as i64);
            }
        }
        self.init_clients(cfg);
    }

    /// The zero series of each caller's quota rejections (at start and after a reload, which
    /// never resets a gauge the corps' live counters own).
    pub fn init_clients(&self, cfg: &crate::config::Config) {
        for client in &cfg.clients {
            for kind in QuotaKind::ALL {
                self.quota
                    .rejected
                    .with_label_values(&[&client.name, kind.as_str()]);
            }
        }
    }

    /// With `backend = "redis"`: registers `fxgate_store_up` (a single replica has no store
    /// to watch) and zero-initialises the store error series alerts look at (every kind the
    /// commands a healthy store must accept can meet).
    pub fn register_store(&self, registry: &Registry) -> prometheus::Result<()> {
        registry.register(Box::new(self.store.up.clone()))?;
        for (store, ops) in [
            ("token", &["get", "put", "lease", "calls"][..]),
            ("dedupe", &["get", "put", "forget", "lease"][..]),
            ("quota", &["rate", "uploads", "bytes"][..]),
            ("budget", &["window", "daily"][..]),
        ] {
            for op in ops {
                for kind in FailureKind::ALL {
                    self.store
                        .errors
                        .with_label_values(&[store, op, kind.as_str()]);
                }
            }
        }
        Ok(())
    }

    /// Counts one dedupe outcome and the file bytes it kept from Fxiaoke.
    pub fn count_dedupe(&self, result: DedupeResult, bytes_saved: u64) {
        self.dedupe
            .results
            .with_label_values(&[result.as_str()])
            .inc();
        self.dedupe.saved_bytes.inc_by(bytes_saved);
        self.dedupe.bytes_saved.inc_by(bytes_saved);
    }

    /// Counts a reload and whether it applied.
    pub fn count_reload(&self, what: Reloaded, applied: bool) {
        let result = if applied { "ok" } else { "error" };
        self.process
            .reloads
            .with_label_values(&[what.as_str(), result])
            .inc();
        self.process
            .reload_ok
            .with_label_values(&[what.as_str()])
            .set(i64::from(applied));
    }

    /// Records one answered request's duration under its route, and under its caller and
    /// status class.
    pub fn observe_request(&self, route: &str, client: &str, status: http::StatusCode, took: f64) {
        self.http.duration.with_label_values(&[route]).observe(took);
        let class = match status.as_u16() / 100 {
            1 => "1xx",
            2 => "2xx",
            3 => "3xx",
            4 => "4xx",
            _ => "5xx",
        };
        self.http
            .client_duration
            .with_label_values(&[client, class])
            .observe(took);
    }
}
