//! The validated, typed configuration. `Config::load` layers the TOML file, an optional
//! `config/local.toml` beside it and `FXGATE__SECTION__KEY` environment variables (design §2),
//! then `Config::try_from(FileConfig)` checks every value and cross-field rule. Nothing
//! downstream sees a raw string: durations are `Duration`, sizes `u64`, secrets `Secret`.

mod clients;
mod diff;
mod effective;
mod egress;
pub mod file;
mod limits;
mod parse;
mod secret;
mod store;
mod telemetry;
mod validate;

pub use diff::{Change, Diff};
pub use egress::{ExtraRoots, FileService};
pub use limits::{announced_too_large, MULTIPART_FRAMING_ALLOWANCE};
pub use parse::{hash_key, parse_duration, parse_sha256, parse_size};
pub use secret::Secret;
pub use telemetry::{LogConfig, LogFormat, TracingConfig};

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::route::{ApiStyle, RoutePattern};
pub use crate::sniff::ImageType;
pub use file::FileConfig;

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
    /// Time a connection may sit with no request in flight and no bytes moving.
    pub idle_timeout: Duration,
    /// Drain deadline on shutdown.
    pub shutdown_grace: Duration,
    /// SHA-256 of the admin key.
    pub admin_key_sha256: Option<[u8; 32]>,
    /// Requests in flight on `listen` at most; more are shed (503).
    pub max_inflight: usize,
    /// How often watched files are checked; `None`: not watched.
    pub watch_interval: Option<Duration>,
    /// Threads serving `listen` (`server::workers`).
    pub workers: usize,
    /// The one pool of work done before a caller is known (design §9, Boundaries).
    pub unauthenticated: Unauthenticated,
}

/// Bounds on reading bodies to find an SDK's credential, for all callers not yet known.
#[derive(Debug, Clone, Copy)]
pub struct Unauthenticated {
    /// Requests reading their body at once (`server.max_unauthenticated`).
    pub max_requests: usize,
    /// Body bytes held by them all (`server.unauthenticated_body_bytes`).
    pub max_bytes: u64,
    /// Time one of them may take (`server.unauthenticated_body_timeout`).
    pub timeout: Duration,
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
    /// Roots trusted besides the web PKI (`ca_file`).
    pub ca_file: Option<ExtraRoots>,
    /// `file_service_user` and `file_upload_hosts`.
    pub files: FileService,
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
    /// Limit on `/media/upload/file`.
    pub file_max_bytes: u64,
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
    /// Life of a lease without renewal (renewed every third of it while held).
    pub lease_ttl: Duration,
    /// ACL user, when not in the URL.
    pub redis_username: Option<String>,
    /// ACL password, when not in the URL.
    pub redis_password: Option<Secret>,
    /// TLS files for a `rediss://` URL or `tls`.
    pub redis_tls: RedisTlsFiles,
    /// How Redis is found: one address, sentinels, or a Cluster.
    pub mode: RedisMode,
    /// TLS to every connection (a `rediss://` URL, or `redis_tls = true`).
    pub tls: bool,
}

/// `store.redis_mode` and what it needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisMode {
    /// `redis_url`: one Redis (a managed Redis's primary endpoint included).
    Standalone,
    /// `redis_sentinels` + `redis_master_name`: the master they name, followed on failover.
    Sentinel(SentinelConfig),
    /// `redis_nodes`: a Redis Cluster's seed nodes.
    Cluster(Vec<String>),
}

/// Where the sentinels are and how to log in to them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentinelConfig {
    /// `host:port` of each sentinel.
    pub sentinels: Vec<String>,
    /// The master's name.
    pub master_name: String,
    /// The sentinels' own ACL user (else `redis_username`).
    pub username: Option<String>,
    /// The sentinels' own password (else the store's).
    pub password: Option<Secret>,
}

/// `store.redis_ca_file`, `redis_cert_file`, `redis_key_file` (read when the store starts, and
/// by `check-config`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RedisTlsFiles {
    /// The only CA trusted for Redis; system roots when unset.
    pub ca: Option<PathBuf>,
    /// A client certificate and its key, when Redis asks for one.
    pub client: Option<(PathBuf, PathBuf)>,
}

/// One caller key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientKey {
    /// SHA-256 of the key.
    pub sha256: [u8; 32],
    /// Refused from this time on (ms since the Unix epoch); `None`: no expiry.
    pub not_after_ms: Option<u64>,
}

/// A key's `not_after` as RFC 3339 (`None`: no expiry).
pub fn not_after_text(ms: Option<u64>) -> Option<String> {
    ms.map(|ms| {
        humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_millis(ms))
            .to_string()
    })
}

/// One `[[clients]]` entry, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientConfig {
    /// Name.
    pub name: String,
    /// Its keys (several during a rotation; none for an mTLS-only caller).
    pub keys: Vec<ClientKey>,
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
    pub routes: Option<Vec<RoutePattern>>,
    /// How its `/cgi/*` calls carry the token upstream.
    pub api_style: ApiStyle,
    /// The users it may act as; the first is the default (empty: it names none).
    pub act_as: Vec<String>,
}

impl ClientConfig {
    /// Whether this caller may call `path`.
    pub fn may_call(&self, path: &str) -> bool {
        self.routes
            .as_ref()
            .is_none_or(|r| r.iter().any(|p| p.matches(path)))
    }
}

/// `[passthrough]`, validated.
#[derive(Debug, Clone)]
pub struct PassthroughConfig {
    /// Largest JSON body of a `/cgi/*` call.
    pub max_body: u64,
    /// Largest answer of a `/cgi/*` call passed back (streamed beyond 1 MiB).
    pub max_answer: u64,
}

/// The whole validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// `[server]`
    pub server: ServerConfig,
    /// `[log]`
    pub log: LogConfig,
    /// `[corps.*]`, by name.
    pub corps: BTreeMap<String, CorpConfig>,
    /// `[upload]`
    pub upload: UploadConfig,
    /// `[dedupe]`
    pub dedupe: DedupeConfig,
    /// `[store]`
    pub store: StoreConfig,
    /// `[passthrough]`
    pub passthrough: PassthroughConfig,
    /// `[[clients]]`
    pub clients: Vec<ClientConfig>,
    /// `[tracing]`
    pub tracing: TracingConfig,
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
        let builder = config::Config::builder()
            .add_source(config::File::from(path).format(config::FileFormat::Toml))
            .add_source(
                config::File::from(local.as_path())
                    .format(config::FileFormat::Toml)
                    .required(false),
            );
        Self::layered(builder, env)
    }

    /// A config from TOML text and `env` alone (no file, no `local.toml`), validated: for
    /// tools and the config fuzzer.
    pub fn from_toml(text: &str, env: HashMap<String, String>) -> Result<Self, ConfigError> {
        let builder = config::Config::builder()
            .add_source(config::File::from_str(text, config::FileFormat::Toml));
        Self::try_from(Self::layered(builder, Some(env))?)
    }

    /// `builder`'s sources with the environment on top, deserialized. Errors name the key
    /// and never quote a value.
    fn layered(
        builder: config::ConfigBuilder<config::builder::DefaultState>,
        env: Option<HashMap<String, String>>,
    ) -> Result<FileConfig, ConfigError> {
        let environment = config::Environment::with_prefix("FXGATE")
            .prefix_separator("__")
            .separator("__")
            .list_separator(",")
            .with_list_parse_key("upload.message_types")
            .try_parsing(true)
            .source(env);
        let layered = builder
            .add_source(environment)
            .build()
            .map_err(|e| ConfigError::Source(without_snippet(&e.to_string())))?;
        serde_path_to_error::deserialize(layered).map_err(|e| {
            let key = e.path().to_string();
            let cause = without_values(&e.into_inner().to_string());
            ConfigError::Source(format!("`{key}`: {cause}"))
        })
    }
}

/// A parse error without the source lines the TOML parser quotes: the offending line may be
/// an unterminated `app_secret = "…`, and this message is printed by `check-config`, returned
/// by `/admin/reload` and logged. The line and column stay, which is enough to find it.
fn without_snippet(message: &str) -> String {
    message
        .lines()
        .filter(|l| {
            let t = l.trim_start();
            !(t.starts_with('|')
                || t.split_once(" |")
                    .is_some_and(|(n, _)| n.trim().chars().all(|c| c.is_ascii_digit())))
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// A type error without the value that caused it (`invalid type: string "…", expected …`
/// becomes `invalid type: string, expected …`): a secret written where another key belongs,
/// or a key misplaced, must not be echoed. The key path and the expected type stay.
fn without_values(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(at) = ["invalid type: ", "invalid value: "]
        .iter()
        .filter_map(|p| rest.find(p).map(|i| i + p.len()))
        .min()
    {
        out.push_str(&rest[..at]);
        rest = &rest[at..];
        let kind_end = rest.find([' ', ',']).unwrap_or(rest.len());
        out.push_str(&rest[..kind_end]);
        rest = match rest.find(", expected") {
            Some(end) if end >= kind_end => &rest[end..],
            _ => &rest[kind_end..],
        };
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests;
