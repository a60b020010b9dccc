//! The serde mirror of `config/*.toml`. Every key is documented here with its unit and default;
//! `deny_unknown_fields` turns a typo into a startup error that names the key. `Serialize` is
//! for the tests, which build configs as values and write them out (`None` keys are left out).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Default caller-facing listen address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// Default admin listen address.
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9090";
/// Default time a client has to send its request head.
pub const DEFAULT_REQUEST_HEADER_TIMEOUT: &str = "10s";
/// Default life of a Redis lease (token refresh turn, dedupe upload lock) without renewal.
pub const DEFAULT_LEASE_TTL: &str = "10s";
/// Default bound on requests in flight on the caller listener (beyond it: 503, 950303).
pub const DEFAULT_MAX_INFLIGHT: usize = 1024;
/// Upper bound on `server.workers`: a typo (`workers = 1000`) should not start a thousand
/// runtimes, each with its own upstream pool.
pub const MAX_WORKERS: usize = 256;
/// Default drain deadline on shutdown.
pub const DEFAULT_SHUTDOWN_GRACE: &str = "30s";
/// Default `tracing.sample_ratio`.
pub const DEFAULT_SAMPLE_RATIO: f64 = 1.0;
/// Default `tracing.export_timeout`.
pub const DEFAULT_EXPORT_TIMEOUT: &str = "10s";
/// How often the config file and the TLS files are checked for changes.
pub const DEFAULT_WATCH_INTERVAL: &str = "5s";
/// Default `server.max_unauthenticated`: requests reading a body before their caller is known.
pub const DEFAULT_MAX_UNAUTHENTICATED: usize = 64;
/// Default `server.unauthenticated_body_bytes`: body bytes they hold in all.
pub const DEFAULT_UNAUTHENTICATED_BODY_BYTES: &str = "8MiB";
/// Default `server.unauthenticated_body_timeout`.
pub const DEFAULT_UNAUTHENTICATED_BODY_TIMEOUT: &str = "5s";
/// Default `server.idle_timeout`.
pub const DEFAULT_IDLE_TIMEOUT: &str = "60s";
/// Default fraction of a token's lifetime after which it is refreshed.
pub const DEFAULT_REFRESH_AT: f64 = 0.93;
/// Default per-interface limit Fxiaoke documents (100 calls / 20 s).
pub const DEFAULT_UPSTREAM_REQUESTS_PER_20S: u32 = 100;
/// Default deadline for Fxiaoke's answer once the request is sent.
pub const DEFAULT_UPSTREAM_TIMEOUT: &str = "60s";
/// Default TCP+TLS connect deadline towards Fxiaoke.
pub const DEFAULT_CONNECT_TIMEOUT: &str = "5s";
/// Default message-material limit (Fxiaoke: images ≤ 5 MB).
pub const DEFAULT_MESSAGE_MAX_BYTES: &str = "5MiB";
/// Default bound on a `/cgi/*` call's JSON body.
pub const DEFAULT_PASSTHROUGH_MAX_BODY: &str = "1MiB";
/// Default `passthrough.max_answer`.
pub const DEFAULT_PASSTHROUGH_MAX_ANSWER: &str = "16MiB";
/// Default CRM document limit (Fxiaoke: ≤ 20 MB).
pub const DEFAULT_DOCUMENT_MAX_BYTES: &str = "20MiB";
/// Default `upload.file_max_bytes` (Fxiaoke's File Service limit).
pub const DEFAULT_FILE_MAX_BYTES: &str = "100MiB";

/// The whole file.
#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Listeners, TLS, timeouts.
    #[serde(default)]
    pub server: ServerFile,
    /// Log format.
    #[serde(default)]
    pub log: LogFile,
    /// One table per Fxiaoke tenant/app.
    #[serde(default)]
    pub corps: BTreeMap<String, CorpFile>,
    /// Per-route upload limits.
    #[serde(default)]
    pub upload: UploadFile,
    /// Dedupe index.
    #[serde(default)]
    pub dedupe: DedupeFile,
    /// Where shared state lives.
    #[serde(default)]
    pub store: StoreFile,
    /// `/cgi/*` calls passed through to Fxiaoke.
    #[serde(default)]
    pub passthrough: PassthroughFile,
    /// The callers.
    #[serde(default)]
    pub clients: Vec<ClientFile>,
    /// Span export.
    #[serde(default)]
    pub tracing: TracingFile,
}

/// `[tracing]`
#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TracingFile {
    /// OTLP/HTTP traces URL (e.g. `http://otel-collector:4318/v1/traces`); unset: no export.
    pub otlp_endpoint: Option<String>,
    /// `service.name` of the exported spans, default `fxgate`.
    pub service_name: Option<String>,
    /// Fraction of the traces fxgate starts itself that are sampled, default 1.0 (a caller's
    /// `traceparent` decides for its own trace).
    pub sample_ratio: Option<f64>,
    /// Time one export may take, default `10s`.
    pub export_timeout: Option<String>,
}

/// `[server]`
#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServerFile {
    /// Caller-facing address, default `127.0.0.1:8080`.
    pub listen: Option<String>,
    /// Admin address (`/metrics`, `/healthz`, `/readyz`), default `127.0.0.1:9090`.
    pub admin_listen: Option<String>,
    /// PEM certificate chain; with `tls_key`, `listen` speaks HTTPS.
    pub tls_cert: Option<String>,
    /// PEM private key.
    pub tls_key: Option<String>,
    /// PEM CA bundle; callers may then present client certificates.
    pub client_ca: Option<String>,
    /// Time to receive a request head, default `10s`.
    pub request_header_timeout: Option<String>,
    /// A connection with no request in flight and no bytes moving is closed after this,
    /// default `60s`.
    pub idle_timeout: Option<String>,
    /// Drain deadline on SIGTERM/SIGINT, default `30s`.
    pub shutdown_grace: Option<String>,
    /// SHA-256 (hex) of the admin key; required for `/admin/*` off loopback.
    pub admin_key_sha256: Option<String>,
    /// Requests in flight on `listen` at most, default 1024; more are shed with 503 (950303).
    pub max_inflight: Option<usize>,
    /// How often the config file and the TLS files are checked for changes (a change reloads
    /// the callers or the certificates), default `5s`; `0s` turns watching off (SIGHUP and
    /// `POST /admin/reload` still work).
    pub watch_interval: Option<String>,
    /// Threads serving `listen`, each with its own runtime, listening socket and upstream
    /// pool; default one per core this process may use.
    pub workers: Option<usize>,
    /// Requests whose body is read to find an SDK's credential (no key or certificate in the
    /// head) at once, default 64; one more is 503 (950303) at once.
    pub max_unauthenticated: Option<usize>,
    /// Body bytes those requests hold in all, default `8MiB`; beyond it, 503 (950303).
    pub unauthenticated_body_bytes: Option<String>,
    /// Time one of them may take to send its body, default `5s`; then 400 (940005).
    pub unauthenticated_body_timeout: Option<String>,
}

/// `[log]`
#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LogFile {
    /// `"pretty"` (default) or `"json"`.
    pub format: Option<String>,
    /// A level or `EnvFilter` directive; unset: `RUST_LOG`, else `"info"`.
    pub level: Option<String>,
}

/// `[corps.NAME]`
#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CorpFile {
    /// `"sandbox"` (in-process imitation) or `https://open.fxiaoke.com` (or another cloud).
    pub base_url: Option<String>,
    /// The app id.
    pub app_id: Option<String>,
    /// The app secret (prefer `app_secret_file`).
    pub app_secret: Option<String>,
    /// File holding the app secret.
    pub app_secret_file: Option<String>,
    /// The corp's permanent code.
    pub permanent_code: Option<String>,
    /// File holding the permanent code.
    pub permanent_code_file: Option<String>,
    /// Fraction of a token's lifetime after which it is refreshed, default 0.93.
    pub refresh_at: Option<f64>,
    /// Upstream calls allowed per 20 s per interface, default 100.
    pub upstream_requests_per_20s: Option<u32>,
    /// Upstream calls allowed per day; unlimited when absent.
    pub daily_call_budget: Option<u64>,
    /// Deadline for Fxiaoke's answer once a request is fully sent, default `60s`.
    pub upstream_timeout: Option<String>,
    /// Connect deadline towards Fxiaoke, default `5s`.
    pub connect_timeout: Option<String>,
    /// PEM roots trusted for this corp's upstream besides the web PKI.
    pub ca_file: Option<String>,
    /// The Fxiaoke user (`FSUID_…`) File Service uploads ask as for legacy-style callers.
    pub file_service_user: Option<String>,
    /// Hosts a File Service upload URL may name (`*.` for a domain and its subdomains),
    /// default `["*.fxiaoke.com", "*.sharecrm.com"]`; the corp's own origin always may.
    pub file_upload_hosts: Option<Vec<String>>,
}

/// `[upload]`
#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UploadFile {
    /// Limit on `/media/upload/message` and `type=image`, default `5MiB`.
    pub message_max_bytes: Option<String>,
    /// Allowed image types (checked on the file's first bytes).
    pub message_types: Option<Vec<String>>,
    /// Limit on `type=document`, default `20MiB`.
    pub document_max_bytes: Option<String>,
    /// Limit on `/media/upload/file` (the File Service), default `100MiB`.
    pub file_max_bytes: Option<String>,
}

/// `[dedupe]`
#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DedupeFile {
    /// How long a mediaId is trusted for reuse, default `72h`.
    pub ttl: Option<String>,
    /// Bound on index entries, default 1 000 000.
    pub max_entries: Option<u64>,
    /// `"client"` (default) or `"corp"`.
    pub claim_scope: Option<String>,
}

/// `[store]`
#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StoreFile {
    /// `"memory"` (default) or `"redis"`.
    pub backend: Option<String>,
    /// Redis URL when `backend = "redis"`.
    pub redis_url: Option<String>,
    /// With Redis down: `"open"` (default) or `"closed"`.
    pub quota_fail_mode: Option<String>,
    /// Prefix of every Redis key (default `"fxgate"`).
    pub key_prefix: Option<String>,
    /// Bound on one Redis command (default `"250ms"`).
    pub timeout: Option<String>,
    /// How long a Redis lease (a replica's turn at the token endpoint, a claimed upload's
    /// lock) outlives a replica that stopped renewing it, default `10s`.
    pub lease_ttl: Option<String>,
    /// `"standalone"` (default: `redis_url`), `"sentinel"` (`redis_sentinels` and
    /// `redis_master_name`) or `"cluster"` (`redis_nodes`).
    pub redis_mode: Option<String>,
    /// Sentinel: the sentinels, `host:port` each.
    pub redis_sentinels: Option<Vec<String>>,
    /// Sentinel: the name of the master they watch.
    pub redis_master_name: Option<String>,
    /// Sentinel: the sentinels' own ACL user, when it differs from `redis_username`.
    pub redis_sentinel_username: Option<String>,
    /// Sentinel: a file holding the sentinels' own password, when it differs.
    pub redis_sentinel_password_file: Option<String>,
    /// Cluster: seed nodes, `host:port` each (the rest are found from them).
    pub redis_nodes: Option<Vec<String>>,
    /// Sentinel and Cluster: TLS to every node and sentinel (standalone: a `rediss://` URL).
    pub redis_tls: Option<bool>,
    /// ACL user (the URL's user is accepted too).
    pub redis_username: Option<String>,
    /// ACL password, inline (better: `redis_password_file`, or the environment).
    pub redis_password: Option<String>,
    /// A file holding the ACL password (its trailing newline ignored).
    pub redis_password_file: Option<String>,
    /// With `rediss://`: the only CA trusted for Redis (system roots otherwise).
    pub redis_ca_file: Option<String>,
    /// With `rediss://`: a client certificate, when Redis asks for one.
    pub redis_cert_file: Option<String>,
    /// Its key.
    pub redis_key_file: Option<String>,
}

/// `[passthrough]`
#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PassthroughFile {
    /// Largest JSON body of a `/cgi/*` call, default `1MiB`.
    pub max_body: Option<String>,
    /// Largest answer of a `/cgi/*` call passed back, default `16MiB`; an answer over 1 MiB
    /// streams back as it comes (a pause of `upstream_timeout` ends it), a larger one is 502.
    pub max_answer: Option<String>,
}

/// One of `[[clients]] keys = [{ sha256 = "…", not_after = "2027-01-31T00:00:00Z" }]`.
#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct KeyFile {
    /// SHA-256 (hex) of the key.
    pub sha256: Option<String>,
    /// RFC 3339 time from which the key is refused.
    pub not_after: Option<String>,
}

/// `[[clients]]`
#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ClientFile {
    /// Name used in logs, metrics and `/admin/clients`.
    pub name: Option<String>,
    /// SHA-256 (hex) of the caller's key, from `fxgate hash-key`.
    pub key_sha256: Option<String>,
    /// More keys, each with an optional expiry: rotation with an overlap window.
    pub keys: Option<Vec<KeyFile>>,
    /// Certificate subject, for mTLS callers.
    pub cert_subject: Option<String>,
    /// Which `[corps.*]` table this caller uploads to, default `"default"`.
    pub corp: Option<String>,
    /// Request-rate quota.
    pub requests_per_minute: Option<u32>,
    /// Daily byte quota, e.g. `"20GiB"`.
    pub bytes_per_day: Option<String>,
    /// Concurrent upload quota.
    pub max_concurrent_uploads: Option<u32>,
    /// Per-file limit below the route's.
    pub max_file_bytes: Option<String>,
    /// Route allow-list (exact paths, or prefixes ending in `*`); all routes when absent.
    pub routes: Option<Vec<String>>,
    /// `"legacy"` (default: token in the body) or `"oauth"` (Bearer + `x-fs-*` headers).
    pub api_style: Option<String>,
    /// User ids this caller may act as; the first is the default. None when absent.
    pub act_as: Option<Vec<String>>,
}
