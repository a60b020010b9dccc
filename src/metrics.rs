//! Every Prometheus family of design §7, registered into an injected `Registry` (never the
//! global one) so tests can build their own. Label values are bounded: routes come from the
//! route table, clients and corps from config, error codes from Fxiaoke's small code space.

use std::sync::Arc;

use prometheus::{
    exponential_buckets, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, Opts, Registry,
};

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
    /// `fxgate_upstream_requests_total{corp,route,error_code}`
    pub upstream_requests: IntCounterVec,
    /// `fxgate_upstream_duration_seconds{route}`
    pub upstream_duration: HistogramVec,
    /// `fxgate_token_refresh_total{corp,result}`
    pub token_refresh: IntCounterVec,
    /// `fxgate_token_age_seconds{corp}`, set at scrape time.
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
    /// `fxgate_token_valid{corp}`: 1 while a usable token is held (beyond design §7, for the
    /// "no valid token" alert), set at scrape time.
    pub token_valid: IntGaugeVec,
    /// `fxgate_upstream_budget_daily_limit{corp}`: the configured daily budget (beyond design
    /// §7, so alerts can compute the fraction left).
    pub upstream_budget_limit: IntGaugeVec,
    /// `fxgate_store_errors_total{store,op}`: shared-store (Redis) commands that failed.
    pub store_errors: IntCounterVec,
    /// `fxgate_store_up`: 1 while the shared store answers (only with `backend = "redis"`).
    pub store_up: IntGauge,
}

/// `fxgate_dedupe_total{result}`: how an upload met the index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DedupeResult {
    /// A claimed digest was found before the body was read.
    HitClaim,
    /// The whole file came and was found.
    HitStream,
    /// The file was new.
    Miss,
}

impl DedupeResult {
    /// Every value, for zero-initialised series.
    pub const ALL: [Self; 3] = [Self::HitClaim, Self::HitStream, Self::Miss];

    /// The label value.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::HitClaim => "hit_claim",
            Self::HitStream => "hit_stream",
            Self::Miss => "miss",
        }
    }
}

/// `fxgate_token_refresh_total{result}`: what a turn at the token gave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefreshResult {
    /// A new token.
    Ok,
    /// Fxiaoke handed back the token already held (its same-token window).
    SameToken,
    /// The call failed.
    Error,
    /// Another replica's token was taken over from the shared store.
    Shared,
}

impl RefreshResult {
    /// Every value, for zero-initialised series.
    pub const ALL: [Self; 4] = [Self::Ok, Self::SameToken, Self::Error, Self::Shared];

    /// The label value.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::SameToken => "same_token",
            Self::Error => "error",
            Self::Shared => "shared",
        }
    }
}

/// `fxgate_quota_rejected_total{kind}`: which caller limit refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaKind {
    /// `requests_per_minute`.
    RequestsPerMinute,
    /// `max_concurrent_uploads`.
    MaxConcurrentUploads,
    /// `bytes_per_day`.
    BytesPerDay,
    /// The route allow-list.
    Route,
    /// The shared store is down and quotas fail closed.
    StoreUnavailable,
}

impl QuotaKind {
    /// Every value, for zero-initialised series.
    pub const ALL: [Self; 5] = [
        Self::RequestsPerMinute,
        Self::MaxConcurrentUploads,
        Self::BytesPerDay,
        Self::Route,
        Self::StoreUnavailable,
    ];

    /// The label value (also the `kind` of a 942901).
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::RequestsPerMinute => "requests_per_minute",
            Self::MaxConcurrentUploads => "max_concurrent_uploads",
            Self::BytesPerDay => "bytes_per_day",
            Self::Route => "route",
            Self::StoreUnavailable => "store_unavailable",
        }
    }
}

/// Buckets from 1 ms to about 9 minutes: small JSON calls and 20 MiB uploads on slow links.
fn duration_buckets() -> Vec<f64> {
    exponential_buckets(0.001, 2.5, 15).unwrap_or_default()
}

impl Metrics {
    /// Creates every family and registers it into `registry`.
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let m = Families {
            requests: IntCounterVec::new(
                Opts::new(
                    "fxgate_requests_total",
                    "Requests answered, by route, caller and HTTP status",
                ),
                &["route", "client", "status"],
            )?,
            request_duration: HistogramVec::new(
                HistogramOpts::new(
                    "fxgate_request_duration_seconds",
                    "Time from request head to response head",
                )
                .buckets(duration_buckets()),
                &["route"],
            )?,
            upload_bytes: IntCounterVec::new(
                Opts::new(
                    "fxgate_upload_bytes_total",
                    "File bytes received from callers",
                ),
                &["client", "route"],
            )?,
            inflight_uploads: IntGauge::new(
                "fxgate_inflight_uploads",
                "Uploads being streamed right now",
            )?,
            upstream_requests: IntCounterVec::new(
                Opts::new(
                    "fxgate_upstream_requests_total",
                    "Calls to Fxiaoke by errorCode of the answer",
                ),
                &["corp", "route", "error_code"],
            )?,
            upstream_duration: HistogramVec::new(
                HistogramOpts::new(
                    "fxgate_upstream_duration_seconds",
                    "Time Fxiaoke took to answer",
                )
                .buckets(duration_buckets()),
                &["route"],
            )?,
            token_refresh: IntCounterVec::new(
                Opts::new(
                    "fxgate_token_refresh_total",
                    "Token endpoint calls by result (ok, same_token, error)",
                ),
                &["corp", "result"],
            )?,
            token_age: IntGaugeVec::new(
                Opts::new("fxgate_token_age_seconds", "Age of the corp token in use"),
                &["corp"],
            )?,
            dedupe: IntCounterVec::new(
                Opts::new(
                    "fxgate_dedupe_total",
                    "Dedupe lookups by result (hit_claim, hit_stream, miss)",
                ),
                &["result"],
            )?,
            dedupe_bytes_saved: IntCounter::new(
                "fxgate_dedupe_bytes_saved_total",
                "File bytes not uploaded to Fxiaoke thanks to dedupe",
            )?,
            quota_rejected: IntCounterVec::new(
                Opts::new(
                    "fxgate_quota_rejected_total",
                    "Requests refused by a caller quota",
                ),
                &["client", "kind"],
            )?,
            upstream_budget_remaining: IntGaugeVec::new(
                Opts::new(
                    "fxgate_upstream_budget_remaining",
                    "Calls left in the corp's daily budget",
                ),
                &["corp"],
            )?,
            build_info: IntGaugeVec::new(
                Opts::new("fxgate_build_info", "Build version"),
                &["version"],
            )?,
            token_valid: IntGaugeVec::new(
                Opts::new(
                    "fxgate_token_valid",
                    "1 while the corp holds a usable access token",
                ),
                &["corp"],
            )?,
            upstream_budget_limit: IntGaugeVec::new(
                Opts::new(
                    "fxgate_upstream_budget_daily_limit",
                    "The corp's configured daily call budget",
                ),
                &["corp"],
            )?,
            store_errors: IntCounterVec::new(
                Opts::new(
                    "fxgate_store_errors_total",
                    "Shared-store (Redis) commands that failed, by store and operation",
                ),
                &["store", "op"],
            )?,
            store_up: IntGauge::new(
                "fxgate_store_up",
                "1 while the shared store (Redis) answers; 0 while fxgate runs on its fail modes",
            )?,
        };
        registry.register(Box::new(m.token_valid.clone()))?;
        registry.register(Box::new(m.store_errors.clone()))?;
        registry.register(Box::new(m.upstream_budget_limit.clone()))?;
        // Zero-valued series from the start, so rate() and alerts see them before the first event.
        for result in DedupeResult::ALL {
            m.dedupe.with_label_values(&[result.as_str()]);
        }
        registry.register(Box::new(m.requests.clone()))?;
        registry.register(Box::new(m.request_duration.clone()))?;
        registry.register(Box::new(m.upload_bytes.clone()))?;
        registry.register(Box::new(m.inflight_uploads.clone()))?;
        registry.register(Box::new(m.upstream_requests.clone()))?;
        registry.register(Box::new(m.upstream_duration.clone()))?;
        registry.register(Box::new(m.token_refresh.clone()))?;
        registry.register(Box::new(m.token_age.clone()))?;
        registry.register(Box::new(m.dedupe.clone()))?;
        registry.register(Box::new(m.dedupe_bytes_saved.clone()))?;
        registry.register(Box::new(m.quota_rejected.clone()))?;
        registry.register(Box::new(m.upstream_budget_remaining.clone()))?;
        registry.register(Box::new(m.build_info.clone()))?;
        m.build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        // process_resident_memory_bytes, process_open_fds, process_cpu_seconds_total, …
        #[cfg(target_os = "linux")]
        registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        Ok(Self(Arc::new(m)))
    }

    /// Creates the zero-valued per-corp and per-caller series (at start and after a reload).
    pub fn init_series(&self, cfg: &crate::config::Config) {
        for (name, corp) in &cfg.corps {
            for result in RefreshResult::ALL {
                self.token_refresh
                    .with_label_values(&[name, result.as_str()]);
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
        for client in &cfg.clients {
            for kind in QuotaKind::ALL {
                self.quota_rejected
                    .with_label_values(&[&client.name, kind.as_str()]);
            }
        }
    }

    /// With `backend = "redis"`: registers `fxgate_store_up` (a single replica has no store
    /// to watch) and zero-initialises the store error series alerts look at.
    pub fn register_store(&self, registry: &Registry) -> prometheus::Result<()> {
        registry.register(Box::new(self.store_up.clone()))?;
        for (store, ops) in [
            ("token", &["get", "put", "lease", "calls"][..]),
            ("dedupe", &["get", "put", "forget", "lease"][..]),
            ("quota", &["rate", "uploads", "bytes"][..]),
            ("budget", &["window", "daily"][..]),
        ] {
            for op in ops {
                self.store_errors.with_label_values(&[store, op]);
            }
        }
        Ok(())
    }

    /// Counts one dedupe outcome and the file bytes it kept from Fxiaoke.
    pub fn count_dedupe(&self, result: DedupeResult, bytes_saved: u64) {
        self.dedupe.with_label_values(&[result.as_str()]).inc();
        self.dedupe_bytes_saved.inc_by(bytes_saved);
    }

    /// A histogram of the request duration for `route`.
    pub fn request_timer(&self, route: &str) -> Histogram {
        self.request_duration.with_label_values(&[route])
    }
}
