//! `RedisTokens`: the corp token in Redis, shared by replicas (`[store] backend = "redis"`).
//!
//! Keys, all tagged by corp (`{prefix}:v2:{corp:NAME}:…`), one set per flow (`legacy`,
//! `oauth`):
//!
//! * `token:{flow}` — hash `token, corp_id, issued_ms, expires_ms`, with a TTL of
//!   the token's remaining life. Written by a Lua script only when its `issued_ms` is newer
//!   than the stored one, so a fetch that finishes late never replaces a newer token.
//! * `token-lease:{flow}` — the refresh lease (`store::Lease`), renewed while the fetch runs,
//!   released by compare-and-delete. A replica that dies holding it blocks the others for at
//!   most `LEASE`.
//! * `token-calls:{flow}` — sorted set of token-call times, so all replicas together stay
//!   under Fxiaoke's 10 calls a minute (only the lease holder reads or writes it).

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use redis::Script;

use super::store::{StoreFuture, StoredToken, TokenStore, Turn};
use crate::clock::Clock;
use crate::store::{Redis, StoreError, Tag};

const WRITE_IF_NEWER: &str = r#"
local cur = redis.call('HGET', KEYS[1], 'issued_ms')
if cur and tonumber(cur) >= tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], 'issued_ms', ARGV[1], 'token', ARGV[2], 'corp_id', ARGV[3],
  'expires_ms', ARGV[4])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return 1
"#;

/// Prunes calls older than a minute; records one more if fewer than ARGV[2] remain, else
/// answers how many ms until the oldest leaves the minute (as a negative number).
const TAKE_CALL_SLOT: &str = r#"
local now = tonumber(ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - 60000)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then
  local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  return -(tonumber(oldest[2]) + 60000 - now)
end
redis.call('ZADD', KEYS[1], now, ARGV[3])
redis.call('PEXPIRE', KEYS[1], 120000)
return 1
"#;

/// The shared token of one corp.
#[derive(Debug, Clone)]
pub struct RedisTokens {
    redis: Arc<Redis>,
    clock: Arc<dyn Clock>,
    lease_ttl: Duration,
    token_key: String,
    lease_key: String,
    calls_key: String,
}

static WRITE_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(WRITE_IF_NEWER));
static CALL_SLOT_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(TAKE_CALL_SLOT));

impl RedisTokens {
    /// The shared token of `corp` of style `flow` (`legacy`, `oauth`).
    pub fn new(
        redis: Arc<Redis>,
        corp: &str,
        flow: &str,
        clock: Arc<dyn Clock>,
        lease_ttl: Duration,
    ) -> Self {
        let key = |kind: &str| redis.key(Tag::Corp(corp), &[kind, flow]);
        Self {
            clock,
            lease_ttl,
            token_key: key("token"),
            lease_key: key("token-lease"),
            calls_key: key("token-calls"),
            redis,
        }
    }

    /// The stored token, if any.
    async fn get(&self) -> Result<Option<StoredToken>, StoreError> {
        let key = self.token_key.clone();
        let fields: Vec<Option<String>> = self
            .redis
            .run("token", "get", |mut c| async move {
                redis::cmd("HMGET")
                    .arg(&key)
                    .arg(&["token", "corp_id", "issued_ms", "expires_ms"])
                    .query_async(&mut c)
                    .await
            })
            .await?;
        let num = |i: usize| fields.get(i).cloned().flatten()?.parse::<u64>().ok();
        Ok(
            match (
                fields.first().cloned().flatten(),
                fields.get(1).cloned().flatten(),
            ) {
                (Some(token), Some(corp_id)) if !token.is_empty() => match (num(2), num(3)) {
                    (Some(issued_ms), Some(expires_ms)) => Some(StoredToken {
                        token,
                        corp_id,
                        issued_ms,
                        expires_ms,
                    }),
                    _ => None,
                },
                _ => None,
            },
        )
    }

    /// Stores `t` unless a token issued at the same time or later is already there.
    /// `Ok(false)`: a newer one was kept.
    async fn put(&self, t: &StoredToken) -> Result<bool, StoreError> {
        let ttl = t.expires_ms.saturating_sub(self.clock.unix_ms()).max(1);
        let key = self.token_key.clone();
        let t = t.clone();
        let written: i64 = self
            .redis
            .run("token", "put", |mut c| async move {
                WRITE_SCRIPT
                    .key(&key)
                    .arg(t.issued_ms)
                    .arg(&t.token)
                    .arg(&t.corp_id)
                    .arg(t.expires_ms)
                    .arg(ttl)
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        Ok(written == 1)
    }

    /// Takes the refresh lease if nobody holds it; dropping it releases it.
    async fn lease(&self) -> Result<Option<Turn>, StoreError> {
        let lease = self
            .redis
            .try_lease("token", self.lease_key.clone(), self.lease_ttl)
            .await?;
        Ok(lease.map(|l| Turn(Some(l))))
    }

    /// Whether anybody holds the lease.
    async fn lease_held(&self) -> Result<bool, StoreError> {
        let key = self.lease_key.clone();
        let n: i64 = self
            .redis
            .run("token", "lease", |mut c| async move {
                redis::cmd("EXISTS").arg(&key).query_async(&mut c).await
            })
            .await?;
        Ok(n == 1)
    }

    /// Records a token call if all replicas together made fewer than `max` in the last
    /// minute; otherwise how long until one is allowed.
    async fn call_slot(&self, max: usize) -> Result<Option<Duration>, StoreError> {
        let key = self.calls_key.clone();
        let now = self.clock.unix_ms();
        let member = format!("{now}-{}", uuid::Uuid::new_v4().simple());
        let r: i64 = self
            .redis
            .run("token", "calls", |mut c| async move {
                CALL_SLOT_SCRIPT
                    .key(&key)
                    .arg(now)
                    .arg(max)
                    .arg(member)
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        Ok((r < 0).then(|| Duration::from_millis(r.unsigned_abs().max(1))))
    }
}

impl TokenStore for RedisTokens {
    fn read(&self) -> StoreFuture<'_, Option<StoredToken>> {
        Box::pin(self.get())
    }
    fn write_if_newer<'a>(&'a self, t: &'a StoredToken) -> StoreFuture<'a, bool> {
        Box::pin(self.put(t))
    }
    fn try_turn(&self) -> StoreFuture<'_, Option<Turn>> {
        Box::pin(self.lease())
    }
    fn turn_taken(&self) -> StoreFuture<'_, bool> {
        Box::pin(self.lease_held())
    }
    fn take_call_slot(&self, max: usize) -> StoreFuture<'_, Option<Duration>> {
        Box::pin(self.call_slot(max))
    }
}
