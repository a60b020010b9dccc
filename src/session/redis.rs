//! `RedisSessions`: issued tokens in Redis, so every replica accepts them.
//! `{prefix}:v2:session:{sha256 of the token}` — JSON `Session`, expiring with the token. One
//! key per command, untagged: a lookup by token cannot know its caller.

use std::sync::Arc;
use std::time::Duration;

use super::{Session, SessionStore};
use crate::store::{Redis, StoreError, StoreFuture, Tag};

/// Tokens shared through Redis.
#[derive(Debug)]
pub struct RedisSessions {
    redis: Arc<Redis>,
}

impl RedisSessions {
    /// Over `redis`.
    pub fn new(redis: Arc<Redis>) -> Self {
        Self { redis }
    }
}

impl SessionStore for RedisSessions {
    fn put<'a>(&'a self, key: &'a str, session: &'a Session, ttl: Duration) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let key = self.redis.key(Tag::Own, &["session", key]);
            let value = serde_json::to_string(session)
                .map_err(|e| StoreError::Redis(format!("encoding a session: {e}")))?;
            let ms = (ttl.as_millis() as u64).max(1);
            self.redis
                .run("session", "put", |mut c| async move {
                    redis::cmd("SET")
                        .arg(&key)
                        .arg(&value)
                        .arg("PX")
                        .arg(ms)
                        .query_async::<()>(&mut c)
                        .await
                })
                .await
        })
    }

    fn get<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Option<Session>> {
        Box::pin(async move {
            let key = self.redis.key(Tag::Own, &["session", key]);
            let raw: Option<String> = self
                .redis
                .run("session", "get", |mut c| async move {
                    redis::cmd("GET").arg(&key).query_async(&mut c).await
                })
                .await?;
            // An entry that does not parse (another release's format) is no session.
            Ok(raw.and_then(|r| serde_json::from_str(&r).ok()))
        })
    }
}
