//! Log and trace setup, the only place either is decided.
//!
//! Logs: `tracing-subscriber` with an `EnvFilter` (`log.level`, else `RUST_LOG`, else `info`;
//! a reload swaps it in place), pretty or JSON lines on stderr. Traces: an OpenTelemetry layer beside it turns fxgate's spans (`request`,
//! `upstream`, `token_fetch`, `dedupe_lookup`) into OpenTelemetry spans with W3C ids, whatever
//! `RUST_LOG` says (its own filter: fxgate's spans at `info`, no events), exported over OTLP/HTTP,
//! when `tracing.otlp_endpoint` is set. Without it the layer is not installed (see `trace` for
//! how the caller's trace still reaches Fxiaoke and the access log).

mod otlp;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use opentelemetry_sdk::Resource;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer as _};

use std::sync::OnceLock;

use tracing_subscriber::{reload, Registry};

use crate::config::{LogConfig, LogFormat, TracingConfig};

/// The installed span pipeline; `shutdown` exports what is still queued.
#[derive(Debug)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
    export_timeout: std::time::Duration,
}

impl Telemetry {
    /// Flushes and stops the exporter (bounded by `tracing.export_timeout`).
    pub async fn shutdown(self) {
        let Some(provider) = self.provider else {
            return;
        };
        // The SDK blocks while its export thread finishes, and that export runs on this
        // runtime: off the async workers.
        let bound = self.export_timeout;
        let _ = tokio::task::spawn_blocking(move || provider.shutdown_with_timeout(bound)).await;
    }
}

/// The installed log filter, which a reload replaces (`set_log_level`).
static LEVELS: OnceLock<reload::Handle<EnvFilter, Registry>> = OnceLock::new();

/// Logs only, filtered by `directive` (the sandbox command passes `RUST_LOG`'s); a second call
/// is ignored (tests).
pub fn init_logs(format: LogFormat, directive: &str) {
    let _ = tracing_subscriber::registry()
        .with(fmt_layer(format, directive))
        .try_init();
}

/// Puts a new log filter in force (a reload of `log.level`), for every line from now on.
pub fn set_log_level(directive: &str) -> Result<(), String> {
    let filter = EnvFilter::try_new(directive).map_err(|e| e.to_string())?;
    match LEVELS.get() {
        Some(handle) => handle.reload(filter).map_err(|e| e.to_string()),
        // No subscriber of ours (a library embedding fxgate): nothing to change.
        None => Ok(()),
    }
}

/// Logs, and spans when `cfg` exports them (without export the OpenTelemetry layer is not
/// installed at all: see `trace`). Call inside the runtime: exports run on it.
pub fn init(log: &LogConfig, cfg: &TracingConfig) -> Result<Telemetry, crate::BoxError> {
    let (format, directive) = (log.format, log.directive());
    let Some(url) = &cfg.otlp_endpoint else {
        init_logs(format, &directive);
        return Ok(Telemetry {
            provider: None,
            export_timeout: cfg.export_timeout,
        });
    };
    let provider = SdkTracerProvider::builder()
        .with_resource(
            Resource::builder()
                .with_service_name(cfg.service_name.clone())
                .build(),
        )
        // A caller's decision stands; of the traces fxgate begins, `sample_ratio` are kept.
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            cfg.sample_ratio,
        ))))
        .with_batch_exporter(otlp::exporter(url, cfg.export_timeout)?)
        .build();
    let spans = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("fxgate"))
        .with_location(false)
        .with_threads(false)
        .with_target(false)
        .with_level(false)
        .with_tracked_inactivity(false)
        .with_context_activation(false)
        .with_filter(
            tracing_subscriber::filter::filter_fn(|m| {
                m.is_span()
                    && m.target().starts_with("fxgate")
                    && *m.level() <= tracing::Level::INFO
            })
            // Without the hint the subscriber's maximum level is TRACE, and every `debug!`
            // and `trace!` in fxgate, hyper and h2 is checked at run time on every call.
            .with_max_level_hint(tracing::Level::INFO),
        );
    let _ = tracing_subscriber::registry()
        .with(fmt_layer(format, &directive))
        .with(spans)
        .try_init();
    crate::trace::use_spans();
    Ok(Telemetry {
        provider: Some(provider),
        export_timeout: cfg.export_timeout,
    })
}

type FmtLayer = Box<dyn tracing_subscriber::Layer<tracing_subscriber::Registry> + Send + Sync>;

fn fmt_layer(format: LogFormat, directive: &str) -> FmtLayer {
    let (levels, handle) = reload::Layer::new(
        EnvFilter::try_new(directive).unwrap_or_else(|_| EnvFilter::new("info")),
    );
    // The first subscriber installed is the one in force; a later (ignored) one keeps its own.
    let _ = LEVELS.set(handle);
    // Events only: a log line names its request by `request_id` and `trace_id`, and the
    // per-request spans would otherwise have their fields formatted into a string each, on
    // every request, for lines that do not show them.
    let filter = tracing_subscriber::filter::FilterExt::and(
        levels,
        tracing_subscriber::filter::filter_fn(|m| m.is_event()),
    );
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
        LogFormat::Pretty => layer
            .compact()
            .with_target(true)
            .with_filter(filter)
            .boxed(),
    }
}
