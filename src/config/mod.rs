//! The validated, typed configuration. `Config::load` layers the TOML file, an optional
//! `config/local.toml` beside it and `FXGATE__SECTION__KEY` environment variables (design §2),
//! then `Config::try_from(FileConfig)` checks every value and cross-field rule. Nothing
//! downstream sees a raw string: durations are `Duration`, sizes `u64`, secrets `Secret`.

pub mod file;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::route::Route;
pub use crate::sniff::ImageType;
pub use file::FileConfig;
use file::*;

/// A configuration problem, always naming the key it is about.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read or parsed, or a key has the wrong type or is unknown.
    #[error("{0}")]
    Source(String),
    /// A key has a value that cannot be used.
    #[error("`{key}`: {problem}")]
    Invalid {
        /// Dotted key path, e.g. `corps.default.refresh_at`.
        key: String,
        /// What is wrong with it.
        problem: String,
    },
}

fn invalid(key: impl Into<String>, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        problem: problem.into(),
    }
}

/// A secret string: its `Debug` and `Display` never show the value.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    /// The value, for the one place that must send it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(****)")
    }
}

/// `[server]`, validated.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Caller-facing address.
    pub listen: SocketAddr,
    /// Admin address.
    pub admin_listen: SocketAddr,
    /// TLS on `listen`, when configured.
    pub tls: Option<TlsConfig>,
    /// Time to receive a request head.
    pub request_header_timeout: Duration,
    /// Drain deadline on shutdown.
    pub shutdown_grace: Duration,
    /// SHA-256 of the admin key.
    pub admin_key_sha256: Option<[u8; 32]>,
}

/// PEM paths for inbound TLS.
#[derive(Debug, Clone)]
pub struct TlsConfig {
    /// Certificate chain.
    pub cert: PathBuf,
    /// Private key.
    pub key: PathBuf,
    /// Client CA bundle (mTLS), optional.
    pub client_ca: Option<PathBuf>,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Pretty,
    /// One JSON object per line.
    Json,
}

/// Where a corp's Fxiaoke endpoints are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BaseUrl {
    /// The built-in sandbox, started in-process on a loopback port.
    Sandbox,
    /// A real (or imitation) Fxiaoke host, e.g. `https://open.fxiaoke.com`, without trailing `/`.
    Url(String),
}

/// `[corps.NAME]`, validated.
#[derive(Debug, Clone)]
pub struct CorpConfig {
    /// The table name.
    pub name: String,
    /// Where Fxiaoke is.
    pub base_url: BaseUrl,
    /// App id.
    pub app_id: String,
    /// App secret.
    pub app_secret: Secret,
    /// Permanent code.
    pub permanent_code: Secret,
    /// Fraction of the lifetime after which the token is refreshed.
    pub refresh_at: f64,
    /// Upstream calls per 20 s per interface.
    pub upstream_requests_per_20s: u32,
    /// Upstream calls per day.
    pub daily_call_budget: Option<u64>,
    /// Deadline for Fxiaoke's answer once a request is sent.
    pub upstream_timeout: Duration,
    /// Connect deadline.
    pub connect_timeout: Duration,
}

/// `[upload]`, validated.
#[derive(Debug, Clone)]
pub struct UploadConfig {
    /// Limit on message material and `type=image`.
    pub message_max_bytes: u64,
    /// Allowed image types.
    pub message_types: Vec<ImageType>,
    /// Limit on `type=document`.
    pub document_max_bytes: u64,
}

/// Which entries a digest claim may hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaimScope {
    /// Only the claiming caller's own uploads.
    Client,
    /// Any upload of the same corp.
    Corp,
}

/// `[dedupe]`, validated.
#[derive(Debug, Clone)]
pub struct DedupeConfig {
    /// Trust period of a mediaId.
    pub ttl: Duration,
    /// Bound on entries.
    pub max_entries: u64,
    /// Scope of claim hits.
    pub claim_scope: ClaimScope,
}

/// Where shared state lives (`store.backend`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// In this process: one replica.
    Memory,
    /// In Redis: replicas share it.
    Redis,
}

/// What a failing shared store means for the decisions it holds (`store.quota_fail_mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailMode {
    /// Decide on this replica's own state and serve.
    Open,
    /// Refuse (942903).
    Closed,
}

/// `[store]`, validated.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Where shared state lives.
    pub backend: Backend,
    /// Redis URL; may hold a password, so `effective()` masks it.
    pub redis_url: Secret,
    /// What quotas do with the store down.
    pub quota_fail_mode: FailMode,
    /// Prefix of every Redis key, so several deployments can share one Redis.
    pub key_prefix: String,
    /// Bound on one Redis command: a slow or dead Redis must not hold requests.
    pub timeout: Duration,
}

/// One `[[clients]]` entry, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientConfig {
    /// Name.
    pub name: String,
    /// SHA-256 of the key.
    pub key_sha256: Option<[u8; 32]>,
    /// mTLS subject.
    pub cert_subject: Option<String>,
    /// Corp name (exists in `corps`).
    pub corp: String,
    /// Request-rate quota.
    pub requests_per_minute: Option<u32>,
    /// Daily byte quota.
    pub bytes_per_day: Option<u64>,
    /// Concurrent upload quota.
    pub max_concurrent_uploads: Option<u32>,
    /// Per-file limit.
    pub max_file_bytes: Option<u64>,
    /// Route allow-list.
    pub routes: Option<Vec<Route>>,
}

/// The whole validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// `[server]`
    pub server: ServerConfig,
    /// `[log]`
    pub log_format: LogFormat,
    /// `[corps.*]`, by name.
    pub corps: BTreeMap<String, CorpConfig>,
    /// `[upload]`
    pub upload: UploadConfig,
    /// `[dedupe]`
    pub dedupe: DedupeConfig,
    /// `[store]`
    pub store: StoreConfig,
    /// `[[clients]]`
    pub clients: Vec<ClientConfig>,
    /// The file it was loaded from (re-read on reload).
    pub source: Option<PathBuf>,
}

impl Config {
    /// Loads `path`, then `local.toml` beside it when present, then the environment
    /// (`env = None` reads the process environment; tests pass a map instead of `set_var`).
    pub fn load(path: &Path, env: Option<HashMap<String, String>>) -> Result<Self, ConfigError> {
        let mut cfg = Self::try_from(Self::load_file(path, env)?)?;
        cfg.source = Some(path.to_path_buf());
        Ok(cfg)
    }

    /// The layered sources, deserialized but not yet validated (for `check-config` output).
    pub fn load_file(
        path: &Path,
        env: Option<HashMap<String, String>>,
    ) -> Result<FileConfig, ConfigError> {
        if !path.is_file() {
            return Err(ConfigError::Source(format!(
                "config file {} does not exist or is not a file",
                path.display()
            )));
        }
        let local = path.with_file_name("local.toml");
        let environment = config::Environment::with_prefix("FXGATE")
            .prefix_separator("__")
            .separator("__")
            .list_separator(",")
            .with_list_parse_key("upload.message_types")
            .try_parsing(true)
            .source(env);
        let layered = config::Config::builder()
            .add_source(config::File::from(path).format(config::FileFormat::Toml))
            .add_source(
                config::File::from(local.as_path())
                    .format(config::FileFormat::Toml)
                    .required(false),
            )
            .add_source(environment)
            .build()
            .map_err(|e| ConfigError::Source(e.to_string()))?;
        serde_path_to_error::deserialize(layered).map_err(|e| {
            let key = e.path().to_string();
            ConfigError::Source(format!("`{key}`: {}", e.into_inner()))
        })
    }
}

/// Parses `"30s"`, `"72h"`, `"1m 30s"`.
/// `redis://user:secret@host` → `redis://user:***@host`.
fn mask_url_password(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let auth = &url[scheme + 3..at];
            match auth.find(':') {
                Some(colon) => {
                    format!("{}{}:***{}", &url[..scheme + 3], &auth[..colon], &url[at..])
                }
                None => format!("{}***{}", &url[..scheme + 3], &url[at..]),
            }
        }
        _ => url.to_string(),
    }
}

/// Parses a human duration (`"250ms"`, `"72h"`), naming `key` on failure.
pub fn parse_duration(key: &str, value: &str) -> Result<Duration, ConfigError> {
    humantime::parse_duration(value.trim()).map_err(|e| {
        invalid(
            key,
            format!("`{value}` is not a duration like \"30s\" ({e})"),
        )
    })
}

/// Parses `"5MiB"`, `"20GiB"`, `"512KB"`, `"1048576"`.
pub fn parse_size(key: &str, value: &str) -> Result<u64, ConfigError> {
    let v = value.trim();
    let split = v
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(v.len());
    let (num, unit) = v.split_at(split);
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "kib" => 1 << 10,
        "m" | "mb" => 1_000_000,
        "mib" => 1 << 20,
        "g" | "gb" => 1_000_000_000,
        "gib" => 1 << 30,
        "t" | "tb" => 1_000_000_000_000,
        "tib" => 1 << 40,
        _ => {
            return Err(invalid(
                key,
                format!("`{value}`: unknown size unit (use B, KiB, MiB, GiB)"),
            ))
        }
    };
    let n: f64 = num
        .parse()
        .map_err(|_| invalid(key, format!("`{value}` is not a size like \"5MiB\"")))?;
    let bytes = n * mult as f64;
    if !bytes.is_finite() || bytes < 1.0 || bytes > u64::MAX as f64 {
        return Err(invalid(key, format!("`{value}` is out of range")));
    }
    Ok(bytes as u64)
}

/// Parses a 64-hex-digit SHA-256.
pub fn parse_sha256(key: &str, value: &str) -> Result<[u8; 32], ConfigError> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(value.trim(), &mut out).map_err(|_| {
        invalid(
            key,
            "expected 64 hex digits, as printed by `fxgate hash-key`",
        )
    })?;
    Ok(out)
}

/// SHA-256 of a caller or admin key, as `key_sha256` holds it.
pub fn hash_key(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

fn parse_addr(key: &str, value: &str) -> Result<SocketAddr, ConfigError> {
    value.trim().parse().map_err(|_| {
        invalid(
            key,
            format!("`{value}` is not an address like \"127.0.0.1:8080\""),
        )
    })
}

fn read_secret(
    key: &str,
    inline: Option<String>,
    file: Option<String>,
) -> Result<Secret, ConfigError> {
    match (inline, file) {
        (Some(_), Some(_)) => Err(invalid(
            key,
            format!("set either `{key}` or `{key}_file`, not both"),
        )),
        (Some(v), None) if !v.is_empty() => Ok(Secret::new(v)),
        (None, Some(path)) => {
            let text = std::fs::read_to_string(&path)
                .map_err(|e| invalid(format!("{key}_file"), format!("cannot read {path}: {e}")))?;
            let value = text.trim_end_matches(['\r', '\n']).to_string();
            if value.is_empty() {
                return Err(invalid(format!("{key}_file"), format!("{path} is empty")));
            }
            Ok(Secret::new(value))
        }
        _ => Err(invalid(
            key,
            "missing (set it, or `_file` pointing at a file holding it)",
        )),
    }
}

impl TryFrom<FileConfig> for Config {
    type Error = ConfigError;

    fn try_from(f: FileConfig) -> Result<Self, ConfigError> {
        let s = f.server;
        let listen = parse_addr(
            "server.listen",
            s.listen.as_deref().unwrap_or(DEFAULT_LISTEN),
        )?;
        let admin_listen = parse_addr(
            "server.admin_listen",
            s.admin_listen.as_deref().unwrap_or(DEFAULT_ADMIN_LISTEN),
        )?;
        let tls = match (s.tls_cert, s.tls_key) {
            (Some(cert), Some(key)) => Some(TlsConfig {
                cert: cert.into(),
                key: key.into(),
                client_ca: s.client_ca.map(PathBuf::from),
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
        };
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
            shutdown_grace: parse_duration(
                "server.shutdown_grace",
                s.shutdown_grace
                    .as_deref()
                    .unwrap_or(DEFAULT_SHUTDOWN_GRACE),
            )?,
            admin_key_sha256,
        };

        let log_format = match f.log.format.as_deref().unwrap_or("pretty") {
            "pretty" => LogFormat::Pretty,
            "json" => LogFormat::Json,
            other => {
                return Err(invalid(
                    "log.format",
                    format!("`{other}`: use \"pretty\" or \"json\""),
                ))
            }
        };

        if f.corps.is_empty() {
            return Err(invalid(
                "corps",
                "at least one [corps.NAME] table is required",
            ));
        }
        let mut corps = BTreeMap::new();
        for (name, c) in f.corps {
            let k = |field: &str| format!("corps.{name}.{field}");
            let base_url = match c.base_url.as_deref().map(str::trim) {
                None => return Err(invalid(k("base_url"), "missing")),
                Some("sandbox") => BaseUrl::Sandbox,
                Some(url) => {
                    let uri: http::Uri = url
                        .parse()
                        .map_err(|_| invalid(k("base_url"), format!("`{url}` is not a URL")))?;
                    match (uri.scheme_str(), uri.host()) {
                        (Some("http" | "https"), Some(_)) => {}
                        _ => {
                            return Err(invalid(
                                k("base_url"),
                                format!("`{url}`: use \"sandbox\" or an http(s) URL"),
                            ))
                        }
                    }
                    if uri.query().is_some() {
                        return Err(invalid(k("base_url"), "must not hold a query string"));
                    }
                    BaseUrl::Url(url.trim_end_matches('/').to_string())
                }
            };
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
            };
            corps.insert(name, corp);
        }

        let u = f.upload;
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
                            format!(
                                "`{m}`: supported are image/jpeg, image/png, image/gif, image/bmp"
                            ),
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
        };

        let d = f.dedupe;
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

        let st = f.store;
        let backend = match st.backend.as_deref().unwrap_or("memory") {
            "memory" => Backend::Memory,
            "redis" => Backend::Redis,
            other => {
                return Err(invalid(
                    "store.backend",
                    format!("`{other}`: use \"memory\" or \"redis\""),
                ))
            }
        };
        let redis_url = st
            .redis_url
            .unwrap_or_else(|| "redis://127.0.0.1:6379".into());
        if backend == Backend::Redis {
            if let Err(e) = redis::Client::open(redis_url.as_str()) {
                // The crate's message never repeats the URL, so no password leaks.
                return Err(invalid("store.redis_url", e.to_string()));
            }
        }
        let key_prefix = st.key_prefix.unwrap_or_else(|| "fxgate".into());
        if key_prefix.is_empty() || key_prefix.contains(char::is_whitespace) {
            return Err(invalid(
                "store.key_prefix",
                "must be non-empty and without whitespace",
            ));
        }
        let store = StoreConfig {
            backend,
            redis_url: Secret::new(redis_url),
            key_prefix,
            timeout: parse_duration("store.timeout", st.timeout.as_deref().unwrap_or("250ms"))?,
            quota_fail_mode: match st.quota_fail_mode.as_deref().unwrap_or("open") {
                "open" => FailMode::Open,
                "closed" => FailMode::Closed,
                other => {
                    return Err(invalid(
                        "store.quota_fail_mode",
                        format!("`{other}`: use \"open\" or \"closed\""),
                    ))
                }
            },
        };

        let mut clients = Vec::with_capacity(f.clients.len());
        for (i, c) in f.clients.into_iter().enumerate() {
            let k = |field: &str| format!("clients[{i}].{field}");
            let name = c
                .name
                .filter(|n| !n.is_empty())
                .ok_or_else(|| invalid(k("name"), "missing"))?;
            if name == "unknown"
                || !name
                    .chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || "-_.".contains(ch))
            {
                return Err(invalid(
                    k("name"),
                    format!("`{name}`: use letters, digits, - _ . (and not \"unknown\")"),
                ));
            }
            if clients.iter().any(|o: &ClientConfig| o.name == name) {
                return Err(invalid(k("name"), format!("`{name}` is defined twice")));
            }
            let key_sha256 = c
                .key_sha256
                .as_deref()
                .map(|v| parse_sha256(&k("key_sha256"), v))
                .transpose()?;
            if key_sha256.is_none() && c.cert_subject.is_none() {
                return Err(invalid(
                    k("key_sha256"),
                    "missing (or set `cert_subject` for an mTLS caller)",
                ));
            }
            let corp = c.corp.unwrap_or_else(|| "default".into());
            if !corps.contains_key(&corp) {
                return Err(invalid(
                    k("corp"),
                    format!("`{corp}` is not a [corps.*] table"),
                ));
            }
            let routes = c
                .routes
                .map(|list| {
                    list.iter()
                        .map(|r| {
                            Route::of(r).ok_or_else(|| {
                                let all: Vec<_> = Route::ALL.iter().map(|r| r.path()).collect();
                                invalid(
                                    k("routes"),
                                    format!("`{r}` is not a route; routes are {all:?}"),
                                )
                            })
                        })
                        .collect::<Result<Vec<_>, _>>()
                })
                .transpose()?;
            clients.push(ClientConfig {
                name,
                key_sha256,
                cert_subject: c.cert_subject,
                corp,
                requests_per_minute: c.requests_per_minute,
                bytes_per_day: c
                    .bytes_per_day
                    .as_deref()
                    .map(|v| parse_size(&k("bytes_per_day"), v))
                    .transpose()?,
                max_concurrent_uploads: c.max_concurrent_uploads,
                max_file_bytes: c
                    .max_file_bytes
                    .as_deref()
                    .map(|v| parse_size(&k("max_file_bytes"), v))
                    .transpose()?,
                routes,
            });
        }
        Ok(Config {
            server,
            log_format,
            corps,
            upload,
            dedupe,
            store,
            clients,
            source: None,
        })
    }
}

impl Config {
    /// The effective settings, defaults filled in and secrets masked (`check-config`).
    pub fn effective(&self) -> serde_json::Value {
        use serde_json::json;
        let d = |d: Duration| humantime::format_duration(d).to_string();
        let s = &self.server;
        let corps: serde_json::Map<_, _> = self
            .corps
            .iter()
            .map(|(name, c)| {
                (
                    name.clone(),
                    json!({
                        "base_url": match &c.base_url { BaseUrl::Sandbox => "sandbox".to_string(), BaseUrl::Url(u) => u.clone() },
                        "app_id": c.app_id,
                        "app_secret": "****",
                        "permanent_code": "****",
                        "refresh_at": c.refresh_at,
                        "upstream_requests_per_20s": c.upstream_requests_per_20s,
                        "daily_call_budget": c.daily_call_budget,
                        "upstream_timeout": d(c.upstream_timeout),
                        "connect_timeout": d(c.connect_timeout),
                    }),
                )
            })
            .collect();
        json!({
            "server": {
                "listen": s.listen.to_string(),
                "admin_listen": s.admin_listen.to_string(),
                "tls_cert": s.tls.as_ref().map(|t| t.cert.display().to_string()),
                "tls_key": s.tls.as_ref().map(|t| t.key.display().to_string()),
                "client_ca": s.tls.as_ref().and_then(|t| t.client_ca.as_ref()).map(|p| p.display().to_string()),
                "request_header_timeout": d(s.request_header_timeout),
                "shutdown_grace": d(s.shutdown_grace),
                "admin_key_sha256": s.admin_key_sha256.map(hex::encode),
            },
            "log": { "format": match self.log_format { LogFormat::Pretty => "pretty", LogFormat::Json => "json" } },
            "corps": corps,
            "upload": {
                "message_max_bytes": self.upload.message_max_bytes,
                "message_types": self.upload.message_types.iter().map(|t| t.mime()).collect::<Vec<_>>(),
                "document_max_bytes": self.upload.document_max_bytes,
            },
            "dedupe": {
                "ttl": d(self.dedupe.ttl),
                "max_entries": self.dedupe.max_entries,
                "claim_scope": match self.dedupe.claim_scope { ClaimScope::Client => "client", ClaimScope::Corp => "corp" },
            },
            "store": {
                "backend": match self.store.backend { Backend::Memory => "memory", Backend::Redis => "redis" },
                "redis_url": mask_url_password(self.store.redis_url.expose()),
                "quota_fail_mode": match self.store.quota_fail_mode { FailMode::Open => "open", FailMode::Closed => "closed" },
                "key_prefix": self.store.key_prefix,
                "timeout": d(self.store.timeout),
            },
            "clients": self.clients.iter().map(|c| json!({
                "name": c.name,
                "key_sha256": c.key_sha256.map(hex::encode),
                "cert_subject": c.cert_subject,
                "corp": c.corp,
                "requests_per_minute": c.requests_per_minute,
                "bytes_per_day": c.bytes_per_day,
                "max_concurrent_uploads": c.max_concurrent_uploads,
                "max_file_bytes": c.max_file_bytes,
                "routes": c.routes.as_ref().map(|r| r.iter().map(|r| r.path()).collect::<Vec<_>>()),
            })).collect::<Vec<_>>(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_durations() {
        assert_eq!(parse_size("k", "5MiB").ok(), Some(5 * 1024 * 1024));
        assert_eq!(parse_size("k", "20GiB").ok(), Some(20 << 30));
        assert_eq!(parse_size("k", "1000").ok(), Some(1000));
        assert!(parse_size("k", "5 parsecs").is_err());
        assert!(parse_size("k", "-1").is_err());
        assert_eq!(
            parse_duration("k", "72h").ok(),
            Some(Duration::from_secs(72 * 3600))
        );
        assert!(parse_duration("k", "soon").is_err());
    }
}
