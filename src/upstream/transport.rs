//! The HTTP(S) client every upstream call uses (hyper-util + rustls), and the reduction of its
//! transport errors to something safe to log. Kept apart from `Corp` so the token refresher,
//! which needs a client of its own, does not depend on the corp that owns it.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

use super::timing::Timing;
use crate::body::Body;
use crate::error::GatewayError;

/// The connection pool type shared by all of a corp's calls.
pub type HttpClient = Client<HttpsConnector<TimedConnect>, Body>;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// hyper-util's TCP connector under the corp's `connect_timeout` as it is when each connection
/// starts (a reload changes it for the next one; `HttpConnector`'s own timeout is fixed at
/// build time).
#[derive(Debug, Clone)]
pub struct TimedConnect {
    inner: HttpConnector,
    timing: Arc<Timing>,
}

impl tower::Service<Uri> for TimedConnect {
    type Response = TokioIo<TcpStream>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let limit = self.timing.connect_timeout();
        let connecting = self.inner.call(uri);
        Box::pin(async move {
            match tokio::time::timeout(limit, connecting).await {
                Ok(connected) => connected.map_err(Into::into),
                Err(_) => Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no connection within {limit:?}"),
                )
                .into()),
            }
        })
    }
}

fn connector(timing: Arc<Timing>) -> HttpsConnector<TimedConnect> {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    hyper_rustls::HttpsConnectorBuilder::new()
        .with_webpki_roots()
        .https_or_http()
        .enable_http1()
        .wrap_connector(TimedConnect {
            inner: http,
            timing,
        })
}

/// hyper's per-connection buffer: what it queues to write (an upload's body, ahead of a slow
/// Fxiaoke) and what it reads into (a download). hyper's default (~400 KiB) made an upload held
/// up by upstream back-pressure cost about 1.1 MiB; the caller's side reads 40 KiB at a time
/// (`server::ServeOptions::gateway`).
const UPSTREAM_BUF: usize = 16 * 1024;

/// Builds the pooled HTTPS/HTTP client.
pub fn pooled(timing: Arc<Timing>) -> HttpClient {
    Client::builder(TokioExecutor::new())
        .http1_max_buf_size(UPSTREAM_BUF)
        .pool_idle_timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(64)
        .build(connector(timing))
}

/// A client that keeps no idle connections.
pub fn unpooled(timing: Arc<Timing>) -> HttpClient {
    Client::builder(TokioExecutor::new())
        .http1_max_buf_size(UPSTREAM_BUF)
        .pool_max_idle_per_host(0)
        .build(connector(timing))
}

/// A transport failure, reduced to its kind. hyper-util's errors never carry the URL (which
/// holds the token), but the chain is still summarised rather than forwarded.
pub fn classify(e: hyper_util::client::legacy::Error) -> GatewayError {
    GatewayError::UpstreamUnreachable {
        source: transport_detail(&e).into(),
    }
}

/// "connect failed: <innermost cause>", for logs.
pub fn transport_detail(e: &hyper_util::client::legacy::Error) -> String {
    let kind = if e.is_connect() {
        "connect failed"
    } else {
        "connection failed"
    };
    let mut detail = kind.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        detail = format!("{kind}: {s}");
        source = s.source();
    }
    detail
}

impl From<hyper_util::client::legacy::Error> for GatewayError {
    fn from(e: hyper_util::client::legacy::Error) -> Self {
        classify(e)
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;

    /// A loopback port whose accept queue is full (it never accepts): Linux drops further
    /// SYNs, so a connect to it hangs until the connector gives up.
    async fn full_queue() -> (
        tokio::net::TcpListener,
        Vec<TcpStream>,
        std::net::SocketAddr,
    ) {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket
            .bind("127.0.0.1:0".parse().expect("addr"))
            .expect("bind");
        let listener = socket.listen(0).expect("listen");
        let addr = listener.local_addr().expect("addr");
        let mut held = Vec::new();
        for _ in 0..64 {
            match tokio::time::timeout(Duration::from_millis(200), TcpStream::connect(addr)).await {
                Ok(Ok(s)) => held.push(s),
                _ => return (listener, held, addr),
            }
        }
        panic!("the accept queue never filled");
    }

    #[tokio::test]
    async fn a_hanging_connect_ends_at_the_connect_timeout_in_force_when_it_starts() {
        let (_listener, _held, addr) = full_queue().await;
        let timing = Arc::new(Timing::connect_within(Duration::from_secs(60)));
        let client = unpooled(timing.clone());
        // A reload lowers the deadline: the next connection uses it.
        let toml = "[corps.default]\nbase_url = \"sandbox\"\napp_id = \"a\"\napp_secret = \"s\"\npermanent_code = \"p\"\nconnect_timeout = \"150ms\"\n";
        let cfg = crate::config::Config::from_toml(toml, Default::default()).expect("config");
        timing.set(&cfg.corps["default"]);
        let started = Instant::now();
        let req = http::Request::post(format!("http://{addr}/x"))
            .body(crate::body::full(bytes::Bytes::new()))
            .expect("request");
        let e = client.request(req).await.expect_err("no connection");
        assert!(e.is_connect(), "{e:?}");
        assert!(
            transport_detail(&e).contains("no connection within"),
            "{e:?}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{:?}",
            started.elapsed()
        );
    }
}
