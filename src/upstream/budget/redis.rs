//! `RedisBudget`: the corp's allowance at Fxiaoke counted in Redis, one budget for every
//! replica. One Lua script decides each call (atomic in Redis) on Redis's own clock (`TIME`).
//! Keys (under `store.key_prefix`, tagged by corp: the script's two keys share a Cluster slot):
//!
//! * `budget:{interface}` — sorted set of call times in the last 20 s.
//! * `budget-daily:{cst_day}` — calls today (expires after two days).

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use redis::Script;

use super::{BudgetAnswer, BudgetStore, Call, Guarded};
use crate::clock::cst_day;
use crate::store::{Redis, StoreError, StoreFuture, Tag};

/// With a guard (KEYS[3]) that holds a value: nothing is taken, and the value is the answer
/// (the file is recorded already: no call is needed). Then the daily budget (KEYS[2], limit
/// ARGV[3], 0 = none), then the 20 s window (KEYS[1], limit ARGV[1]). Answers {ms to wait or
/// 0, 1 if the day is spent (2: the guard held), calls left today or -1, the guard's value}.
static BUDGET: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if #KEYS == 3 then
  local held = redis.call('GET', KEYS[3])
  if held then return {0, 2, 0, held} end
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local daily = tonumber(ARGV[3])
local used = 0
if daily > 0 then
  used = tonumber(redis.call('GET', KEYS[2]) or '0')
  if used >= daily then return {1, 1, 0, false} end
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - 20000)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then
  local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  return {math.max(1, tonumber(oldest[2]) + 20000 - now), 0, daily > 0 and daily - used or -1, false}
end
redis.call('ZADD', KEYS[1], now, ARGV[2])
redis.call('PEXPIRE', KEYS[1], 21000)
if daily > 0 then
  redis.call('INCR', KEYS[2])
  redis.call('EXPIRE', KEYS[2], 172800)
  return {0, 0, daily - used - 1, false}
end
return {0, 0, -1, false}
"#,
    )
});

/// The budget shared by replicas; cheap to clone.
#[derive(Debug, Clone)]
pub struct RedisBudget {
    redis: Arc<Redis>,
}

impl RedisBudget {
    /// Counted in `redis`.
    pub fn new(redis: Arc<Redis>) -> Self {
        Self { redis }
    }

    /// Takes `call`, unless `guard` holds a value: one round trip either way.
    async fn take_call(&self, call: Call<'_>, guard: Option<&str>) -> Result<Guarded, StoreError> {
        let Call {
            corp,
            interface,
            per_20s,
            daily,
            unix_secs,
        } = call;
        let day = cst_day(unix_secs).0.to_string();
        let window = self.redis.key(Tag::Corp(corp), &["budget", interface]);
        let day = self.redis.key(Tag::Corp(corp), &["budget-daily", &day]);
        let member = uuid::Uuid::new_v4().simple().to_string();
        let (wait, spent, left, held): (i64, i64, i64, Option<String>) = self
            .redis
            .run("budget", "window", |mut c| async move {
                let mut script = BUDGET.key(&window);
                script.key(&day);
                if let Some(g) = guard {
                    script.key(g);
                }
                script
                    .arg(per_20s)
                    .arg(&member)
                    .arg(daily.unwrap_or(0))
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        Ok(match (held, spent) {
            (Some(value), _) => Guarded::Held(value),
            (None, 1) => Guarded::Answer(BudgetAnswer::DaySpent),
            (None, _) if wait > 0 => {
                Guarded::Answer(BudgetAnswer::Window(Duration::from_millis(wait as u64)))
            }
            (None, _) => Guarded::Answer(BudgetAnswer::Taken((left >= 0).then_some(left as u64))),
        })
    }
}

impl BudgetStore for RedisBudget {
    fn take<'a>(&'a self, call: Call<'a>, guard: Option<&'a str>) -> StoreFuture<'a, Guarded> {
        Box::pin(self.take_call(call, guard))
    }
}
