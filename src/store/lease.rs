//! Leases: something this process holds in Redis for a while (a key lease, an upload slot),
//! renewed while held and released when dropped, lapsing by itself if the process dies.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use super::redis::Redis;
use super::StoreError;

static RENEW_IF_OWNER: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"#,
    )
});

static RELEASE_IF_OWNER: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"#,
    )
});

/// Something this process holds in Redis for `ttl` at a time: a task renews it every third of
/// its life while held, and dropping it stops the renewal and releases it in the background.
/// If the process dies, or the release cannot reach Redis, it lapses after `ttl` and another
/// replica takes over. Key leases (`Redis::try_lease`) and upload slots are both held this way.
pub struct Lease {
    renewer: tokio::task::JoinHandle<()>,
    // Behind a mutex only so that a `Lease` is `Sync` (requests hold leases across awaits by
    // reference); it is taken once, on drop.
    release: Mutex<Option<futures_util::future::BoxFuture<'static, ()>>>,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease").finish_non_exhaustive()
    }
}

impl Lease {
    /// Starts holding: `renew` runs every `ttl / 3` until it answers `false` (the lease is
    /// lost); `release` runs once, when the lease is dropped.
    pub fn hold<R, F>(
        ttl: Duration,
        mut renew: R,
        release: impl Future<Output = ()> + Send + 'static,
    ) -> Self
    where
        R: FnMut() -> F + Send + 'static,
        F: Future<Output = bool> + Send,
    {
        let renewer = tokio::spawn(async move {
            loop {
                tokio::time::sleep(ttl / 3).await;
                if !renew().await {
                    return;
                }
            }
        });
        Self {
            renewer,
            release: Mutex::new(Some(Box::pin(release))),
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.renewer.abort();
        if let (Some(release), Ok(rt)) = (
            self.release.get_mut().take(),
            tokio::runtime::Handle::try_current(),
        ) {
            rt.spawn(release);
        }
    }
}

impl Redis {
    /// Takes the lease on `key` if nobody holds it; `Ok(None)` when somebody does.
    pub async fn try_lease(
        self: &Arc<Self>,
        store: &'static str,
        key: String,
        ttl: Duration,
    ) -> Result<Option<Lease>, StoreError> {
        let (k, owner) = (key.clone(), self.owner.clone());
        let set: Option<String> = self
            .run(store, "lease", |mut c| async move {
                redis::cmd("SET")
                    .arg(&k)
                    .arg(&owner)
                    .arg("NX")
                    .arg("PX")
                    .arg(ttl.as_millis() as u64)
                    .query_async(&mut c)
                    .await
            })
            .await?;
        if set.is_none() {
            return Ok(None);
        }
        let renew = {
            let (redis, key) = (self.clone(), key.clone());
            move || {
                let (redis, k) = (redis.clone(), key.clone());
                async move {
                    let owner = redis.owner.clone();
                    let renewed: Result<i64, _> = redis
                        .run(store, "lease", |mut c| async move {
                            RENEW_IF_OWNER
                                .key(&k)
                                .arg(&owner)
                                .arg(ttl.as_millis() as u64)
                                .invoke_async(&mut c)
                                .await
                        })
                        .await;
                    // Lost (lapsed, or Redis is gone): whoever holds the key now owns it.
                    matches!(renewed, Ok(1))
                }
            }
        };
        let redis = self.clone();
        let release = async move {
            let owner = redis.owner.clone();
            let _: Result<i64, _> = redis
                .run(store, "lease", |mut c| async move {
                    RELEASE_IF_OWNER
                        .key(&key)
                        .arg(&owner)
                        .invoke_async(&mut c)
                        .await
                })
                .await;
        };
        Ok(Some(Lease::hold(ttl, renew, release)))
    }
}
