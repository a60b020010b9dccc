//! Every Prometheus family of design §7, registered into an injected `Registry` (never the
//! global one) so tests can build their own. Label values are bounded: routes come from the
//! route table, clients and corps from config, error codes from Fxiaoke's small code space.

mod labels;

use std::sync::Arc;

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

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
    /// `fxgate_dedupe_bytes_saved_total`
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

/// From 1 ms (digest claims) to 10 minutes (20 MiB on a slow link), with a bound at each value
/// an SLO or alert is written against (0.1, 0.25, 0.5, 1, 2.5, 5 s): `histogram_quantile` is
/// exact only at bucket bounds, and "p99 under 1 s" needs a bucket ending at 1 s.
const DURATION_BUCKETS: [f64; 18] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    120.0, 300.0, 600.0,
];

/// Creates families and registers each as it is created.
struct Reg<'r>(&'r Registry);

impl Reg<'_> {
    fn keep<C: prometheus::core::Collector + Clone + 'static>(
        &self,
        c: prometheus::Result<C>,
    ) -> prometheus::Result<C> {
        let c = c?;
        self.0.register(Box::new(c.clone()))?;
        Ok(c)
    }

    fn counters(
        &self,
        name: &str,
        help: &str,
        labels: &[&str],
    ) -> prometheus::Result<IntCounterVec> {
        self.keep(IntCounterVec::new(Opts::new(name, help), labels))
    }

    fn counter(&self, name: &str, help: &str) -> prometheus::Result<IntCounter> {
        self.keep(IntCounter::new(name, help))
    }

    fn gauges(&self, name: &str, help: &str, labels: &[&str]) -> prometheus::Result<IntGaugeVec> {
        self.keep(IntGaugeVec::new(Opts::new(name, help), labels))
    }

    fn gauge(&self, name: &str, help: &str) -> prometheus::Result<IntGauge> {
        self.keep(IntGauge::new(name, help))
    }

    fn durations(&self, name: &str, help: &str) -> prometheus::Result<HistogramVec> {
        let opts = HistogramOpts::new(name, help).buckets(DURATION_BUCKETS.to_vec());
        self.keep(HistogramVec::new(opts, &["route"]))
    }
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
            bytes_saved: r.counter(
                "fxgate_dedupe_bytes_saved_total",
                "File bytes not uploaded to Fxiaoke thanks to dedupe",
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

    /// A histogram of the request duration for `route`.
    pub fn request_timer(&self, route: &str) -> Histogram {
        self.http.duration.with_label_values(&[route])
    }
}
