//! Parsers for the value forms of the config (durations, sizes, SHA-256s, addresses, secrets
//! inline or from a file), each naming the key it reads on failure.

use std::net::SocketAddr;
use std::time::Duration;

use sha2::{Digest, Sha256};

use super::file::{
    ServerFile, DEFAULT_MAX_UNAUTHENTICATED, DEFAULT_UNAUTHENTICATED_BODY_BYTES,
    DEFAULT_UNAUTHENTICATED_BODY_TIMEOUT, MAX_WORKERS,
};
use super::{invalid, ConfigError, Secret, Unauthenticated};

/// `redis://user:secret@host` → `redis://user:***@host`.
pub(super) fn mask_url_password(url: &str) -> String {
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

pub(super) fn parse_addr(key: &str, value: &str) -> Result<SocketAddr, ConfigError> {
    value.trim().parse().map_err(|_| {
        invalid(
            key,
            format!("`{value}` is not an address like \"127.0.0.1:8080\""),
        )
    })
}

pub(super) fn read_secret(
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

/// `server.workers`: by default one serving thread per core this process may run on (its CPU
/// affinity and cgroup quota counted).
pub(super) fn parse_workers(n: Option<usize>) -> Result<usize, ConfigError> {
    match n {
        None => Ok(std::thread::available_parallelism().map_or(1, |n| n.get())),
        Some(0) => Err(invalid("server.workers", "must be at least 1")),
        Some(n) if n > MAX_WORKERS => Err(invalid(
            "server.workers",
            format!("{n} is more than {MAX_WORKERS}"),
        )),
        Some(n) => Ok(n),
    }
}

/// `server.max_unauthenticated`, `unauthenticated_body_bytes` and `_timeout`.
pub(super) fn unauthenticated(s: &ServerFile) -> Result<Unauthenticated, ConfigError> {
    let max_requests = match s.max_unauthenticated.unwrap_or(DEFAULT_MAX_UNAUTHENTICATED) {
        0 => return Err(invalid("server.max_unauthenticated", "must be at least 1")),
        n => n,
    };
    let bytes = s.unauthenticated_body_bytes.as_deref();
    let key = "server.unauthenticated_body_bytes";
    let max_bytes = parse_size(key, bytes.unwrap_or(DEFAULT_UNAUTHENTICATED_BODY_BYTES))?;
    if max_bytes == 0 {
        return Err(invalid(key, "must be at least 1 byte"));
    }
    let timeout = s.unauthenticated_body_timeout.as_deref();
    let key = "server.unauthenticated_body_timeout";
    let timeout = parse_duration(key, timeout.unwrap_or(DEFAULT_UNAUTHENTICATED_BODY_TIMEOUT))?;
    if timeout.is_zero() {
        return Err(invalid(key, "must be above 0s"));
    }
    Ok(Unauthenticated {
        max_requests,
        max_bytes,
        timeout,
    })
}
