//! Every Prometheus family of design §7, registered into an injected `Registry` (never the
//! global one) so tests can build their own. Label values are bounded: routes come from the
//! route table, clients and corps from config, error codes from Fxiaoke's small code space.

mod labels;

use std::sync::Arc;

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

pub use labels::{DedupeResult, QuotaKind, RefreshResult, Reloaded};

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

/// The families themselves.
#[derive(Debug)]
pub struct Families {
    /// `fxgate_requests_total{route,client,status}`
    pub requests: IntCounterVec,
    /// `fxgate_request_duration_seconds{route}`
    pub request_duration: HistogramVec,
    /// `fxgate_upload_bytes_total{client,route}`
    pub upload_bytes: IntCounterVec,
    /// `fxgate_inflight_uploads`
    pub inflight_uploads: IntGauge,
    /// `fxgate_runtime_tasks`: tokio tasks alive, set at each scrape (a leak shows as growth).
    pub runtime_tasks: IntGauge,
    /// `fxgate_upstream_requests_total{corp,route,error_code}`
    pub upstream_requests: IntCounterVec,
    /// `fxgate_upstream_duration_seconds{route}`
    pub upstream_duration: HistogramVec,
    /// `fxgate_token_refresh_total{corp,flow,result}`
    pub token_refresh: IntCounterVec,
    /// `fxgate_token_age_seconds{corp,flow}`, set at scrape time.
    pub token_age: IntGaugeVec,
    /// `fxgate_dedupe_total{result}`
    pub dedupe: IntCounterVec,
    /// `fxgate_dedupe_bytes_saved_total`
    pub dedupe_bytes_saved: IntCounter,
    /// `fxgate_quota_rejected_total{client,kind}`
    pub quota_rejected: IntCounterVec,
    /// `fxgate_upstream_budget_remaining{corp}`
    pub upstream_budget_remaining: IntGaugeVec,
    /// `fxgate_build_info{version}`
    pub build_info: IntGaugeVec,
    /// `fxgate_token_valid{corp,flow}`: 1 while a usable token is held (beyond design §7, for the
    /// "no valid token" alert), set at scrape time.
    pub token_valid: IntGaugeVec,
    /// `fxgate_upstream_budget_daily_limit{corp}`: the configured daily budget (beyond design
    /// §7, so alerts can compute the fraction left).
    pub upstream_budget_limit: IntGaugeVec,
    /// `fxgate_store_errors_total{store,op,kind}`: shared-store (Redis) commands that failed.
    pub store_errors: IntCounterVec,
    /// `fxgate_store_up`: 1 while the shared store answers and accepts fxgate's commands
    /// (only with `backend = "redis"`; set at scrape time from `Redis::healthy`).
    pub store_up: IntGauge,
    /// `fxgate_store_calls_total{store,op}`: round trips to the shared store (one command,
    /// script or pipeline each), so the cost per request can be read off a dashboard.
    pub store_calls: IntCounterVec,
    /// `fxgate_panics_total`: handler panics turned into 500s (a bug each).
    pub panics: IntCounter,
    /// `fxgate_shed_total`: requests refused with 503 because `server.max_inflight` were in
    /// flight.
    pub shed: IntCounter,
    /// `fxgate_reloads_total{what,result}`: reloads of the callers (`config`) and of the TLS
    /// files (`tls`), by result (`ok`, `error`).
    pub reloads: IntCounterVec,
    /// `fxgate_reload_ok{what}`: 1 when the last reload of that kind applied (0: the files on
    /// disk are not what runs).
    pub reload_ok: IntGaugeVec,
}

/// From 1 ms (digest claims) to 10 minutes (20 MiB on a slow link), with a bound at each value
/// an SLO or alert is written against (0.1, 0.25, 0.5, 1, 2.5, 5 s): `histogram_quantile` is
/// exact only at bucket bounds, and "p99 under 1 s" needs a bucket ending at 1 s.
const DURATION_BUCKETS: [f64; 18] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    120.0, 300.0, 600.0,
];

fn counters(name: &str, help: &str, labels: &[&str]) -> prometheus::Result<IntCounterVec> {
    IntCounterVec::new(Opts::new(name, help), labels)
}

fn gauges(name: &str, help: &str, labels: &[&str]) -> prometheus::Result<IntGaugeVec> {
    IntGaugeVec::new(Opts::new(name, help), labels)
}

fn histograms(name: &str, help: &str) -> prometheus::Result<HistogramVec> {
    HistogramVec::new(
        HistogramOpts::new(name, help).buckets(DURATION_BUCKETS.to_vec()),
        &["route"],
    )
}

fn store_families() -> prometheus::Result<(IntCounterVec, IntGauge, IntCounterVec)> {
    Ok((
        counters(
            "fxgate_store_errors_total",
            "Shared-store (Redis) commands that failed, by store, operation and kind (io, timeout, oom, readonly, noperm, noscript, crossslot, other)",
            &["store", "op", "kind"],
        )?,
        IntGauge::new(
            "fxgate_store_up",
            "1 while the shared store (Redis) answers; 0 while fxgate runs on its fail modes",
        )?,
        counters(
            "fxgate_store_calls_total",
            "Round trips to the shared store (Redis): one command, script or pipeline each",
            &["store", "op"],
        )?,
    ))
}

fn token_families() -> prometheus::Result<(IntCounterVec, IntGaugeVec, IntGaugeVec)> {
    let refresh = counters(
        "fxgate_token_refresh_total",
        "Token endpoint calls by flow (legacy, oauth) and result (ok, same_token, error, shared)",
        &["corp", "flow", "result"],
    )?;
    let age = gauges(
        "fxgate_token_age_seconds",
        "Age of the corp token in use, by flow",
        &["corp", "flow"],
    )?;
    let valid = gauges(
        "fxgate_token_valid",
        "1 while the corp holds a usable access token of that flow",
        &["corp", "flow"],
    )?;
    Ok((refresh, age, valid))
}

fn reload_families() -> prometheus::Result<(IntCounterVec, IntGaugeVec)> {
    let reloads = counters(
        "fxgate_reloads_total",
        "Reloads of the callers (config) and the TLS files (tls), by result",
        &["what", "result"],
    )?;
    let reload_ok = gauges(
        "fxgate_reload_ok",
        "1 when the last reload of the config or the TLS files applied; 0 when it was refused",
        &["what"],
    )?;
    Ok((reloads, reload_ok))
}

impl Families {
    fn new() -> prometheus::Result<Self> {
        let (reloads, reload_ok) = reload_families()?;
        let (store_errors, store_up, store_calls) = store_families()?;
        let (token_refresh, token_age, token_valid) = token_families()?;
        Ok(Self {
            requests: counters(
                "fxgate_requests_total",
                "Requests answered, by route, caller and HTTP status",
                &["route", "client", "status"],
            )?,
            request_duration: histograms(
                "fxgate_request_duration_seconds",
                "Time from request head to response head",
            )?,
            upload_bytes: counters(
                "fxgate_upload_bytes_total",
                "File bytes received from callers",
                &["client", "route"],
            )?,
            inflight_uploads: IntGauge::new("fxgate_inflight_uploads", "Uploads streaming now")?,
            runtime_tasks: IntGauge::new(
                "fxgate_runtime_tasks",
                "Tokio tasks alive in the process",
            )?,
            upstream_requests: counters(
                "fxgate_upstream_requests_total",
                "Calls to Fxiaoke by errorCode of the answer",
                &["corp", "route", "error_code"],
            )?,
            upstream_duration: histograms(
                "fxgate_upstream_duration_seconds",
                "Time Fxiaoke took to answer",
            )?,
            token_refresh,
            token_age,
            dedupe: counters(
                "fxgate_dedupe_total",
                "Dedupe lookups by result (hit_claim, hit_stream, miss)",
                &["result"],
            )?,
            dedupe_bytes_saved: IntCounter::new(
                "fxgate_dedupe_bytes_saved_total",
                "File bytes not uploaded to Fxiaoke thanks to dedupe",
            )?,
            quota_rejected: counters(
                "fxgate_quota_rejected_total",
                "Requests refused by a caller quota",
                &["client", "kind"],
            )?,
            upstream_budget_remaining: gauges(
                "fxgate_upstream_budget_remaining",
                "Calls left in the corp's daily budget",
                &["corp"],
            )?,
            build_info: gauges("fxgate_build_info", "Build version", &["version"])?,
            token_valid,
            upstream_budget_limit: gauges(
                "fxgate_upstream_budget_daily_limit",
                "The corp's configured daily call budget",
                &["corp"],
            )?,
            store_errors,
            store_up,
            store_calls,
            panics: IntCounter::new("fxgate_panics_total", "Handler panics answered with a 500")?,
            shed: IntCounter::new("fxgate_shed_total", "Requests shed with 503 (max_inflight)")?,
            reloads,
            reload_ok,
        })
    }

    /// Registers every family (`fxgate_store_up` only with a shared store: `register_store`).
    fn register_into(&self, registry: &Registry) -> prometheus::Result<()> {
        let all: [Box<dyn prometheus::core::Collector>; 22] = [
            Box::new(self.reloads.clone()),
            Box::new(self.reload_ok.clone()),
            Box::new(self.panics.clone()),
            Box::new(self.shed.clone()),
            Box::new(self.requests.clone()),
            Box::new(self.request_duration.clone()),
            Box::new(self.upload_bytes.clone()),
            Box::new(self.inflight_uploads.clone()),
            Box::new(self.runtime_tasks.clone()),
            Box::new(self.upstream_requests.clone()),
            Box::new(self.upstream_duration.clone()),
            Box::new(self.token_refresh.clone()),
            Box::new(self.token_age.clone()),
            Box::new(self.dedupe.clone()),
            Box::new(self.dedupe_bytes_saved.clone()),
            Box::new(self.quota_rejected.clone()),
            Box::new(self.upstream_budget_remaining.clone()),
            Box::new(self.build_info.clone()),
            Box::new(self.token_valid.clone()),
            Box::new(self.upstream_budget_limit.clone()),
            Box::new(self.store_errors.clone()),
            Box::new(self.store_calls.clone()),
        ];
        for c in all {
            registry.register(c)?;
        }
        // process_resident_memory_bytes, process_open_fds, process_cpu_seconds_total, …
        #[cfg(target_os = "linux")]
        registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        Ok(())
    }
}

impl Metrics {
    /// Creates every family and registers it into `registry`.
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let m = Families::new()?;
        m.register_into(registry)?;
        // Zero-valued series from the start, so rate() and alerts see them before the first event.
        for result in DedupeResult::ALL {
            m.dedupe.with_label_values(&[result.as_str()]);
        }
        m.build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        for what in Reloaded::ALL {
            m.reload_ok.with_label_values(&[what.as_str()]).set(1);
            for result in ["ok", "error"] {
                m.reloads.with_label_values(&[what.as_str(), result]);
            }
        }
        Ok(Self(Arc::new(m)))
    }

    /// Creates the zero-valued per-corp and per-caller series (at start and after a reload).
    pub fn init_series(&self, cfg: &crate::config::Config) {
        for (name, corp) in &cfg.corps {
            for flow in crate::route::ApiStyle::ALL {
                for result in RefreshResult::ALL {
                    self.token_refresh
                        .with_label_values(&[name, flow.label(), result.as_str()]);
                }
            }
            if let Some(budget) = corp.daily_call_budget {
                self.upstream_budget_limit
                    .with_label_values(&[name])
                    .set(budget as i64);
                self.upstream_budget_remaining
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
                self.quota_rejected
                    .with_label_values(&[&client.name, kind.as_str()]);
            }
        }
    }

    /// With `backend = "redis"`: registers `fxgate_store_up` (a single replica has no store
    /// to watch) and zero-initialises the store error series alerts look at (every kind the
    /// commands a healthy store must accept can meet).
    pub fn register_store(&self, registry: &Registry) -> prometheus::Result<()> {
        registry.register(Box::new(self.store_up.clone()))?;
        for (store, ops) in [
            ("token", &["get", "put", "lease", "calls"][..]),
            ("dedupe", &["get", "put", "forget", "lease"][..]),
            ("quota", &["rate", "uploads", "bytes"][..]),
            ("budget", &["window", "daily"][..]),
        ] {
            for op in ops {
                for kind in crate::store::FailureKind::ALL {
                    self.store_errors
                        .with_label_values(&[store, op, kind.as_str()]);
                }
            }
        }
        Ok(())
    }

    /// Counts one dedupe outcome and the file bytes it kept from Fxiaoke.
    pub fn count_dedupe(&self, result: DedupeResult, bytes_saved: u64) {
        self.dedupe.with_label_values(&[result.as_str()]).inc();
        self.dedupe_bytes_saved.inc_by(bytes_saved);
    }

    /// Counts a reload and whether it applied.
    pub fn count_reload(&self, what: Reloaded, applied: bool) {
        let result = if applied { "ok" } else { "error" };
        self.reloads
            .with_label_values(&[what.as_str(), result])
            .inc();
        self.reload_ok
            .with_label_values(&[what.as_str()])
            .set(i64::from(applied));
    }

    /// A histogram of the request duration for `route`.
    pub fn request_timer(&self, route: &str) -> Histogram {
        self.request_duration.with_label_values(&[route])
    }
}
