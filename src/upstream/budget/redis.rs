//! `RedisBudget`: the corp's allowance at Fxiaoke counted in Redis, one budget for every
//! replica. Keys (under `store.key_prefix`, tagged by corp: one transaction's keys share a
//! Cluster slot):
//!
//! * `budget:{interface}` — sorted set of call times in the last 20 s, on Redis's clock
//!   (`Redis::clock_ms`, so replicas whose own clocks disagree still share one window).
//! * `budget-daily:{cst_day}` — calls today (expires after two days).
//!
//! A call is taken optimistically, in one `MULTI` without a script: the guard is read, the
//! call is logged and counted, and the transaction answers the window's size and today's
//! count with it. A call the answer shows over a limit (or a guard that held) is then taken
//! back. So a refusal or a guard that held costs a second round trip, while a granted call
//! costs one, at about 40 % of a Lua script's Redis CPU (each `redis.call` from Lua costs more
//! than the command it runs; docs/benchmarks.md). Never more than the limit is granted: each
//! granted call saw itself within it. A call that is taken back may, for the moment it was
//! counted, refuse another; a take-back that fails leaves a call counted that was not made.
//! Both err on Fxiaoke's side.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use redis::Value;

use super::{BudgetAnswer, BudgetStore, Call, Guarded};
use crate::clock::cst_day;
use crate::store::{Redis, StoreError, StoreFuture, Tag};

/// The window, in ms, and how long its log outlives its last call.
const WINDOW_MS: i64 = 20_000;
const LOG_TTL_MS: i64 = 21_000;
/// How long a day's count is kept: past the day, for `/admin` and the gauge.
const DAY_TTL_SECS: u64 = 172_800;

/// The budget shared by replicas; cheap to clone.
#[derive(Debug, Clone)]
pub struct RedisBudget {
    redis: Arc<Redis>,
    /// Names this process's calls in the log: a short prefix of its owner id and a sequence
    /// number (unique without drawing randomness per call).
    me: Arc<str>,
    seq: Arc<AtomicU64>,
}

/// What the transaction answered.
struct Taken {
    held: Option<String>,
    in_window: i64,
    today: Option<i64>,
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

    /// Takes `call`, unless `guard` holds a value; gives it back when the answer is no.
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
        let member = format!("{}:{}", self.me, self.seq.fetch_add(1, Ordering::Relaxed));
        let now = self.redis.clock_ms();
        let taken = self.log(&window, &day, &member, now, daily, guard).await?;
        let over_day = matches!((taken.today, daily), (Some(n), Some(d)) if n > d as i64);
        if taken.held.is_none() && !over_day && taken.in_window <= i64::from(per_20s) {
            let left = match (taken.today, daily) {
                (Some(n), Some(d)) => Some(d.saturating_sub(n as u64)),
                _ => None,
            };
            return Ok(Guarded::Answer(BudgetAnswer::Taken(left)));
        }
        let oldest = self.give_back(&window, &day, &member, daily).await?;
        Ok(match taken.held {
            Some(value) => Guarded::Held(value),
            None if over_day => Guarded::Answer(BudgetAnswer::DaySpent),
            None => {
                let wait = oldest.map_or(1, |at| (at + WINDOW_MS - now).max(1));
                Guarded::Answer(BudgetAnswer::Window(Duration::from_millis(wait as u64)))
            }
        })
    }

    /// One transaction: the guard's value, then the call logged in the window and counted
    /// today, with the sizes of both after it.
    async fn log(
        &self,
        window: &str,
        day: &str,
        member: &str,
        now: i64,
        daily: Option<u64>,
        guard: Option<&str>,
    ) -> Result<Taken, StoreError> {
        let mut tx = redis::pipe();
        tx.atomic();
        if let Some(g) = guard {
            tx.cmd("GET").arg(g);
        }
        tx.cmd("ZREMRANGEBYSCORE")
            .arg(window)
            .arg("-inf")
            .arg(now - WINDOW_MS)
            .ignore()
            .cmd("ZADD")
            .arg(window)
            .arg(now)
            .arg(member)
            .ignore()
            .cmd("ZCARD")
            .arg(window)
            .cmd("PEXPIRE")
            .arg(window)
            .arg(LOG_TTL_MS)
            .ignore();
        if daily.is_some() {
            tx.cmd("INCR")
                .arg(day)
                .cmd("EXPIRE")
                .arg(day)
                .arg(DAY_TTL_SECS)
                .ignore();
        }
        let answers: Vec<Value> = self
            .redis
            .run("budget", "window", |mut c| async move {
                tx.query_async(&mut c).await
            })
            .await?;
        let mut it = answers.into_iter();
        let mut next = || it.next().ok_or_else(|| malformed("too few answers"));
        let held = match guard {
            Some(_) => redis::from_redis_value(next()?).map_err(malformed)?,
            None => None,
        };
        let in_window = redis::from_redis_value(next()?).map_err(malformed)?;
        let today = match daily {
            Some(_) => Some(redis::from_redis_value(next()?).map_err(malformed)?),
            None => None,
        };
        Ok(Taken {
            held,
            in_window,
            today,
        })
    }

    /// Takes the call back (the window and today), answering the window's oldest call time.
    async fn give_back(
        &self,
        window: &str,
        day: &str,
        member: &str,
        daily: Option<u64>,
    ) -> Result<Option<i64>, StoreError> {
        let mut tx = redis::pipe();
        tx.atomic();
        tx.cmd("ZREM").arg(window).arg(member).ignore();
        if daily.is_some() {
            tx.cmd("DECR").arg(day).ignore();
        }
        tx.cmd("ZRANGE").arg(window).arg(0).arg(0).arg("WITHSCORES");
        let (oldest,): (Vec<(String, f64)>,) = self
            .redis
            .run("budget", "give_back", |mut c| async move {
                tx.query_async(&mut c).await
            })
            .await?;
        Ok(oldest.first().map(|(_, at)| *at as i64))
    }
}

fn malformed(e: impl std::fmt::Display) -> StoreError {
    StoreError::Redis(format!("budget transaction: unexpected answer: {e}"))
}

impl BudgetStore for RedisBudget {
    fn take<'a>(&'a self, call: Call<'a>, guard: Option<&'a str>) -> StoreFuture<'a, Guarded> {
        Box::pin(self.take_call(call, guard))
    }
}
