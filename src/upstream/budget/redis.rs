//! `RedisBudget`: the corp's allowance at Fxiaoke counted in Redis, one budget for every
//! replica. One Lua script decides each call (atomic in Redis). Keys (under
//! `store.key_prefix`, tagged by corp: the script's keys share a Cluster slot):
//!
//! * `budget:{interface}` — sorted set of call times in the last 20 s, on Redis' clock as each
//!   replica reckons it (`Redis::clock_ms`: replicas whose own clocks disagree still share one
//!   window).
//! * `budget-daily:{cst_day}` — calls today (expires after two days).
//!
//! Each `redis.call` from Lua costs Redis more than the command it runs, so the script makes
//! as few as a decision needs (docs/benchmarks.md): the time comes with the call instead of
//! from `TIME`, the window is counted with `ZCOUNT` over its last 20 s, and calls that left it
//! are pruned on one call in `PRUNE_EVERY` (and whenever the window is full), not on each.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use redis::Script;

use super::{BudgetAnswer, BudgetStore, Call, Guarded};
use crate::clock::cst_day;
use crate::store::{Redis, StoreError, StoreFuture, Tag};

/// One call in this many from a process also removes the calls that left the window (the
/// log holds at most this many stale entries per replica beyond the window's own).
const PRUNE_EVERY: u64 = 16;

/// With a guard (KEYS[3]) that holds a value: nothing is taken, and the value is the answer
/// (the file is recorded already: no call is needed). Then the daily budget (KEYS[2], limit
/// ARGV[3], 0 = none), then the 20 s window (KEYS[1], limit ARGV[1]; calls after ARGV[5],
/// which is `(` and the window's start). ARGV[2] names the call, ARGV[4] is now (ms), ARGV[6]
/// is 1 to prune. Answers {ms to wait or 0, 1 if the day is spent (2: the guard held), calls
/// left today or -1, the guard's value}.
static BUDGET: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if #KEYS == 3 then
  local held = redis.call('GET', KEYS[3])
  if held then return {0, 2, 0, held} end
end
local now = tonumber(ARGV[4])
local daily = tonumber(ARGV[3])
local used = 0
if daily > 0 then
  used = tonumber(redis.call('GET', KEYS[2]) or '0')
  if used >= daily then return {1, 1, 0, false} end
end
if ARGV[6] == '1' then redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - 20000) end
if redis.call('ZCOUNT', KEYS[1], ARGV[5], '+inf') >= tonumber(ARGV[1]) then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - 20000)
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
    /// Names this process's calls in the log: a short prefix of its owner id and a sequence
    /// number (unique without drawing randomness per call).
    me: Arc<str>,
    seq: Arc<AtomicU64>,
}

impl RedisBudget {
    /// Counted in `redis`.
    pub fn new(redis: Arc<Redis>) -> Self {
        Self {
            me: redis.owner.chars().take(12).collect::<String>().into(),
            redis,
            seq: Arc::new(AtomicU64::new(0)),
        }
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
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let member = format!("{}:{seq}", self.me);
        let now = self.redis.clock_ms();
        let since = format!("({}", now - 20_000);
        let prune = u8::from(seq % PRUNE_EVERY == 0);
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
                    .arg(now)
                    .arg(&since)
                    .arg(prune)
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
