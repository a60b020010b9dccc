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
