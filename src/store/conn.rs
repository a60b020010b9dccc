//! Where the store's connections come from (design §11, `redis_mode`): one address
//! (`standalone`, a managed Redis's primary endpoint included), the master the sentinels name
//! (`sentinel`, asked again after a failover), or a Cluster (`cluster`, which routes each
//! command to its slot's node and follows `MOVED` by itself). TLS, the ACL user and the
//! password apply to every connection, the sentinels' included.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster::{ClusterClient, ClusterConfig};
use redis::cluster_async::ClusterConnection;
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{AsyncConnectionConfig, Cmd, ConnectionAddr, Pipeline, RedisFuture, TlsMode, Value};

use super::StoreError;
use crate::config::{RedisMode, StoreConfig};

/// One connection, of whichever topology; cheap to clone (both kinds multiplex).
#[derive(Clone)]
pub enum Conn {
    /// To one Redis (standalone, or the sentinels' master).
    Single(MultiplexedConnection),
    /// To a Cluster.
    Cluster(ClusterConnection),
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Single(_) => "Conn::Single",
            Self::Cluster(_) => "Conn::Cluster",
        })
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
        }
    }
}

/// Where connections come from.
pub(super) enum Source {
    /// One address.
    Fixed(redis::Client),
    /// The master the sentinels name, asked when the supervisor (re)connects.
    Sentinel {
        sentinels: tokio::sync::Mutex<SentinelClient>,
        master: ArcSwapOption<redis::Client>,
    },
    /// A Cluster, from its seed nodes.
    Cluster(ClusterClient),
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Fixed(_) => "Source::Fixed",
            Self::Sentinel { .. } => "Source::Sentinel",
            Self::Cluster(_) => "Source::Cluster",
        })
    }
}

impl Source {
    /// From `[store]`: every connection with the ACL user, the password and, with TLS, the CA
    /// and client certificate. `check-config` builds it too, so a file that does not parse
    /// fails there. Errors never repeat a URL (it may hold a password).
    pub(super) fn of(cfg: &StoreConfig) -> Result<Self, StoreError> {
        let certs = certificates(cfg)?;
        match &cfg.mode {
            RedisMode::Standalone => fixed(cfg, certs).map(Self::Fixed),
            RedisMode::Sentinel(s) => {
                let addrs = s
                    .sentinels
                    .iter()
                    .map(|a| address(a, cfg.tls, "store.redis_sentinels"))
                    .collect::<Result<Vec<_>, _>>()?;
                let mut b =
                    SentinelClientBuilder::new(addrs, &s.master_name, SentinelServerType::Master)
                        .map_err(|e| bad("store.redis_sentinels", &e))?;
                if let Some(user) = &cfg.redis_username {
                    b = b.set_client_to_redis_username(user);
                }
                if let Some(password) = &cfg.redis_password {
                    b = b.set_client_to_redis_password(password.expose());
                }
                if let Some(user) = s.username.as_ref().or(cfg.redis_username.as_ref()) {
                    b = b.set_client_to_sentinel_username(user);
                }
                if let Some(password) = s.password.as_ref().or(cfg.redis_password.as_ref()) {
                    b = b.set_client_to_sentinel_password(password.expose());
                }
                if cfg.tls {
                    b = b
                        .set_client_to_redis_tls_mode(TlsMode::Secure)
                        .set_client_to_sentinel_tls_mode(TlsMode::Secure);
                    if let Some(certs) = certs {
                        b = b
                            .set_client_to_redis_certificates(certs.clone())
                            .set_client_to_sentinel_certificates(certs);
                    }
                }
                let client = b.build().map_err(|e| bad("store.redis_sentinels", &e))?;
                Ok(Self::Sentinel {
                    sentinels: tokio::sync::Mutex::new(client),
                    master: ArcSwapOption::empty(),
                })
            }
            RedisMode::Cluster(nodes) => {
                let infos = nodes
                    .iter()
                    .map(|a| address(a, cfg.tls, "store.redis_nodes"))
                    .collect::<Result<Vec<_>, _>>()?;
                let mut b = ClusterClient::builder(infos);
                if let Some(user) = &cfg.redis_username {
                    b = b.username(user);
                }
                if let Some(password) = &cfg.redis_password {
                    b = b.password(password.expose());
                }
                if cfg.tls {
                    b = b.tls(TlsMode::Secure);
                    if let Some(certs) = certs {
                        b = b.certs(certs);
                    }
                }
                b.build()
                    .map(Self::Cluster)
                    .map_err(|e| bad("store.redis_nodes", &e))
            }
        }
    }

    /// Sentinel: asks the sentinels which node is the master now (bounded by `timeout`), and
    /// connects there from now on. The others: nothing to ask.
    pub(super) async fn resolve(&self, timeout: Duration) -> Result<(), StoreError> {
        let Self::Sentinel { sentinels, master } = self else {
            return Ok(());
        };
        let ask = async { sentinels.lock().await.async_get_client().await };
        let client = tokio::time::timeout(timeout, ask)
            .await
            .map_err(|_| StoreError::Redis("no sentinel named a master in time".into()))?
            .map_err(|e| StoreError::Redis(format!("asking the sentinels: {e}")))?;
        master.store(Some(Arc::new(client)));
        Ok(())
    }

    /// Whether a `READONLY` answer means a failover to follow (ask the sentinels again)
    /// rather than a misconfigured address.
    pub(super) fn follows_failover(&self) -> bool {
        matches!(self, Self::Sentinel { .. })
    }

    /// A new connection whose driver runs on the calling runtime.
    pub(super) async fn open(&self, timeout: Duration) -> Result<Conn, StoreError> {
        let connect = timeout.max(Duration::from_millis(500));
        let failed = |e: redis::RedisError| StoreError::Redis(e.to_string());
        match self {
            Self::Fixed(client) => single(client, connect, timeout).await,
            Self::Sentinel { master, .. } => {
                let Some(client) = master.load_full() else {
                    return Err(StoreError::Redis("no master known yet".into()));
                };
                single(&client, connect, timeout).await
            }
            Self::Cluster(client) => {
                let config = ClusterConfig::new()
                    .set_connection_timeout(connect)
                    .set_response_timeout(timeout);
                client
                    .get_async_connection_with_config(config)
                    .await
                    .map(Conn::Cluster)
                    .map_err(failed)
            }
        }
    }
}

async fn single(
    client: &redis::Client,
    connect: Duration,
    timeout: Duration,
) -> Result<Conn, StoreError> {
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(connect))
        .set_response_timeout(Some(timeout));
    client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .map(Conn::Single)
        .map_err(|e| StoreError::Redis(e.to_string()))
}

fn bad(what: &str, e: &dyn std::fmt::Display) -> StoreError {
    StoreError::Redis(format!("{what}: {e}"))
}

/// `host:port` as an address, TLS or not.
fn address(hostport: &str, tls: bool, key: &str) -> Result<ConnectionAddr, StoreError> {
    let (host, port) = hostport
        .rsplit_once(':')
        .and_then(|(h, p)| Some((h.trim_matches(['[', ']']), p.parse::<u16>().ok()?)))
        .ok_or_else(|| bad(key, &format!("`{hostport}` is not host:port")))?;
    Ok(if tls {
        ConnectionAddr::TcpTls {
            host: host.to_string(),
            port,
            insecure: false,
            tls_params: None,
        }
    } else {
        ConnectionAddr::Tcp(host.to_string(), port)
    })
}

/// The one address of `standalone`, with the user and password of their own keys.
fn fixed(
    cfg: &StoreConfig,
    certs: Option<redis::TlsCertificates>,
) -> Result<redis::Client, StoreError> {
    use redis::IntoConnectionInfo as _;
    let mut info = cfg
        .redis_url
        .expose()
        .into_connection_info()
        .map_err(|e| bad("store.redis_url", &e))?;
    let mut settings = info.redis_settings().clone();
    if let Some(user) = &cfg.redis_username {
        settings = settings.set_username(user);
    }
    if let Some(password) = &cfg.redis_password {
        settings = settings.set_password(password.expose());
    }
    info = info.set_redis_settings(settings);
    match certs {
        None => redis::Client::open(info).map_err(|e| bad("store.redis_url", &e)),
        // The error says which file did not parse (root certificate, client chain or key).
        Some(certs) => redis::Client::build_with_tls(info, certs)
            .map_err(|e| bad("store.redis_ca_file / redis_cert_file / redis_key_file", &e)),
    }
}

/// The CA (the only one trusted when set) and the client certificate, read from their files;
/// `None` when neither is set (system roots, no client certificate).
fn certificates(cfg: &StoreConfig) -> Result<Option<redis::TlsCertificates>, StoreError> {
    let tls = &cfg.redis_tls;
    if tls.ca.is_none() && tls.client.is_none() {
        return Ok(None);
    }
    let read = |key: &str, path: &std::path::Path| {
        std::fs::read(path).map_err(|e| bad(key, &format!("{}: {e}", path.display())))
    };
    let root_cert = match &tls.ca {
        Some(p) => Some(read("store.redis_ca_file", p)?),
        None => None,
    };
    let client_tls = match &tls.client {
        Some((cert, key)) => Some(redis::ClientTlsConfig {
            client_cert: read("store.redis_cert_file", cert)?,
            client_key: read("store.redis_key_file", key)?,
        }),
        None => None,
    };
    Ok(Some(redis::TlsCertificates {
        client_tls,
        root_cert,
    }))
}
