//! `[tracing]`, validated: where spans go and how many.

use super::file::{TracingFile, DEFAULT_EXPORT_TIMEOUT, DEFAULT_SAMPLE_RATIO};
use super::parse::parse_duration;
use super::{invalid, ConfigError, TracingConfig};

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
