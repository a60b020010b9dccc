//! `[[clients]]`, validated: names, keys (each naming one caller), certificate subjects,
//! corps, limits, route allow-lists, the API style and the users a caller may act as.

use std::collections::BTreeMap;

use super::file::{ClientFile, KeyFile};
use super::parse::{parse_sha256, parse_size};
use super::{invalid, ApiStyle, ClientConfig, ClientKey, ConfigError, CorpConfig, RoutePattern};

pub(super) fn clients(
    files: Vec<ClientFile>,
    corps: &BTreeMap<String, CorpConfig>,
) -> Result<Vec<ClientConfig>, ConfigError> {
    let mut clients = Vec::with_capacity(files.len());
    for (i, c) in files.into_iter().enumerate() {
        let k = |field: &str| format!("clients[{i}].{field}");
        let name = name(c.name.clone(), &clients, &k)?;
        let keys = client_keys(c.key_sha256.as_deref(), c.keys.unwrap_or_default(), &k)?;
        if keys.is_empty() && c.cert_subject.is_none() {
            return Err(invalid(
                k("key_sha256"),
                "missing (set `key_sha256` or `keys`, or `cert_subject` for an mTLS caller)",
            ));
        }
        if let Some(other) = clients.iter().find(|o| shares_a_key(o, &keys)) {
            return Err(invalid(
                k("keys"),
                format!("a key of `{name}` is also a key of `{}`", other.name),
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
                    .map(|r| RoutePattern::parse(r).map_err(|e| invalid(k("routes"), e)))
                    .collect::<Result<Vec<_>, _>>()
            })
            .transpose()?;
        let (api_style, act_as) = style_and_users(c.api_style.as_deref(), c.act_as, &k)?;
        clients.push(ClientConfig {
            name,
            keys,
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
            api_style,
            act_as,
        });
    }
    Ok(clients)
}

/// `clients.*.name`: present, of letters, digits, `-_.`, not `unknown`, not taken.
fn name(
    name: Option<String>,
    earlier: &[ClientConfig],
    k: &dyn Fn(&str) -> String,
) -> Result<String, ConfigError> {
    let name = name
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
    if earlier.iter().any(|o| o.name == name) {
        return Err(invalid(k("name"), format!("`{name}` is defined twice")));
    }
    Ok(name)
}

/// `clients.*.api_style` and `act_as`.
fn style_and_users(
    style: Option<&str>,
    act_as: Option<Vec<String>>,
    k: &dyn Fn(&str) -> String,
) -> Result<(ApiStyle, Vec<String>), ConfigError> {
    let api_style = match style.map(str::trim) {
        None | Some("legacy") => ApiStyle::Legacy,
        Some("oauth") => ApiStyle::OAuth,
        Some(other) => {
            return Err(invalid(
                k("api_style"),
                format!("`{other}`: use \"legacy\" or \"oauth\""),
            ))
        }
    };
    let act_as = act_as.unwrap_or_default();
    if let Some(bad) = act_as.iter().find(|u| u.trim().is_empty() || u.len() > 64) {
        return Err(invalid(
            k("act_as"),
            format!("`{bad}`: user ids are 1 to 64 characters"),
        ));
    }
    Ok((api_style, act_as))
}

/// Whether `other` holds one of `keys` (a key must name one caller).
fn shares_a_key(other: &ClientConfig, keys: &[ClientKey]) -> bool {
    other
        .keys
        .iter()
        .any(|o| keys.iter().any(|m| m.sha256 == o.sha256))
}

/// `key_sha256` (no expiry) and `keys` (each with an optional `not_after`), as one list.
fn client_keys(
    single: Option<&str>,
    listed: Vec<KeyFile>,
    k: &dyn Fn(&str) -> String,
) -> Result<Vec<ClientKey>, ConfigError> {
    let mut keys = Vec::new();
    if let Some(v) = single {
        keys.push(ClientKey {
            sha256: parse_sha256(&k("key_sha256"), v)?,
            not_after_ms: None,
        });
    }
    for (i, key) in listed.into_iter().enumerate() {
        let at = |field: &str| k(&format!("keys[{i}].{field}"));
        let sha = key
            .sha256
            .ok_or_else(|| invalid(at("sha256"), "missing (from `fxgate hash-key`)"))?;
        let sha256 = parse_sha256(&at("sha256"), &sha)?;
        let not_after_ms = key
            .not_after
            .map(|t| {
                humantime::parse_rfc3339_weak(&t)
                    .ok()
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .and_then(|d| u64::try_from(d.as_millis()).ok())
                    .ok_or_else(|| {
                        invalid(
                            at("not_after"),
                            format!(
                                "`{t}`: use an RFC 3339 time in UTC, e.g. \"2027-01-31T00:00:00Z\""
                            ),
                        )
                    })
            })
            .transpose()?;
        if keys.iter().any(|o: &ClientKey| o.sha256 == sha256) {
            return Err(invalid(at("sha256"), "the same key is listed twice"));
        }
        keys.push(ClientKey {
            sha256,
            not_after_ms,
        });
    }
    Ok(keys)
}
