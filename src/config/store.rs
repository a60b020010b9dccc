//! `[store]`, validated: the backend, and for Redis how it is found (one address, sentinels, a
//! Cluster), its credentials and TLS files (design §11). A password lives in one place (the
//! URL or the file, never both); TLS files only with TLS (`rediss://`, or `redis_tls`).

use std::path::PathBuf;
use std::time::Duration;

use super::file::{StoreFile, DEFAULT_LEASE_TTL};
use super::parse::{parse_duration, read_secret};
use super::{
    invalid, Backend, ConfigError, FailMode, RedisMode, RedisTlsFiles, Secret, SentinelConfig,
    StoreConfig,
};

pub(super) fn store(st: StoreFile) -> Result<StoreConfig, ConfigError> {
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
        .clone()
        .unwrap_or_else(|| "redis://127.0.0.1:6379".into());
    if backend == Backend::Redis {
        if let Err(e) = redis::Client::open(redis_url.as_str()) {
            // The crate's message never repeats the URL, so no password leaks.
            return Err(invalid("store.redis_url", e.to_string()));
        }
    }
    let mode = redis_mode(&st)?;
    let tls = match mode {
        RedisMode::Standalone => redis_url.starts_with("rediss://"),
        _ => st.redis_tls.unwrap_or(false),
    };
    let (redis_username, redis_password) = credentials(&st, &redis_url)?;
    let redis_tls = tls_files(&st, tls)?;
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
        redis_username,
        redis_password,
        redis_tls,
        mode,
        tls,
        key_prefix,
        timeout: parse_duration("store.timeout", st.timeout.as_deref().unwrap_or("250ms"))?,
        lease_ttl: lease_ttl(st.lease_ttl.as_deref())?,
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
    Ok(store)
}

/// `store.redis_mode` and the keys it needs: `redis_sentinels` and `redis_master_name` for
/// Sentinel, `redis_nodes` for Cluster; each key of another mode is refused where it would be
/// ignored (a half-configured mode would fail over silently).
fn redis_mode(st: &StoreFile) -> Result<RedisMode, ConfigError> {
    let list = |key: &str, v: &Option<Vec<String>>| -> Result<Vec<String>, ConfigError> {
        let items: Vec<String> = v.iter().flatten().map(|a| a.trim().to_string()).collect();
        if items.is_empty() {
            return Err(invalid(key, "missing: at least one host:port"));
        }
        if let Some(bad) = items.iter().find(|a| !host_port(a)) {
            return Err(invalid(key, format!("`{bad}` is not host:port")));
        }
        Ok(items)
    };
    let stray = |key: &str, set: bool, mode: &str| {
        if set {
            Err(invalid(
                key,
                format!("is not used with redis_mode = \"{mode}\""),
            ))
        } else {
            Ok(())
        }
    };
    let sentinel_keys = st.redis_sentinels.is_some() || st.redis_master_name.is_some();
    match st.redis_mode.as_deref().map(str::trim) {
        None | Some("standalone") => {
            stray("store.redis_sentinels", sentinel_keys, "standalone")?;
            stray("store.redis_nodes", st.redis_nodes.is_some(), "standalone")?;
            stray(
                "store.redis_tls",
                st.redis_tls.is_some(),
                "standalone (use a rediss:// URL)",
            )?;
            Ok(RedisMode::Standalone)
        }
        Some("sentinel") => {
            stray("store.redis_nodes", st.redis_nodes.is_some(), "sentinel")?;
            let mode = RedisMode::Sentinel(sentinel(
                st,
                list("store.redis_sentinels", &st.redis_sentinels)?,
            )?);
            // The sentinels name the address: a URL here would be ignored without a word.
            stray("store.redis_url", st.redis_url.is_some(), "sentinel")?;
            Ok(mode)
        }
        Some("cluster") => {
            stray("store.redis_sentinels", sentinel_keys, "cluster")?;
            let mode = RedisMode::Cluster(list("store.redis_nodes", &st.redis_nodes)?);
            stray("store.redis_url", st.redis_url.is_some(), "cluster")?;
            Ok(mode)
        }
        Some(other) => Err(invalid(
            "store.redis_mode",
            format!("`{other}`: use \"standalone\", \"sentinel\" or \"cluster\""),
        )),
    }
}

/// The sentinels' master name and their own credentials, if any.
fn sentinel(st: &StoreFile, sentinels: Vec<String>) -> Result<SentinelConfig, ConfigError> {
    let master_name = st
        .redis_master_name
        .as_deref()
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .ok_or_else(|| {
            invalid(
                "store.redis_master_name",
                "missing: the master's name the sentinels watch",
            )
        })?
        .to_string();
    let password = match &st.redis_sentinel_password_file {
        Some(file) => Some(read_secret(
            "store.redis_sentinel_password",
            None,
            Some(file.clone()),
        )?),
        None => None,
    };
    Ok(SentinelConfig {
        sentinels,
        master_name,
        username: st
            .redis_sentinel_username
            .clone()
            .filter(|u| !u.trim().is_empty()),
        password,
    })
}

fn host_port(a: &str) -> bool {
    a.rsplit_once(':')
        .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok())
}

/// `redis_username` and the password from `redis_password[_file]`; a password in both the URL
/// and the file is refused (which one would win is a guess).
fn credentials(st: &StoreFile, url: &str) -> Result<(Option<String>, Option<Secret>), ConfigError> {
    let password = match (&st.redis_password, &st.redis_password_file) {
        (None, None) => None,
        (inline, file) => Some(read_secret(
            "store.redis_password",
            inline.clone(),
            file.clone(),
        )?),
    };
    let in_url = redis::IntoConnectionInfo::into_connection_info(url)
        .map(|i| i.redis_settings().password().is_some())
        .unwrap_or(false);
    if password.is_some() && in_url {
        return Err(invalid(
            "store.redis_password_file",
            "the redis_url holds a password too: keep one of them",
        ));
    }
    let username = st
        .redis_username
        .as_deref()
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(str::to_owned);
    Ok((username, password))
}

/// The TLS files: only with TLS; a certificate and its key together; each readable.
fn tls_files(st: &StoreFile, tls: bool) -> Result<RedisTlsFiles, ConfigError> {
    let file = |key: &str, v: &Option<String>| -> Result<Option<PathBuf>, ConfigError> {
        let Some(path) = v.as_deref().filter(|p| !p.is_empty()) else {
            return Ok(None);
        };
        if !tls {
            return Err(invalid(
                key,
                "needs TLS: a rediss:// redis_url, or redis_tls = true with sentinels or nodes",
            ));
        }
        std::fs::metadata(path).map_err(|e| invalid(key, format!("cannot read {path}: {e}")))?;
        Ok(Some(PathBuf::from(path)))
    };
    let ca = file("store.redis_ca_file", &st.redis_ca_file)?;
    let cert = file("store.redis_cert_file", &st.redis_cert_file)?;
    let key = file("store.redis_key_file", &st.redis_key_file)?;
    let client = match (cert, key) {
        (Some(c), Some(k)) => Some((c, k)),
        (None, None) => None,
        (Some(_), None) => {
            return Err(invalid(
                "store.redis_key_file",
                "missing: `redis_cert_file` is set",
            ))
        }
        (None, Some(_)) => {
            return Err(invalid(
                "store.redis_cert_file",
                "missing: `redis_key_file` is set",
            ))
        }
    };
    Ok(RedisTlsFiles { ca, client })
}

/// `store.lease_ttl`: at least 300 ms, so renewal (every third of it) outpaces expiry.
fn lease_ttl(value: Option<&str>) -> Result<Duration, ConfigError> {
    let ttl = parse_duration("store.lease_ttl", value.unwrap_or(DEFAULT_LEASE_TTL))?;
    if ttl < Duration::from_millis(300) {
        return Err(invalid("store.lease_ttl", "must be at least 300ms"));
    }
    Ok(ttl)
}
