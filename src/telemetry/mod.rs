//! Log and trace setup, the only place either is decided.
//!
//! Logs: `tracing-subscriber` with an `EnvFilter` (`RUST_LOG`, default `info`), pretty or JSON
//! lines on stderr. Traces: an OpenTelemetry layer beside it turns fxgate's spans (`request`,
//! `upstream`, `token_fetch`, `dedupe_lookup`) into OpenTelemetry spans with W3C ids, whatever
//! `RUST_LOG` says (its own filter: fxgate's spans at `info`, no events). They are exported over
//! OTLP/HTTP when `tracing.otlp_endpoint` is set; otherwise they still carry the caller's trace
//! on to Fxiaoke and into the access log, and are dropped.

mod otlp;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use opentelemetry_sdk::Resource;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer as _};

use crate::config::{LogFormat, TracingConfig};

/// The installed span pipeline; `shutdown` exports what is still queued.
#[derive(Debug)]
pub struct Telemetry {
    provider: SdkTracerProvider,
}

impl Telemetry {
    /// Flushes and stops the exporter (bounded by `tracing.export_timeout`).
    pub async fn shutdown(self) {
        let provider = self.provider;
        // The SDK blocks while its export thread finishes, and that export runs on this
        // runtime: off the async workers.
        let _ = tokio::task::spawn_blocking(move || provider.shutdown()).await;
    }
}

/// Logs only (the sandbox command); a second call is ignored (tests).
pub fn init_logs(format: LogFormat) {
    let _ = tracing_subscriber::registry()
        .with(fmt_layer(format))
        .try_init();
}

/// Logs and spans. Call inside the runtime: exports run on it.
pub fn init(format: LogFormat, cfg: &TracingConfig) -> Result<Telemetry, crate::BoxError> {
    let provider = provider(cfg)?;
    let spans = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("fxgate"))
        .with_location(false)
        .with_threads(false)
        .with_target(false)
        .with_level(false)
        .with_tracked_inactivity(false)
        .with_filter(tracing_subscriber::filter::filter_fn(|m| {
            m.is_span() && m.target().starts_with("fxgate") && *m.level() <= tracing::Level::INFO
        }));
    let _ = tracing_subscriber::registry()
        .with(fmt_layer(format))
        .with(spans)
        .try_init();
    Ok(Telemetry { provider })
}

fn provider(cfg: &TracingConfig) -> Result<SdkTracerProvider, crate::BoxError> {
    let resource = Resource::builder()
        .with_service_name(cfg.service_name.clone())
        .build();
    let builder = SdkTracerProvider::builder().with_resource(resource);
    Ok(match &cfg.otlp_endpoint {
        // Nothing leaves: a caller's sampling decision is still passed on to Fxiaoke, and
        // traces fxgate would start are not sampled (nothing would see them).
        None => builder
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::AlwaysOff)))
            .build(),
        Some(url) => builder
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
                cfg.sample_ratio,
            ))))
            .with_batch_exporter(otlp::exporter(url, cfg.export_timeout)?)
            .build(),
    })
}

type FmtLayer = Box<dyn tracing_subscriber::Layer<tracing_subscriber::Registry> + Send + Sync>;

fn fmt_layer(format: LogFormat) -> FmtLayer {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Colour only for a person at a terminal; files, journald and collectors get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let layer = tracing_subscriber::fmt::layer()
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => layer
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .with_filter(filter)
            .boxed(),
        LogFormat::Pretty => layer.compact().with_filter(filter).boxed(),
    }
}
