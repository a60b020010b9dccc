//! The caller-facing listener: accept loop, optional TLS, HTTP/1.1 + HTTP/2 (hyper-util
//! `auto::Builder`), header-read timeout, graceful drain. On shutdown the listener closes at
//! once; connections finish their in-flight requests (HTTP/1 closes after the current one,
//! HTTP/2 sends GOAWAY) until `shutdown_grace`, after which the rest are dropped.

pub mod tls;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tower::util::BoxCloneService;
use tower::ServiceExt as _;

use crate::config::ServerConfig;
use crate::middleware::{Req, Resp};

/// The caller-facing service as the server runs it (hyper needs only `Clone + Send`).
pub type AppService = BoxCloneService<Req, Resp, Infallible>;

/// Deadline for a TLS handshake; slow or silent clients are dropped after it.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A bound caller-facing listener.
pub struct Listener {
    tcp: TcpListener,
    tls: Option<TlsAcceptor>,
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
    /// Binds `listen`, loading the TLS material when configured.
    pub async fn bind(cfg: &ServerConfig) -> Result<Self, crate::BoxError> {
        let tls = cfg.tls.as_ref().map(tls::acceptor).transpose()?;
        let tcp = TcpListener::bind(cfg.listen).await?;
        Ok(Self { tcp, tls })
    }

    /// The bound address (port 0 resolved).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.tcp.local_addr()
    }

    /// Serves until `shutdown`, then drains for at most `shutdown_grace`.
    pub async fn serve(self, svc: AppService, cfg: ServerConfig, shutdown: CancellationToken) {
        let mut builder = Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(cfg.request_header_timeout)
            // hyper's read buffer may grow to ~400 KiB per connection. Measured (benches/e2e):
            // 16 KiB halved 5 MiB throughput; since the multipart reader slices these buffers
            // instead of copying them, 64 KiB costs 43 MiB peak RSS for 256 slow uploads
            // (32 KiB: 33 MiB) and brings 5 MiB at c=16/64 to nginx + SHA-256's CPU.
            .max_buf_size(64 * 1024)
            .keep_alive(true);
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_concurrent_streams(256);
        let builder = Arc::new(builder);
        let graceful = GracefulShutdown::new();
        loop {
            let (stream, peer) = tokio::select! {
                _ = shutdown.cancelled() => break,
                accepted = self.tcp.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // EMFILE and friends: back off briefly instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let _ = stream.set_nodelay(true);
            let svc = svc.clone();
            let builder = builder.clone();
            let watcher = graceful.watcher();
            match &self.tls {
                None => {
                    tokio::spawn(async move {
                        let svc = TowerToHyperService::new(svc);
                        let conn = builder
                            .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                            .into_owned();
                        if let Err(e) = watcher.watch(conn).await {
                            tracing::debug!(%peer, error = %e, "connection ended with an error");
                        }
                    });
                }
                Some(acceptor) => {
                    let acceptor = acceptor.clone();
                    tokio::spawn(async move {
                        let tls = match tokio::time::timeout(
                            TLS_HANDSHAKE_TIMEOUT,
                            acceptor.accept(stream),
                        )
                        .await
                        {
                            Ok(Ok(s)) => s,
                            Ok(Err(e)) => {
                                tracing::debug!(%peer, error = %e, "TLS handshake failed");
                                return;
                            }
                            Err(_) => {
                                tracing::debug!(%peer, "TLS handshake timed out");
                                return;
                            }
                        };
                        // A verified client certificate identifies the caller on every request
                        // of this connection (mTLS callers need no key).
                        let identity = tls
                            .get_ref()
                            .1
                            .peer_certificates()
                            .and_then(|c| c.first())
                            .and_then(tls::identity);
                        let svc = TowerToHyperService::new(svc.map_request(move |mut req: Req| {
                            if let Some(p) = &identity {
                                req.extensions_mut().insert(p.clone());
                            }
                            req
                        }));
                        let conn = builder
                            .serve_connection_with_upgrades(TokioIo::new(tls), svc)
                            .into_owned();
                        if let Err(e) = watcher.watch(conn).await {
                            tracing::debug!(%peer, error = %e, "connection ended with an error");
                        }
                    });
                }
            }
        }
        drop(self.tcp);
        tracing::info!(
            grace_s = cfg.shutdown_grace.as_secs(),
            "listener closed; draining connections"
        );
        tokio::select! {
            _ = graceful.shutdown() => tracing::info!("all connections drained"),
            _ = tokio::time::sleep(cfg.shutdown_grace) => {
                tracing::warn!("shutdown grace elapsed; dropping remaining connections")
            }
        }
    }
}
