//! `TryFrom<FileConfig> for Config`: every value and cross-field rule checked, one function per
//! section, each error naming its key. Defaults are the documented `DEFAULT_*` constants of
//! `file`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use super::file::*;
use super::parse::{
    parse_addr, parse_duration, parse_sha256, parse_size, parse_workers, read_secret,
    unauthenticated,
};
use super::*;

impl TryFrom<FileConfig> for Config {
    type Error = ConfigError;

    fn try_from(f: FileConfig) -> Result<Self, ConfigError> {
        let corps = corps(f.corps)?;
        Ok(Config {
            server: server(f.server)?,
            log: super::telemetry::log(&f.log)?,
            upload: upload(f.upload)?,
            dedupe: dedupe(f.dedupe)?,
            store: super::store::store(f.store)?,
            passthrough: PassthroughConfig {
                max_body: parse_size(
                    "passthrough.max_body",
                    f.passthrough
                        .max_body
                        .as_deref()
                        .unwrap_or(DEFAULT_PASSTHROUGH_MAX_BODY),
                )?,
                max_answer: parse_size(
                    "passthrough.max_answer",
                    (f.passthrough.max_answer.as_deref()).unwrap_or(DEFAULT_PASSTHROUGH_MAX_ANSWER),
                )?,
            },
            clients: super::clients::clients(f.clients, &corps)?,
            tracing: super::telemetry::tracing(f.tracing)?,
            corps,
            source: None,
        })
    }
}

fn server(s: ServerFile) -> Result<ServerConfig, ConfigError> {
    let listen = parse_addr(
        "server.listen",
        s.listen.as_deref().unwrap_or(DEFAULT_LISTEN),
    )?;
    let admin_listen = parse_addr(
        "server.admin_listen",
        s.admin_listen.as_deref().unwrap_or(DEFAULT_ADMIN_LISTEN),
    )?;
    let tls = tls(&s)?;
    let unauthenticated = unauthenticated(&s)?;
    let admin_key_sha256 = s
        .admin_key_sha256
        .as_deref()
        .map(|v| parse_sha256("server.admin_key_sha256", v))
        .transpose()?;
    let server = ServerConfig {
        listen,
        admin_listen,
        tls,
        request_header_timeout: parse_duration(
            "server.request_header_timeout",
            s.request_header_timeout
                .as_deref()
                .unwrap_or(DEFAULT_REQUEST_HEADER_TIMEOUT),
        )?,
        idle_timeout: match parse_duration(
            "server.idle_timeout",
            s.idle_timeout.as_deref().unwrap_or(DEFAULT_IDLE_TIMEOUT),
        )? {
            d if d < Duration::from_millis(100) => {
                return Err(invalid("server.idle_timeout", "must be at least 100ms"))
            }
            d => d,
        },
        shutdown_grace: parse_duration(
            "server.shutdown_grace",
            s.shutdown_grace
                .as_deref()
                .unwrap_or(DEFAULT_SHUTDOWN_GRACE),
        )?,
        admin_key_sha256,
        max_inflight: match s.max_inflight.unwrap_or(DEFAULT_MAX_INFLIGHT) {
            0 => return Err(invalid("server.max_inflight", "must be at least 1")),
            n => n,
        },
        watch_interval: match parse_duration(
            "server.watch_interval",
            s.watch_interval
                .as_deref()
                .unwrap_or(DEFAULT_WATCH_INTERVAL),
        )? {
            Duration::ZERO => None,
            d => Some(d),
        },
        workers: parse_workers(s.workers)?,
        unauthenticated,
    };
    Ok(server)
}

/// `server.tls_cert`, `tls_key` (both or neither) and `client_ca` (only with them).
fn tls(s: &ServerFile) -> Result<Option<TlsConfig>, ConfigError> {
    Ok(match (s.tls_cert.clone(), s.tls_key.clone()) {
        (Some(cert), Some(key)) => Some(TlsConfig {
            cert: cert.into(),
            key: key.into(),
            client_ca: s.client_ca.clone().map(PathBuf::from),
        }),
        (None, None) => {
            if s.client_ca.is_some() {
                return Err(invalid(
                    "server.client_ca",
                    "needs `tls_cert` and `tls_key`",
                ));
            }
            None
        }
        (Some(_), None) => return Err(invalid("server.tls_key", "missing: `tls_cert` is set")),
        (None, Some(_)) => return Err(invalid("server.tls_cert", "missing: `tls_key` is set")),
    })
}

fn corps(files: BTreeMap<String, CorpFile>) -> Result<BTreeMap<String, CorpConfig>, ConfigError> {
    if files.is_empty() {
        return Err(invalid(
            "corps",
            "at least one [corps.NAME] table is required",
        ));
    }
    let mut corps = BTreeMap::new();
    for (name, c) in files {
        let k = |field: &str| format!("corps.{name}.{field}");
        let base_url = base_url(&k("base_url"), c.base_url.as_deref())?;
        let app_id = c
            .app_id
            .filter(|v| !v.is_empty())
            .ok_or_else(|| invalid(k("app_id"), "missing"))?;
        let app_secret = read_secret(&k("app_secret"), c.app_secret, c.app_secret_file)?;
        let permanent_code = read_secret(
            &k("permanent_code"),
            c.permanent_code,
            c.permanent_code_file,
        )?;
        let refresh_at = c.refresh_at.unwrap_or(DEFAULT_REFRESH_AT);
        if !(0.5..1.0).contains(&refresh_at) {
            return Err(invalid(
                k("refresh_at"),
                format!("{refresh_at} must be in [0.5, 1.0)"),
            ));
        }
        let upstream_requests_per_20s = c
            .upstream_requests_per_20s
            .unwrap_or(DEFAULT_UPSTREAM_REQUESTS_PER_20S);
        if upstream_requests_per_20s == 0 {
            return Err(invalid(
                k("upstream_requests_per_20s"),
                "must be at least 1",
            ));
        }
        let corp = CorpConfig {
            name: name.clone(),
            base_url,
            app_id,
            app_secret,
            permanent_code,
            refresh_at,
            upstream_requests_per_20s,
            daily_call_budget: c.daily_call_budget,
            upstream_timeout: parse_duration(
                &k("upstream_timeout"),
                c.upstream_timeout
                    .as_deref()
                    .unwrap_or(DEFAULT_UPSTREAM_TIMEOUT),
            )?,
            connect_timeout: parse_duration(
                &k("connect_timeout"),
                c.connect_timeout
                    .as_deref()
                    .unwrap_or(DEFAULT_CONNECT_TIMEOUT),
            )?,
            ca_file: super::egress::extra_roots(&k("ca_file"), c.ca_file)?,
            files: super::egress::file_service(
                &format!("corps.{name}"),
                c.file_service_user,
                c.file_upload_hosts,
            )?,
        };
        corps.insert(name, corp);
    }
    Ok(corps)
}

fn upload(u: UploadFile) -> Result<UploadConfig, ConfigError> {
    let message_types = match u.message_types {
        None => vec![
            ImageType::Jpeg,
            ImageType::Png,
            ImageType::Gif,
            ImageType::Bmp,
        ],
        Some(list) => list
            .iter()
            .map(|m| {
                ImageType::from_mime(m).ok_or_else(|| {
                    invalid(
                        "upload.message_types",
                        format!("`{m}`: supported are image/jpeg, image/png, image/gif, image/bmp"),
                    )
                })
            })
            .collect::<Result<_, _>>()?,
    };
    let upload = UploadConfig {
        message_max_bytes: parse_size(
            "upload.message_max_bytes",
            u.message_max_bytes
                .as_deref()
                .unwrap_or(DEFAULT_MESSAGE_MAX_BYTES),
        )?,
        message_types,
        document_max_bytes: parse_size(
            "upload.document_max_bytes",
            u.document_max_bytes
                .as_deref()
                .unwrap_or(DEFAULT_DOCUMENT_MAX_BYTES),
        )?,
        file_max_bytes: parse_size(
            "upload.file_max_bytes",
            u.file_max_bytes
                .as_deref()
                .unwrap_or(DEFAULT_FILE_MAX_BYTES),
        )?,
    };
    Ok(upload)
}

fn dedupe(d: DedupeFile) -> Result<DedupeConfig, ConfigError> {
    let dedupe = DedupeConfig {
        ttl: parse_duration("dedupe.ttl", d.ttl.as_deref().unwrap_or("72h"))?,
        max_entries: d.max_entries.unwrap_or(1_000_000),
        claim_scope: match d.claim_scope.as_deref().unwrap_or("client") {
            "client" => ClaimScope::Client,
            "corp" => ClaimScope::Corp,
            other => {
                return Err(invalid(
                    "dedupe.claim_scope",
                    format!("`{other}`: use \"client\" or \"corp\""),
                ))
            }
        },
    };
    Ok(dedupe)
}

/// `corps.*.base_url`: `"sandbox"`, or an http(s) URL without a query (trailing `/` dropped).
fn base_url(key: &str, value: Option<&str>) -> Result<BaseUrl, ConfigError> {
    Ok(match value.map(str::trim) {
        None => return Err(invalid(key, "missing")),
        Some("sandbox") => BaseUrl::Sandbox,
        Some(url) => {
            let uri: http::Uri = url
                .parse()
                .map_err(|_| invalid(key, format!("`{url}` is not a URL")))?;
            match (uri.scheme_str(), uri.host()) {
                (Some("http" | "https"), Some(_)) => {}
                _ => {
                    return Err(invalid(
                        key,
                        format!("`{url}`: use \"sandbox\" or an http(s) URL"),
                    ))
                }
            }
            if uri.query().is_some() {
                return Err(invalid(key, "must not hold a query string"));
            }
            BaseUrl::Url(url.trim_end_matches('/').to_string())
        }
    })
}
