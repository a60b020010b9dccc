//! `[log]` and `[tracing]`, validated: how log lines look and which are written, where spans
//! go and how many.

use std::time::Duration;

use super::file::{LogFile, TracingFile, DEFAULT_EXPORT_TIMEOUT, DEFAULT_SAMPLE_RATIO};
use super::parse::parse_duration;
use super::{invalid, ConfigError};

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Pretty,
    /// One JSON object per line.
    Json,
}

/// `[log]`, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct LogConfig {
    /// Line format (a restart changes it).
    pub format: LogFormat,
    /// Which lines are written: an `EnvFilter` directive (`"info"`, `"warn,fxgate=debug"`).
    /// Unset: `RUST_LOG`, else `info`. A reload applies it.
    pub level: Option<String>,
}

impl LogConfig {
    /// The filter directive in force: `level`, else `RUST_LOG`, else `info`.
    pub fn directive(&self) -> String {
        self.level
            .clone()
            .or_else(|| std::env::var("RUST_LOG").ok().filter(|v| !v.is_empty()))
            .unwrap_or_else(|| "info".into())
    }
}

/// `[tracing]`, validated.
#[derive(Debug, Clone)]
pub struct TracingConfig {
    /// Where spans are exported (OTLP/HTTP, protobuf); `None`: not exported.
    pub otlp_endpoint: Option<http::Uri>,
    /// `service.name`.
    pub service_name: String,
    /// Fraction of root traces sampled.
    pub sample_ratio: f64,
    /// Deadline of one export.
    pub export_timeout: Duration,
}

pub(super) fn log(log: &LogFile) -> Result<LogConfig, ConfigError> {
    let format = match log.format.as_deref().unwrap_or("pretty") {
        "pretty" => LogFormat::Pretty,
        "json" => LogFormat::Json,
        other => {
            return Err(invalid(
                "log.format",
                format!("`{other}`: use \"pretty\" or \"json\""),
            ))
        }
    };
    let level = match log.level.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(l) => match tracing_subscriber::EnvFilter::try_new(l) {
            Ok(_) => Some(l.to_string()),
            Err(e) => {
                return Err(invalid(
                    "log.level",
                    format!(
                    "`{l}` is not a level or filter like \"info\" or \"warn,fxgate=debug\" ({e})"
                ),
                ))
            }
        },
    };
    Ok(LogConfig { format, level })
}

pub(super) fn tracing(t: TracingFile) -> Result<TracingConfig, ConfigError> {
    let otlp_endpoint = match t.otlp_endpoint.as_deref() {
        None | Some("") => None,
        Some(url) => match url.parse::<http::Uri>() {
            Ok(u) if matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some() => {
                Some(u)
            }
            _ => {
                return Err(invalid(
                    "tracing.otlp_endpoint",
                    format!("`{url}`: an http:// or https:// URL, e.g. http://otel-collector:4318/v1/traces"),
                ))
            }
        },
    };
    let sample_ratio = match t.sample_ratio.unwrap_or(DEFAULT_SAMPLE_RATIO) {
        r if (0.0..=1.0).contains(&r) => r,
        r => {
            return Err(invalid(
                "tracing.sample_ratio",
                format!("{r}: between 0.0 and 1.0"),
            ))
        }
    };
    Ok(TracingConfig {
        otlp_endpoint,
        service_name: t.service_name.unwrap_or_else(|| "fxgate".into()),
        sample_ratio,
        export_timeout: parse_duration(
            "tracing.export_timeout",
            t.export_timeout
                .as_deref()
                .unwrap_or(DEFAULT_EXPORT_TIMEOUT),
        )?,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use crate::config::Config;

    fn load(tracing: &str) -> Result<Config, String> {
        let base = "[corps.default]\nbase_url = \"sandbox\"\napp_id = \"a\"\napp_secret = \"s\"\npermanent_code = \"p\"\n";
        Config::from_toml(&format!("{base}[tracing]\n{tracing}"), HashMap::new())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn export_is_off_unless_an_http_endpoint_is_named_and_the_ratio_is_a_fraction() {
        let off = load("").unwrap().tracing;
        assert!(off.otlp_endpoint.is_none());
        assert_eq!(
            (off.service_name.as_str(), off.sample_ratio),
            ("fxgate", 1.0)
        );
        let on = load("otlp_endpoint = \"http://127.0.0.1:4318/v1/traces\"\nsample_ratio = 0.25")
            .unwrap()
            .tracing;
        assert_eq!(
            on.otlp_endpoint.map(|u| u.to_string()).as_deref(),
            Some("http://127.0.0.1:4318/v1/traces")
        );
        assert_eq!(on.sample_ratio, 0.25);
        for (bad, key) in [
            (
                "otlp_endpoint = \"127.0.0.1:4318\"",
                "tracing.otlp_endpoint",
            ),
            ("otlp_endpoint = \"grpc://c:4317\"", "tracing.otlp_endpoint"),
            ("sample_ratio = 1.5", "tracing.sample_ratio"),
            ("export_timeout = \"soon\"", "tracing.export_timeout"),
            ("endpoint = \"http://c\"", "endpoint"),
        ] {
            let e = load(bad).unwrap_err();
            assert!(e.contains(key), "{bad}: {e}");
        }
    }
}
