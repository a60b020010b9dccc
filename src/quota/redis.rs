//! `RedisQuotas`: caller quotas in Redis, global across replicas. Every decision is one Lua
//! script (atomic in Redis) using Redis's own clock (`TIME`), so replicas with skewed clocks
//! still share one limit. Keys (under `store.key_prefix`):
//!
//! * `quota-rate` — GCRA theoretical arrival time (µs).
//! * `quota-uploads` — sorted set of leased upload slots (member: lease id, score: expiry in
//!   ms). A replica renews its leases while uploads run; a dead replica's slots expire after
//!   `SLOT_LEASE`.
//! * `quota-bytes:{cst_day}` — bytes reserved today (expires after two days).
//!
//! Each tagged by the caller (`{prefix}:v2:{client:NAME}:…`).

use std::sync::{Arc, LazyLock};

use futures_util::future::BoxFuture;
use std::time::Duration;

use redis::Script;

use super::{Held, QuotaStore, Reserved, StoreFuture, UploadSlot};
use crate::clock::cst_day;
use crate::store::{Lease, Redis, StoreError, Tag};

/// How long an upload slot outlives a replica that stopped renewing it.
pub const SLOT_LEASE: Duration = Duration::from_secs(30);

static RATE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local period = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local new_tat = tat + interval
local allow_at = new_tat - period
if allow_at > now then return math.ceil((allow_at - now) / 1000) end
redis.call('SET', KEYS[1], string.format('%d', new_tat), 'PX', math.ceil((new_tat - now) / 1000) + 1000)
return 0
"#,
    )
});

static SLOT_ACQUIRE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[3])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]) * 2)
return 1
"#,
    )
});

static SLOT_RENEW: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if not redis.call('ZSCORE', KEYS[1], ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[1]), ARGV[2])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[1]) * 2)
return 1
"#,
    )
});

static SLOT_COUNT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return redis.call('ZCOUNT', KEYS[1], now, '+inf')
"#,
    )
});

/// Adds ARGV[1] to KEYS[1] unless that passes ARGV[2]; answers the new total, or -1.
static ADD_UNDER_LIMIT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
local n = tonumber(ARGV[1])
if used + n > tonumber(ARGV[2]) then return -1 end
redis.call('INCRBY', KEYS[1], n)
redis.call('EXPIRE', KEYS[1], 172800)
return used + n
"#,
    )
});

static SUB_FLOOR_ZERO: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
local n = math.min(used, tonumber(ARGV[1]))
if n > 0 then redis.call('DECRBY', KEYS[1], n) end
return used - n
"#,
    )
});

/// Quota state shared by replicas; cheap to clone.
#[derive(Debug, Clone)]
pub struct RedisQuotas {
    redis: Arc<Redis>,
}

fn unique() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

impl RedisQuotas {
    /// Quotas in `redis`.
    pub fn new(redis: Arc<Redis>) -> Self {
        Self { redis }
    }

    /// GCRA: `per_minute` requests may come at once, then one per 60 s / `per_minute`.
    /// `Ok(Err(wait))` when over.
    async fn take_rate(
        &self,
        client: &str,
        per_minute: u32,
    ) -> Result<Result<(), Duration>, StoreError> {
        let key = self.redis.key(Tag::Client(client), &["quota-rate"]);
        let interval_us = 60_000_000 / u64::from(per_minute.max(1));
        let wait_ms: i64 = self
            .redis
            .run("quota", "rate", |mut c| async move {
                RATE.key(&key)
                    .arg(interval_us)
                    .arg(60_000_000u64)
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        Ok(if wait_ms > 0 {
            Err(Duration::from_millis(wait_ms as u64))
        } else {
            Ok(())
        })
    }

    /// Leases one of `max` concurrent-upload slots; `Ok(None)` when all are taken.
    async fn take_slot(&self, client: &str, max: u32) -> Result<Option<UploadSlot>, StoreError> {
        let key = self.redis.key(Tag::Client(client), &["quota-uploads"]);
        let member = unique();
        let (k, m) = (key.clone(), member.clone());
        let got: i64 = self
            .redis
            .run("quota", "uploads", |mut c| async move {
                SLOT_ACQUIRE
                    .key(&k)
                    .arg(max)
                    .arg(SLOT_LEASE.as_millis() as u64)
                    .arg(&m)
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        if got != 1 {
            return Ok(None);
        }
        let renew = {
            let (redis, key, member) = (self.redis.clone(), key.clone(), member.clone());
            move || {
                let (redis, k, m) = (redis.clone(), key.clone(), member.clone());
                async move {
                    // A failed renewal is retried next time; the lease outlives two misses.
                    let _ = redis
                        .run("quota", "uploads", |mut c| async move {
                            SLOT_RENEW
                                .key(&k)
                                .arg(SLOT_LEASE.as_millis() as u64)
                                .arg(&m)
                                .invoke_async::<i64>(&mut c)
                                .await
                        })
                        .await;
                    true
                }
            }
        };
        let redis = self.redis.clone();
        // If Redis is gone the release fails and the lease simply expires.
        let release = async move {
            let _ = redis
                .run("quota", "uploads", |mut c| async move {
                    redis::cmd("ZREM")
                        .arg(&key)
                        .arg(&member)
                        .query_async::<i64>(&mut c)
                        .await
                })
                .await;
        };
        Ok(Some(UploadSlot::from(Held::Leased(Lease::hold(
            SLOT_LEASE, renew, release,
        )))))
    }

    /// Uploads in flight across replicas.
    async fn count_slots(&self, client: &str) -> Result<u64, StoreError> {
        let key = self.redis.key(Tag::Client(client), &["quota-uploads"]);
        self.redis
            .run("quota", "uploads", |mut c| async move {
                SLOT_COUNT.key(&key).invoke_async(&mut c).await
            })
            .await
    }

    fn bytes_key(&self, client: &str, day: u64) -> String {
        self.redis
            .key(Tag::Client(client), &["quota-bytes", &day.to_string()])
    }

    /// Reserves `n` of `limit` bytes on the CST day of `unix_secs`; answers the day, or how
    /// long until the next one.
    async fn take_bytes(
        &self,
        client: &str,
        n: u64,
        limit: u64,
        unix_secs: u64,
    ) -> Result<Result<u64, Duration>, StoreError> {
        let (day, to_midnight) = cst_day(unix_secs);
        let key = self.bytes_key(client, day);
        let total: i64 = self
            .redis
            .run("quota", "bytes", |mut c| async move {
                ADD_UNDER_LIMIT
                    .key(&key)
                    .arg(n)
                    .arg(limit)
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        Ok(if total < 0 {
            Err(Duration::from_secs(to_midnight))
        } else {
            Ok(day)
        })
    }

    /// Gives back `n` bytes reserved on `day`.
    async fn give_bytes(&self, client: &str, n: u64, day: u64) -> Result<(), StoreError> {
        let key = self.bytes_key(client, day);
        let _: i64 = self
            .redis
            .run("quota", "bytes", |mut c| async move {
                SUB_FLOOR_ZERO.key(&key).arg(n).invoke_async(&mut c).await
            })
            .await?;
        Ok(())
    }

    /// Bytes used on the CST day of `unix_secs`.
    async fn used_bytes(&self, client: &str, unix_secs: u64) -> Result<u64, StoreError> {
        let key = self.bytes_key(client, cst_day(unix_secs).0);
        let v: Option<u64> = self
            .redis
            .run("quota", "bytes", |mut c| async move {
                redis::cmd("GET").arg(&key).query_async(&mut c).await
            })
            .await?;
        Ok(v.unwrap_or(0))
    }
}

impl QuotaStore for RedisQuotas {
    fn rate<'a>(&'a self, client: &'a str, rpm: u32) -> StoreFuture<'a, Result<(), Duration>> {
        Box::pin(self.take_rate(client, rpm))
    }
    fn acquire_slot<'a>(
        &'a self,
        client: &'a str,
        max: u32,
    ) -> StoreFuture<'a, Option<UploadSlot>> {
        Box::pin(self.take_slot(client, max))
    }
    fn slots_in_use<'a>(&'a self, client: &'a str) -> StoreFuture<'a, u64> {
        Box::pin(self.count_slots(client))
    }
    fn reserve_bytes<'a>(
        &'a self,
        client: &'a str,
        n: u64,
        limit: u64,
        unix_secs: u64,
    ) -> StoreFuture<'a, Result<Reserved, Duration>> {
        Box::pin(async move {
            let answer = self.take_bytes(client, n, limit, unix_secs).await?;
            let by: Arc<dyn QuotaStore> = Arc::new(self.clone());
            Ok(answer.map(|day| Reserved { day, by }))
        })
    }
    fn refund_bytes(&self, client: &str, n: u64, day: u64) -> BoxFuture<'static, ()> {
        let (this, client) = (self.clone(), client.to_string());
        Box::pin(async move {
            let _ = this.give_bytes(&client, n, day).await;
        })
    }
    fn bytes_today<'a>(&'a self, client: &'a str, unix_secs: u64) -> StoreFuture<'a, u64> {
        Box::pin(self.used_bytes(client, unix_secs))
    }
}
