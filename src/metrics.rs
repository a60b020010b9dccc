//! Every Prometheus family of design §7, registered into an injected `Registry` (never the
//! global one) so tests can build their own. Label values are bounded: routes come from the
//! route table, clients and corps from config, error codes from Fxiaoke's small code space.

use prometheus::{
    exponential_buckets, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, Opts, Registry,
};

/// All of fxgate's metric families. Cheap to clone (each family is an `Arc` inside).
#[derive(Debug, Clone)]
pub struct Metrics {
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
}

/// Buckets from 1 ms to about 9 minutes: small JSON calls and 20 MiB uploads on slow links.
fn duration_buckets() -> Vec<f64> {
    exponential_buckets(0.001, 2.5, 15).unwrap_or_default()
}

impl Metrics {
    /// Creates every family and registers it into `registry`.
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let m = Self {
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
        };
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
        Ok(m)
    }

    /// A histogram of the request duration for `route`.
    pub fn request_timer(&self, route: &str) -> Histogram {
        self.request_duration.with_label_values(&[route])
    }
}
