//! The caller-facing listener served thread-per-core: `server.workers` OS threads, each with
//! its own current-thread tokio runtime and its own listening socket on the shared port
//! (`SO_REUSEPORT`: the kernel spreads new connections across them). A connection, its
//! requests and the upstream connections they use (`worker::PerWorker` pools) then live on one
//! thread, as in nginx's worker processes or Pingora, instead of hopping between the threads
//! of a shared work-stealing runtime. Everything else (admin, token refreshers, watchers) stays
//! on the runtime that called `spawn`.

use std::convert::Infallible;
use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tower::Service;

use super::{serve, Listener, ServeOptions, Tls};
use crate::config::ServerConfig;
use crate::middleware::{Req, Resp};

/// How long a stopping worker waits for its blocking-pool tasks once its drain is over.
const RUNTIME_STOP: std::time::Duration = std::time::Duration::from_secs(1);

/// Pending connections each socket queues (tokio's own default for `TcpListener::bind`).
const BACKLOG: u32 = 1024;

/// The caller-facing port, bound once per worker.
pub struct Bound {
    sockets: Vec<std::net::TcpListener>,
    tls: Option<Tls>,
    addr: SocketAddr,
}

impl std::fmt::Debug for Bound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bound")
            .field("addr", &self.addr)
            .field("sockets", &self.sockets.len())
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl Bound {
    /// Loads the TLS material (when configured) and binds `listen` `workers` times. The first
    /// socket resolves port 0; the others join it. Must run inside a runtime (binding
    /// registers each socket, which is then handed over to its worker's own reactor).
    pub fn bind(cfg: &ServerConfig) -> Result<Self, crate::body::BoxError> {
        let tls = cfg.tls.as_ref().map(Tls::load).transpose()?;
        let mut addr = cfg.listen;
        let mut sockets = Vec::with_capacity(cfg.workers);
        for _ in 0..cfg.workers.max(1) {
            let socket = reuseport_listener(addr)?;
            addr = socket.local_addr()?;
            sockets.push(socket.into_std()?);
        }
        Ok(Self { sockets, tls, addr })
    }

    /// Where callers connect (port 0 resolved).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its TLS config, to reload when the files change (shared by every worker).
    pub fn tls(&self) -> Option<Tls> {
        self.tls.clone()
    }

    /// Starts one thread per socket, each serving `svc` until `shutdown` and then draining as
    /// `serve` does. Fails, with nothing left running, when a thread or runtime cannot start.
    pub fn serve<S>(
        self,
        svc: S,
        opts: ServeOptions,
        shutdown: CancellationToken,
    ) -> std::io::Result<Workers>
    where
        S: Service<Req, Response = Resp, Error = Infallible> + Clone + Send + 'static,
        S::Future: Send + 'static,
    {
        let mut done = Vec::with_capacity(self.sockets.len());
        // Should a later thread fail to start, the earlier ones stop with it.
        let started = shutdown.child_token();
        for (i, socket) in self.sockets.into_iter().enumerate() {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .inspect_err(|_| started.cancel())?;
            let (tx, rx) = oneshot::channel();
            let (tls, svc, opts, stop) =
                (self.tls.clone(), svc.clone(), opts.clone(), started.clone());
            std::thread::Builder::new()
                .name(format!("fxgate-worker-{}", i + 1))
                .spawn(move || {
                    crate::worker::enter(i + 1);
                    rt.block_on(async move {
                        match TcpListener::from_std(socket) {
                            Ok(tcp) => serve(Listener { tcp, tls }, svc, opts, stop).await,
                            Err(e) => tracing::error!(error = %e, "worker cannot listen"),
                        }
                    });
                    // Ends what the drain left (this worker's pooled upstream connections,
                    // lingering closes), waiting a bounded time for blocking-pool work: a plain
                    // drop would wait for that without limit.
                    rt.shutdown_timeout(RUNTIME_STOP);
                    let _ = tx.send(());
                })
                .inspect_err(|_| started.cancel())?;
            done.push(rx);
        }
        Ok(Workers { done })
    }
}

fn reuseport_listener(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.set_reuseport(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

/// The running workers.
#[derive(Debug)]
pub struct Workers {
    done: Vec<oneshot::Receiver<()>>,
}

impl Workers {
    /// Waits until every worker has drained and stopped (after the shutdown token fired).
    pub async fn join(self) {
        for rx in self.done {
            let _ = rx.await;
        }
    }
}
