//! Every listener fxgate runs — the caller-facing gateway, the admin listener and the sandbox —
//! is served by one loop, `serve`: accept (with a back-off on accept errors such as running
//! out of file descriptors), optional TLS (handshake in the connection's own task, under a
//! deadline), HTTP/1.1 + HTTP/2 (hyper-util `auto::Builder`) with a header-read timeout, an idle
//! deadline and a lingering close (`conn`), and a graceful drain. On shutdown the listener closes at once; connections finish their in-flight
//! requests (HTTP/1 closes after the current one, HTTP/2 sends GOAWAY) until the grace ends,
//! after which the rest are dropped.

mod conn;
pub mod tls;
pub mod workers;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::util::BoxCloneService;
use tower::{Service, ServiceExt as _};

use crate::config::ServerConfig;
use crate::middleware::{PeerAddr, Req, Resp};

pub use tls::Tls;

/// The caller-facing service as the server runs it (hyper needs only `Clone + Send`).
pub type AppService = BoxCloneService<Req, Resp, Infallible>;

/// Deadline for a TLS handshake; slow or silent clients are dropped after it.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause after a failed accept (EMFILE and friends), instead of spinning.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// A bound listener, plain or TLS.
pub struct Listener {
    tcp: TcpListener,
    tls: Option<Tls>,
}

impl std::fmt::Debug for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listener")
            .field("tcp", &self.tcp)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl Listener {
    /// A plain-HTTP listener (admin, sandbox).
    pub fn plain(tcp: TcpListener) -> Self {
        Self { tcp, tls: None }
    }

    /// The bound address (port 0 resolved).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.tcp.local_addr()
    }
}

/// How one listener serves.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// What the listener is, for its log lines.
    pub name: &'static str,
    /// Time a client has to send a request head.
    pub header_timeout: Duration,
    /// Time a connection may sit with nothing in flight and no bytes moving.
    pub idle_timeout: Duration,
    /// Drain deadline on shutdown.
    pub shutdown_grace: Duration,
    /// hyper's per-connection read buffer bound (`None`: hyper's default, ~400 KiB).
    pub max_buf: Option<usize>,
}

impl ServeOptions {
    /// The caller-facing listener.
    pub fn gateway(cfg: &ServerConfig) -> Self {
        Self {
            name: "gateway",
            header_timeout: cfg.request_header_timeout,
            idle_timeout: cfg.idle_timeout,
            shutdown_grace: cfg.shutdown_grace,
            // hyper's read buffer may grow to ~400 KiB per connection; each chunk of a file
            // pins one. Measured: an upload held up by a slow Fxiaoke costs 149 / 221 / 296
            // KiB at 32 / 48 / 64 KiB (tests/faults.rs), 5 MiB uploads at c=1 lose ~18 % / ~5 %
            // of throughput against 64 KiB (benches/e2e), 16 KiB halves it. With each
            // connection served on one thread (server::workers) 256 slow uploads peaked at
            // 45-49 MiB with 48 KiB and 44.6-44.9 MiB with 40 KiB, for 0.04-0.06 more CPU per
            // GiB against the floor: 40 KiB keeps the 48 MiB bound with room.
            max_buf: Some(40 * 1024),
        }
    }

    /// The admin listener: small requests, a short drain.
    pub fn admin(cfg: &ServerConfig) -> Self {
        Self {
            name: "admin",
            header_timeout: cfg.request_header_timeout,
            idle_timeout: cfg.idle_timeout,
            shutdown_grace: cfg.shutdown_grace.min(Duration::from_secs(5)),
            max_buf: Some(64 * 1024),
        }
    }

    /// The sandbox (a benchmark sink too: hyper's default buffer, as before).
    pub fn sandbox() -> Self {
        Self {
            name: "sandbox",
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            shutdown_grace: Duration::from_secs(1),
            max_buf: None,
        }
    }

    fn builder(&self) -> Builder<TokioExecutor> {
        let mut builder = Builder::new(TokioExecutor::new());
        let mut http1 = builder.http1();
        http1
            .timer(TokioTimer::new())
            .header_read_timeout(self.header_timeout)
            .keep_alive(true);
        if let Some(n) = self.max_buf {
            http1.max_buf_size(n);
        }
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_concurrent_streams(256);
        builder
    }
}

/// Serves `svc` on `listener` until `shutdown`, then drains for at most the grace.
pub async fn serve<S>(listener: Listener, svc: S, opts: ServeOptions, shutdown: CancellationToken)
where
    S: Service<Req, Response = Resp, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    let builder = Arc::new(opts.builder());
    let connections = TaskTracker::new();
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = accept(&listener.tcp, opts.name) => accepted,
        };
        let _ = stream.set_nodelay(true);
        let conn = Connection {
            builder: builder.clone(),
            shutdown: shutdown.clone(),
            idle_timeout: opts.idle_timeout,
            header_timeout: opts.header_timeout,
            peer,
        };
        match &listener.tls {
            None => connections.spawn(conn.serve(stream, svc.clone())),
            // The config in force now; a reload later does not touch this connection.
            Some(tls) => connections.spawn(conn.serve_tls(tls.acceptor(), stream, svc.clone())),
        };
    }
    drop(listener);
    connections.close();
    drain(&connections, &opts).await;
}

async fn accept(tcp: &TcpListener, name: &'static str) -> (TcpStream, SocketAddr) {
    loop {
        match tcp.accept().await {
            Ok(accepted) => return accepted,
            Err(e) => {
                tracing::warn!(listener = name, error = %e, "accept failed");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
}

async fn drain(connections: &TaskTracker, opts: &ServeOptions) {
    tracing::info!(
        listener = opts.name,
        grace_s = opts.shutdown_grace.as_secs(),
        "listener closed; draining connections"
    );
    tokio::select! {
        _ = connections.wait() => tracing::info!(listener = opts.name, "all connections drained"),
        _ = tokio::time::sleep(opts.shutdown_grace) => {
            tracing::warn!(listener = opts.name, "shutdown grace elapsed; dropping remaining connections")
        }
    }
}

/// One accepted connection.
struct Connection {
    builder: Arc<Builder<TokioExecutor>>,
    /// Cancelled when the listener drains: the connection then closes gracefully.
    shutdown: CancellationToken,
    idle_timeout: Duration,
    /// A connection that sends nothing at all within this, from accept, is closed.
    header_timeout: Duration,
    peer: SocketAddr,
}

impl Connection {
    async fn serve<I, S>(self, io: I, svc: S)
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
        S: Service<Req, Response = Resp, Error = Infallible> + Clone + Send + 'static,
        S::Future: Send + 'static,
    {
        let activity = Arc::new(conn::Activity::default());
        let io = conn::Tracked::new(io, activity.clone());
        let peer = self.peer;
        let svc = svc.map_request(move |mut req: Req| {
            req.extensions_mut().insert(PeerAddr(peer));
            req
        });
        let counted = {
            let activity = activity.clone();
            svc.map_future(move |fut| {
                let in_flight = activity.begin();
                async move {
                    let answered = fut.await;
                    drop(in_flight);
                    answered
                }
            })
        };
        let conn = self
            .builder
            .serve_connection_with_upgrades(TokioIo::new(io), TowerToHyperService::new(counted));
        tokio::pin!(conn);
        let silent = tokio::time::sleep(self.header_timeout);
        tokio::pin!(silent);
        let mut idle = conn::IdleWatch::new(activity.clone(), self.idle_timeout);
        let mut closing = false;
        loop {
            tokio::select! {
                biased;
                ended = conn.as_mut() => {
                    if let Err(e) = ended {
                        tracing::debug!(peer = %self.peer, error = %e, "connection ended with an error");
                    }
                    return;
                }
                _ = &mut silent, if !activity.heard() => {
                    if activity.heard() {
                        continue;
                    }
                    tracing::debug!(peer = %self.peer, "no request head within request_header_timeout of accept; closing");
                    return;
                }
                _ = self.shutdown.cancelled(), if !closing => {
                    closing = true;
                    conn.as_mut().graceful_shutdown();
                }
                _ = tokio::time::sleep(idle.period()) => {
                    if !idle.tick() {
                        continue;
                    }
                    if closing {
                        tracing::debug!(peer = %self.peer, "idle after a graceful close; dropping");
                        return;
                    }
                    tracing::debug!(peer = %self.peer, "idle; closing");
                    closing = true;
                    idle.restart();
                    conn.as_mut().graceful_shutdown();
                }
            }
        }
    }
    async fn serve_tls<S>(self, acceptor: TlsAcceptor, stream: TcpStream, svc: S)
    where
        S: Service<Req, Response = Resp, Error = Infallible> + Clone + Send + 'static,
        S::Future: Send + 'static,
    {
        let tls = match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                tracing::debug!(peer = %self.peer, error = %e, "TLS handshake failed");
                return;
            }
            Err(_) => {
                tracing::debug!(peer = %self.peer, "TLS handshake timed out");
                return;
            }
        };
        // A verified client certificate identifies the caller on every request of this
        // connection (mTLS callers need no key).
        let identity = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .and_then(tls::identity);
        let svc = svc.map_request(move |mut req: Req| {
            if let Some(p) = &identity {
                req.extensions_mut().insert(p.clone());
            }
            req
        });
        self.serve(tls, svc).await;
    }
}
