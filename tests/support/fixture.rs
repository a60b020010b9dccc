//! Typed test configs: the gateway's own `config::file` structs, filled in as values and
//! written out as TOML, so a test says `cfg.corp().upstream_timeout = some("1s")` instead of
//! splicing text, and a misspelt key does not compile. Only the tests of a deliberately broken
//! file write text (`Gateway::spawn_text`, `rewrite_text`).

use fxgate::config::file::{ClientFile, CorpFile, FileConfig, ServerFile, StoreFile};

use super::{key_hash, RedisServer, ALPHA_KEY, APP_SECRET, BETA_KEY, GAMMA_KEY};

/// `Some(v.to_string())`: most keys are optional strings.
pub fn some(v: &str) -> Option<String> {
    Some(v.to_string())
}

/// The standard test config: two callers (alpha, beta) on one corp `default` at `base_url`,
/// loopback port 0 everywhere, two serving threads.
pub fn standard(base_url: &str) -> FileConfig {
    let corp = CorpFile {
        base_url: some(base_url),
        app_id: some("sandbox-app"),
        app_secret: some(APP_SECRET),
        permanent_code: some("sandbox-permanent-code"),
        // Load tests send more than Fxiaoke's 100 calls per 20 s; budget tests set their own.
        upstream_requests_per_20s: Some(1_000_000),
        ..CorpFile::default()
    };
    FileConfig {
        server: ServerFile {
            listen: some("127.0.0.1:0"),
            admin_listen: some("127.0.0.1:0"),
            request_header_timeout: some("10s"),
            shutdown_grace: some("10s"),
            // Two serving threads whatever the machine: every test crosses the per-thread paths.
            workers: Some(2),
            ..ServerFile::default()
        },
        corps: [("default".to_string(), corp)].into(),
        clients: vec![caller("alpha", ALPHA_KEY), caller("beta", BETA_KEY)],
        ..FileConfig::default()
    }
}

/// A caller `name` holding `key`, with every other setting at its default (fill in more with
/// `ClientFile { requests_per_minute: Some(1), ..caller("gamma", GAMMA_KEY) }`).
pub fn caller(name: &str, key: &str) -> ClientFile {
    ClientFile {
        name: some(name),
        key_sha256: Some(key_hash(key)),
        ..ClientFile::default()
    }
}

/// Caller gamma (`GAMMA_KEY`), which tests give limits of its own.
pub fn gamma() -> ClientFile {
    caller("gamma", GAMMA_KEY)
}

/// The `[store]` table for `redis`, failing `mode` ("open" or "closed").
pub fn redis_store(redis: &RedisServer, mode: &str) -> StoreFile {
    redis_store_at(&redis.url(), mode)
}

/// The `[store]` table for the Redis at `url`.
pub fn redis_store_at(url: &str, mode: &str) -> StoreFile {
    StoreFile {
        backend: some("redis"),
        redis_url: some(url),
        quota_fail_mode: some(mode),
        ..StoreFile::default()
    }
}

/// One edit of a config, as a value (tables of steps).
pub type Edit = fn(&mut FileConfig);

/// What tests do to a config value.
pub trait TestConfig {
    /// The corp `default`.
    fn corp(&mut self) -> &mut CorpFile;
    /// The caller called `name` (which must exist).
    fn client(&mut self, name: &str) -> &mut ClientFile;
    /// Adds callers.
    fn add(&mut self, callers: impl IntoIterator<Item = ClientFile>);
    /// This config after `edit`.
    fn with(self, edit: impl FnOnce(&mut FileConfig)) -> FileConfig;
    /// As TOML text, the way an operator would write it.
    fn toml(&self) -> String;
}

impl TestConfig for FileConfig {
    fn corp(&mut self) -> &mut CorpFile {
        self.corps.entry("default".to_string()).or_default()
    }

    fn client(&mut self, name: &str) -> &mut ClientFile {
        self.clients
            .iter_mut()
            .find(|c| c.name.as_deref() == Some(name))
            .unwrap_or_else(|| panic!("no caller {name} in the test config"))
    }

    fn add(&mut self, callers: impl IntoIterator<Item = ClientFile>) {
        self.clients.extend(callers);
    }

    fn with(mut self, edit: impl FnOnce(&mut FileConfig)) -> FileConfig {
        edit(&mut self);
        self
    }

    fn toml(&self) -> String {
        toml::to_string(self).expect("a config value serialises")
    }
}

/// `cfg` loaded as the gateway loads its file (for tests that drive the library directly).
pub fn load(cfg: &FileConfig) -> fxgate::Config {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("fxgate.toml");
    std::fs::write(&path, cfg.toml()).expect("the config file is written");
    fxgate::Config::load(&path, Some(Default::default())).expect("the config loads")
}

/// `Some(vec![…])` of owned strings: the list keys (`routes`, `act_as`, `message_types`).
pub fn list(items: &[&str]) -> Option<Vec<String>> {
    Some(items.iter().map(|i| i.to_string()).collect())
}
