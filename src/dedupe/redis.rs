//! The dedupe index in Redis, shared by replicas. Keys (under `store.key_prefix`, each tagged
//! by corp, `{prefix}:v2:{corp:NAME}:…`, so the `MULTI` and the scripts stay in one Cluster
//! slot):
//!
//! * `dedupe:{route}:{sha256 hex}[:{sha256 of the filename, hex}]` — the entry (JSON), with
//!   the index TTL. Written (with its reverse entry, in one `MULTI`) only after Fxiaoke's
//!   `errorCode 0`.
//! * `media:{mediaId}` — the entry's key, so a delete through any replica evicts it.
//! * `dedupe-lock:{route}:{sha256 hex}[:…][:{caller}]` — the upload lease of a claimed digest
//!   (coalescing across replicas); lapses after `LOCK_TTL` if its holder dies.
//!
//! Every failure is the caller's to judge (`Err`): `store::FailOver` makes it a miss.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis::Script;
use sha2::{Digest, Sha256};

use super::{DedupeKey, DedupeStore, LockOutcome, MediaRef};
use crate::store::{Redis, StoreFuture, Tag};

static FORGET: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local k = redis.call('GET', KEYS[1])
if not k then return 0 end
redis.call('DEL', KEYS[1])
local v = redis.call('GET', k)
if v then
  local ok, e = pcall(cjson.decode, v)
  if ok and e.media_id == ARGV[1] then redis.call('DEL', k) return 1 end
end
return 0
"#,
    )
});

/// Adds a holder where the entry is, in one step. The entry is patched as text (the new name
/// goes first in `holders`, which always has the uploader) so that cjson never re-encodes the
/// numbers; `KEEPTTL` keeps the trust period.
static ADD_HOLDER: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local v = redis.call('GET', KEYS[1])
if not v then return 0 end
local ok, e = pcall(cjson.decode, v)
if not ok or e.media_id ~= ARGV[1] or type(e.holders) ~= 'table' then return 0 end
if #e.holders == 0 or #e.holders >= tonumber(ARGV[3]) then return 0 end
for _, h in ipairs(e.holders) do if h == ARGV[2] then return 0 end end
local at = string.find(v, '"holders":[', 1, true)
if not at then return 0 end
local cut = at + string.len('"holders":[') - 1
redis.call('SET', KEYS[1], string.sub(v, 1, cut) .. cjson.encode(ARGV[2]) .. ',' .. string.sub(v, cut + 1), 'KEEPTTL')
return 1
"#,
    )
});

/// The shared index.
#[derive(Debug)]
pub struct RedisStore {
    redis: Arc<Redis>,
    /// The trust period in force, in ms (a reload changes it; keys written under a longer
    /// one are checked against it on every read).
    ttl_ms: AtomicU64,
    lock_ttl: Duration,
}

impl RedisStore {
    /// An index in `redis` whose entries live `ttl`; claimed uploads hold a lock that lapses
    /// `lock_ttl` after its holder stops renewing it.
    pub fn new(redis: Arc<Redis>, ttl: Duration, lock_ttl: Duration) -> Self {
        Self {
            redis,
            ttl_ms: AtomicU64::new(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX)),
            lock_ttl,
        }
    }

    /// `{corp tag}:{kind}:{route}:{sha256}[:{filename hash}][:{scope}]`.
    fn key(&self, kind: &str, key: &DedupeKey, scope: Option<&str>) -> String {
        let sha = hex::encode(key.sha256);
        // Filenames are caller text: hashed so the key stays short and unambiguous.
        let name = key
            .filename
            .as_ref()
            .map(|n| hex::encode(Sha256::digest(n.as_bytes())));
        let mut parts = vec![kind, key.route, sha.as_str()];
        parts.extend(name.as_deref());
        parts.extend(scope);
        self.redis.key(Tag::Corp(&key.corp), &parts)
    }

    fn entry_key(&self, key: &DedupeKey) -> String {
        self.key("dedupe", key, None)
    }
}

/// An entry as stored: compact JSON, its fields in this order (the order earlier releases
/// wrote, so both read each other's entries and `ADD_HOLDER` finds `"holders":[` as before).
#[derive(serde::Serialize)]
struct Stored<'a> {
    caller: &'a str,
    content_type: &'a str,
    created_at_ms: u64,
    holders: &'a [String],
    media_id: &'a str,
    size: u64,
}

#[derive(serde::Deserialize)]
struct Read {
    caller: String,
    content_type: String,
    created_at_ms: u64,
    holders: Vec<String>,
    media_id: String,
    size: u64,
}

fn encode(m: &MediaRef) -> String {
    let stored = Stored {
        caller: &m.caller,
        content_type: &m.content_type,
        created_at_ms: m
            .created_at
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
        holders: &m.holders,
        media_id: &m.media_id,
        size: m.size,
    };
    // Strings and numbers only: serialising cannot fail.
    serde_json::to_string(&stored).unwrap_or_default()
}

fn decode(s: &str) -> Option<MediaRef> {
    let r: Read = serde_json::from_str(s).ok()?;
    Some(MediaRef {
        media_id: r.media_id,
        size: r.size,
        content_type: r.content_type,
        created_at: UNIX_EPOCH + Duration::from_millis(r.created_at_ms),
        caller: r.caller,
        holders: r.holders,
    })
}

impl DedupeStore for RedisStore {
    fn get<'a>(&'a self, key: &'a DedupeKey) -> StoreFuture<'a, Option<MediaRef>> {
        Box::pin(async move {
            let k = self.entry_key(key);
            let v: Option<String> = self
                .redis
                .run("dedupe", "get", |mut c| async move {
                    redis::cmd("GET").arg(&k).query_async(&mut c).await
                })
                .await?;
            Ok(v.as_deref().and_then(|raw| self.read_found(raw)))
        })
    }

    fn shared_key(&self, key: &DedupeKey) -> Option<String> {
        Some(self.entry_key(key))
    }

    fn read_found(&self, raw: &str) -> Option<MediaRef> {
        let ttl = Duration::from_millis(self.ttl_ms.load(Ordering::Relaxed));
        decode(raw).filter(|m| {
            SystemTime::now()
                .duration_since(m.created_at)
                .unwrap_or_default()
                < ttl
        })
    }

    fn put(&self, key: DedupeKey, value: MediaRef) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            let k = self.entry_key(&key);
            let by_media = self
                .redis
                .key(Tag::Corp(&key.corp), &["media", &value.media_id]);
            // The rest of the trust period, so re-recording a holder does not extend it.
            let age = SystemTime::now()
                .duration_since(value.created_at)
                .unwrap_or_default();
            let ttl = Duration::from_millis(self.ttl_ms.load(Ordering::Relaxed));
            let ttl = ttl.saturating_sub(age).as_millis().max(1) as u64;
            let v = encode(&value);
            self.redis
                .run("dedupe", "put", |mut c| async move {
                    redis::pipe()
                        .atomic()
                        .cmd("SET")
                        .arg(&k)
                        .arg(&v)
                        .arg("PX")
                        .arg(ttl)
                        .ignore()
                        .cmd("SET")
                        .arg(&by_media)
                        .arg(&k)
                        .arg("PX")
                        .arg(ttl)
                        .ignore()
                        .query_async::<()>(&mut c)
                        .await
                })
                .await
        })
    }

    fn add_holder<'a>(
        &'a self,
        key: &'a DedupeKey,
        media_id: &'a str,
        caller: &'a str,
    ) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let k = self.entry_key(key);
            let _: i64 = self
                .redis
                .run("dedupe", "add_holder", |mut c| async move {
                    ADD_HOLDER
                        .key(&k)
                        .arg(media_id)
                        .arg(caller)
                        .arg(super::MAX_HOLDERS)
                        .invoke_async(&mut c)
                        .await
                })
                .await?;
            Ok(())
        })
    }

    fn set_ttl(&self, ttl: Duration) {
        self.ttl_ms.store(
            u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    fn forget_media<'a>(&'a self, corp: &'a str, media_id: &'a str) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let by_media = self.redis.key(Tag::Corp(corp), &["media", media_id]);
            let id = media_id.to_string();
            let _: i64 = self
                .redis
                .run("dedupe", "forget", |mut c| async move {
                    FORGET.key(&by_media).arg(&id).invoke_async(&mut c).await
                })
                .await?;
            Ok(())
        })
    }

    fn lock<'a>(
        &'a self,
        key: &'a DedupeKey,
        scope: Option<&'a str>,
    ) -> StoreFuture<'a, LockOutcome> {
        Box::pin(async move {
            let k = self.key("dedupe-lock", key, scope);
            Ok(
                match self.redis.try_lease("dedupe", k, self.lock_ttl).await? {
                    Some(lease) => LockOutcome::Held(Some(lease)),
                    None => LockOutcome::Busy,
                },
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> MediaRef {
        MediaRef {
            media_id: "m\"1".into(),
            size: 10_240,
            content_type: "image/jpeg".into(),
            created_at: UNIX_EPOCH + Duration::from_millis(1_764_000_000_123),
            caller: "svc-\"holders\":[".into(),
            holders: vec!["b".into(), "svc".into()],
        }
    }

    #[test]
    fn an_entry_is_written_as_earlier_releases_wrote_it_and_reads_back() {
        let m = entry();
        // What releases before the typed encoding wrote (a JSON map: its keys sorted).
        let earlier = serde_json::json!({
            "media_id": m.media_id,
            "size": m.size,
            "content_type": m.content_type,
            "created_at_ms": 1_764_000_000_123u64,
            "caller": m.caller,
            "holders": m.holders,
        })
        .to_string();
        assert_eq!(encode(&m), earlier);
        assert_eq!(decode(&earlier), Some(m));
        assert_eq!(decode("{\"media_id\":1}"), None);
    }
}
