//! What a reload would change (design §12): the new config against the one in force, key by
//! key (from the same effective view `check-config` prints, so secrets are never in it), the
//! callers added, removed or changed, and which changed keys this process cannot apply without
//! a restart. A reload applies every change or none, and never reports one it did not apply.

use serde_json::Value;

use super::Config;

/// One changed setting, old → new (secrets as `****`).
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    /// Dotted key, e.g. `corps.default.daily_call_budget`.
    pub key: String,
    /// Its value in force.
    pub old: Value,
    /// Its value in the new file.
    pub new: Value,
}

/// The difference between two configs.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Diff {
    /// Changed settings outside `[[clients]]`.
    pub changes: Vec<Change>,
    /// Callers only in the new config.
    pub clients_added: Vec<String>,
    /// Callers only in the old one.
    pub clients_removed: Vec<String>,
    /// Callers in both whose entry changed (keys, limits, routes, users).
    pub clients_changed: Vec<String>,
}

/// Keys a running process applies on reload, besides `[[clients]]`: `corps.<name>.<key>`.
const LIVE_CORP_KEYS: [&str; 5] = [
    "upstream_requests_per_20s",
    "daily_call_budget",
    "upstream_timeout",
    "connect_timeout",
    "refresh_at",
];

/// Sections a running process applies whole on reload.
const LIVE_SECTIONS: [&str; 2] = ["upload.", "passthrough."];

/// Single keys a running process applies on reload (`dedupe.max_entries` sizes the index and
/// `log.format` builds the log writer: those need a restart).
const LIVE_KEYS: [&str; 4] = [
    "dedupe.ttl",
    "dedupe.claim_scope",
    "store.quota_fail_mode",
    "log.level",
];

impl Diff {
    /// `new` against `old`.
    pub fn between(old: &Config, new: &Config) -> Self {
        let (mut a, mut b) = (old.effective(), new.effective());
        let mut diff = Self::clients(&a["clients"], &b["clients"]);
        for v in [&mut a, &mut b] {
            if let Some(o) = v.as_object_mut() {
                o.remove("clients");
            }
        }
        let (mut fa, mut fb) = (Vec::new(), Vec::new());
        flatten("", &a, &mut fa);
        flatten("", &b, &mut fb);
        let get = |f: &[(String, Value)], k: &str| {
            f.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone())
        };
        let mut keys: Vec<String> = fa.iter().chain(&fb).map(|(k, _)| k.clone()).collect();
        keys.sort();
        keys.dedup();
        for key in keys {
            let (o, n) = (get(&fa, &key), get(&fb, &key));
            if o != n {
                diff.changes.push(Change {
                    key,
                    old: o.unwrap_or(Value::Null),
                    new: n.unwrap_or(Value::Null),
                });
            }
        }
        diff.secrets(old, new);
        diff.changes.sort_by(|a, b| a.key.cmp(&b.key));
        diff
    }

    /// Secrets change without their masked view changing: compared here, shown as `****`.
    fn secrets(&mut self, old: &Config, new: &Config) {
        let masked = || Value::String("****".into());
        for (name, c) in &new.corps {
            let Some(o) = old.corps.get(name) else {
                continue;
            };
            for (key, changed) in [
                ("app_secret", o.app_secret != c.app_secret),
                ("permanent_code", o.permanent_code != c.permanent_code),
            ] {
                if changed {
                    self.changes.push(Change {
                        key: format!("corps.{name}.{key}"),
                        old: masked(),
                        new: masked(),
                    });
                }
            }
        }
        if old.store.redis_password != new.store.redis_password
            && !self.changes.iter().any(|c| c.key == "store.redis_password")
        {
            self.changes.push(Change {
                key: "store.redis_password".into(),
                old: masked(),
                new: masked(),
            });
        }
        let url_changed = old.store.redis_url != new.store.redis_url;
        if url_changed && !self.changes.iter().any(|c| c.key == "store.redis_url") {
            self.changes.push(Change {
                key: "store.redis_url".into(),
                old: masked(),
                new: masked(),
            });
        }
    }

    fn clients(old: &Value, new: &Value) -> Self {
        let by_name = |v: &Value| -> Vec<(String, Value)> {
            v.as_array()
                .into_iter()
                .flatten()
                .map(|c| {
                    (
                        c["name"].as_str().unwrap_or_default().to_string(),
                        c.clone(),
                    )
                })
                .collect()
        };
        let (a, b) = (by_name(old), by_name(new));
        let find = |list: &[(String, Value)], n: &str| list.iter().find(|(k, _)| k == n).cloned();
        let mut diff = Self::default();
        for (name, entry) in &b {
            match find(&a, name) {
                None => diff.clients_added.push(name.clone()),
                Some((_, was)) if was != *entry => diff.clients_changed.push(name.clone()),
                Some(_) => {}
            }
        }
        diff.clients_removed = a
            .iter()
            .filter(|(n, _)| find(&b, n).is_none())
            .map(|(n, _)| n.clone())
            .collect();
        diff
    }

    /// The changed keys a running process cannot apply: listeners, TLS, the store's backend
    /// and address, workers, the corps' endpoints and credentials, the index size, the log
    /// format, tracing. Everything design §12 lists as live (callers, the corps' budgets,
    /// deadlines and refresh point, `[upload]`, `[passthrough]`, the dedupe TTL and scope, the
    /// fail mode, the log level) is applied.
    pub fn restart_required(&self) -> Vec<String> {
        self.changes
            .iter()
            .filter(|c| !is_live(&c.key))
            .map(|c| c.key.clone())
            .collect()
    }

    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
            && self.clients_added.is_empty()
            && self.clients_removed.is_empty()
            && self.clients_changed.is_empty()
    }

    /// The change log event's payload: every change, old → new, and the callers.
    pub fn to_json(&self) -> Value {
        serde_json::json!({
            "changes": self.changes.iter().map(|c| serde_json::json!({"key": c.key, "old": c.old, "new": c.new})).collect::<Vec<_>>(),
            "clients_added": self.clients_added,
            "clients_removed": self.clients_removed,
            "clients_changed": self.clients_changed,
        })
    }
}

fn is_live(key: &str) -> bool {
    if LIVE_KEYS.contains(&key) || LIVE_SECTIONS.iter().any(|s| key.starts_with(s)) {
        return true;
    }
    let mut parts = key.splitn(3, '.');
    matches!(
        (parts.next(), parts.next(), parts.next()),
        (Some("corps"), Some(_), Some(k)) if LIVE_CORP_KEYS.contains(&k)
    )
}

/// `{"a":{"b":1}}` → `[("a.b", 1)]`; arrays are leaves.
fn flatten(prefix: &str, v: &Value, out: &mut Vec<(String, Value)>) {
    match v.as_object() {
        Some(map) => {
            for (k, v) in map {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, v, out);
            }
        }
        None => out.push((prefix.to_string(), v.clone())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(extra: &str) -> Config {
        let toml = format!(
            "[corps.default]\nbase_url = \"sandbox\"\napp_id = \"a\"\napp_secret = \"s\"\npermanent_code = \"p\"\n{extra}\n[[clients]]\nname = \"alpha\"\nkey_sha256 = \"{}\"\n",
            "ab".repeat(32)
        );
        Config::from_toml(&toml, Default::default()).expect("a config")
    }

    #[test]
    fn live_keys_apply_and_the_rest_needs_a_restart() {
        let old = load("daily_call_budget = 5");
        let new = load("daily_call_budget = 1000");
        let d = Diff::between(&old, &new);
        assert_eq!(d.changes.len(), 1, "{d:?}");
        assert_eq!(d.changes[0].key, "corps.default.daily_call_budget");
        assert_eq!(
            (d.changes[0].old.clone(), d.changes[0].new.clone()),
            (5.into(), 1000.into())
        );
        assert!(d.restart_required().is_empty());
        let moved = load(
            "daily_call_budget = 5\nupstream_timeout = \"5s\"\nrefresh_at = 0.8\n[server]\nlisten = \"127.0.0.1:1\"\n[dedupe]\nttl = \"1h\"\nmax_entries = 10\n[log]\nlevel = \"debug\"\nformat = \"json\"",
        );
        let d = Diff::between(&old, &moved);
        assert_eq!(
            d.restart_required(),
            ["dedupe.max_entries", "log.format", "server.listen"]
        );
        assert_eq!(d.changes.len(), 7, "{d:?}");
        assert!(Diff::between(&old, &old).is_empty());
        // A secret that changes is named, never shown.
        let rotated = Config::from_toml(
            &format!(
                "[corps.default]\nbase_url = \"sandbox\"\napp_id = \"a\"\napp_secret = \"s2\"\npermanent_code = \"p\"\ndaily_call_budget = 5\n[[clients]]\nname = \"alpha\"\nkey_sha256 = \"{}\"\n",
                "ab".repeat(32)
            ),
            Default::default(),
        )
        .unwrap();
        let d = Diff::between(&old, &rotated);
        assert_eq!(d.restart_required(), ["corps.default.app_secret"]);
        assert!(!d.to_json().to_string().contains("s2"));
    }
}
