//! The HTTP(S) client every upstream call uses (hyper-util + rustls), its egress (an HTTP
//! CONNECT proxy from `HTTPS_PROXY`/`NO_PROXY`, a corp's extra roots), and the reduction of its
//! transport errors to something safe to log. Kept apart from `Corp` so the token refresher,
//! which needs a client of its own, does not depend on the corp that owns it.

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, LazyLock};
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::proxy::Tunnel;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::client::proxy::matcher::Matcher;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

use super::timing::Timing;
use crate::body::Body;
use crate::config::{CorpConfig, ExtraRoots};
use crate::error::GatewayError;

/// The connection pool type shared by all of a corp's calls.
pub type HttpClient = Client<HttpsConnector<TimedConnect>, Body>;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The proxy settings of the environment, as curl reads them (`HTTPS_PROXY`, `HTTP_PROXY`,
/// `ALL_PROXY`, `NO_PROXY`, upper or lower case), read once: a process's environment does not
/// change under it.
static PROXY: LazyLock<Matcher> = LazyLock::new(Matcher::from_env);

/// How one corp's calls leave the process: which roots its upstream may chain to, and whether
/// they go through the environment's proxy.
#[derive(Debug, Clone)]
pub struct Egress {
    tls: Arc<rustls::ClientConfig>,
    proxied: bool,
}

impl Egress {
    /// A corp's: the web PKI plus its `ca_file`, through the environment's proxy.
    pub fn of(cfg: &CorpConfig) -> Self {
        Self {
            tls: tls(cfg.ca_file.as_ref()),
            proxied: true,
        }
    }

    /// The web PKI, never proxied (the trace collector, which is inside the network).
    pub fn direct() -> Self {
        Self {
            tls: tls(None),
            proxied: false,
        }
    }

    /// The proxy `uri` would go through, with its user hidden (for the start-up log).
    pub fn proxy_for(uri: &Uri) -> Option<String> {
        proxy(uri).map(|via| {
            let u = via.uri();
            format!(
                "{}://{}",
                u.scheme_str().unwrap_or("http"),
                u.authority()
                    .map_or("", |a| a.as_str().rsplit('@').next().unwrap_or(""))
            )
        })
    }
}

fn tls(extra: Option<&ExtraRoots>) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    if let Some(extra) = extra {
        // Checked when the config was validated: every one parses as a root.
        roots.add_parsable_certificates(extra.certs.iter().cloned());
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map(|b| b.with_root_certificates(roots).with_no_client_auth());
    // ring supports every safe default version, so this cannot fail; the fallback keeps a
    // build with another provider from panicking.
    Arc::new(config.unwrap_or_else(|_| {
        rustls::ClientConfig::builder()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth()
    }))
}

/// The proxy for `dst`, unless `NO_PROXY` names it or it is this host: loopback is never
/// proxied (as Go's `ProxyFromEnvironment` does), so a sidecar or the in-process sandbox is
/// reached directly whatever the environment says.
fn proxy(dst: &Uri) -> Option<hyper_util::client::proxy::matcher::Intercept> {
    let host = dst.host()?.trim_start_matches('[').trim_end_matches(']');
    let loopback = host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
    if loopback {
        return None;
    }
    PROXY.intercept(dst)
}

/// hyper-util's TCP connector under the corp's `connect_timeout` as it is when each connection
/// starts (a reload changes it for the next one; `HttpConnector`'s own timeout is fixed at
/// build time). Through a proxy, the deadline covers reaching the proxy and its CONNECT answer.
#[derive(Debug, Clone)]
pub struct TimedConnect {
    inner: HttpConnector,
    timing: Arc<Timing>,
    proxied: bool,
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
        let connecting: Self::Future = match self.proxied.then(|| proxy(&uri)).flatten() {
            Some(via) => {
                // The tunnel's CONNECT names port 443 when the URL has none; an `http://`
                // upstream is on 80.
                let uri = with_default_port(uri);
                let mut tunnel = Tunnel::new(via.uri().clone(), self.inner.clone());
                if let Some(auth) = via.basic_auth() {
                    tunnel = tunnel.with_auth(auth.clone());
                }
                Box::pin(async move {
                    std::future::poll_fn(|cx| tunnel.poll_ready(cx)).await?;
                    Ok(tunnel.call(uri).await?)
                })
            }
            None => {
                let direct = self.inner.call(uri);
                Box::pin(async move { direct.await.map_err(Into::into) })
            }
        };
        Box::pin(async move {
            match tokio::time::timeout(limit, connecting).await {
                Ok(connected) => connected,
                Err(_) => Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no connection within {limit:?}"),
                )
                .into()),
            }
        })
    }
}

fn with_default_port(uri: Uri) -> Uri {
    if uri.port().is_some() || uri.scheme_str() != Some("http") {
        return uri;
    }
    let Some(host) = uri.host() else {
        return uri;
    };
    let authority = format!("{host}:80");
    let mut parts = uri.clone().into_parts();
    match authority.parse() {
        Ok(a) => {
            parts.authority = Some(a);
            Uri::from_parts(parts).unwrap_or(uri)
        }
        Err(_) => uri,
    }
}

fn connector(timing: Arc<Timing>, egress: &Egress) -> HttpsConnector<TimedConnect> {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config((*egress.tls).clone())
        .https_or_http()
        .enable_http1()
        .wrap_connector(TimedConnect {
            inner: http,
            timing,
            proxied: egress.proxied,
        })
}

/// hyper's per-connection buffer: what it queues to write (an upload's body, ahead of a slow
/// Fxiaoke) and what it reads into (a download). hyper's default (~400 KiB) made an upload held
/// up by upstream back-pressure cost about 1.1 MiB; the caller's side reads 40 KiB at a time
/// (`server::ServeOptions::gateway`).
const UPSTREAM_BUF: usize = 16 * 1024;

/// The File Service's write queue: room for `FILE_BURST` of the caller's 40 KiB reads, so
/// hyper writes a burst of them in one `writev` (`upload::pump`). Only step 2 of a File
/// Service upload uses it; everything else keeps `UPSTREAM_BUF`.
pub const FILE_BUF: usize = 128 * 1024;

/// Reads of the caller's file the File Service pump sends together. Each write wakes the
/// reader (on loopback, on the writer's CPU; on a VM, with an inter-processor interrupt): a
/// 100 MiB upload cost 1.52-1.89 CPU-s/GiB in 40 KiB writes and 1.35-1.57 in bursts of
/// three, alternating on one machine (docs/benchmarks.md); four did no better. The price: an
/// upload held up by a slow File Service holds ~520 KiB instead of ~235 (tests/files.rs).
pub const FILE_BURST: usize = 3;

/// A serving thread's upstream pools: one for calls and uploads, one for File Service bodies.
#[derive(Debug, Clone)]
pub struct Pools {
    /// Calls and media uploads (`UPSTREAM_BUF`).
    pub calls: HttpClient,
    /// Step 2 of File Service uploads (`FILE_BUF`).
    pub files: HttpClient,
}

impl Pools {
    /// Both pools, through `egress`.
    pub fn new(timing: &Arc<Timing>, egress: &Egress) -> Self {
        Self {
            calls: pooled(timing, egress, UPSTREAM_BUF),
            files: pooled(timing, egress, FILE_BUF),
        }
    }
}

/// Builds a pooled HTTPS/HTTP client whose connections queue up to `buf` bytes.
fn pooled(timing: &Arc<Timing>, egress: &Egress, buf: usize) -> HttpClient {
    Client::builder(TokioExecutor::new())
        .http1_max_buf_size(buf)
        .pool_idle_timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(64)
        .build(connector(timing.clone(), egress))
}

/// A client that keeps no idle connections.
pub fn unpooled(timing: Arc<Timing>, egress: &Egress) -> HttpClient {
    Client::builder(TokioExecutor::new())
        .http1_max_buf_size(UPSTREAM_BUF)
        .pool_max_idle_per_host(0)
        .build(connector(timing, egress))
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

    #[test]
    fn a_tunnel_to_a_plain_http_upstream_names_port_80() {
        let port = |u: &str| with_default_port(u.parse().expect("uri")).port_u16();
        assert_eq!(port("http://fxiaoke.test/cgi/x"), Some(80));
        assert_eq!(port("http://fxiaoke.test:8090/cgi/x"), Some(8090));
        // https keeps no port: the tunnel's own default, 443, is right for it.
        assert_eq!(port("https://open.fxiaoke.com/cgi/x"), None);
    }

    #[tokio::test]
    async fn a_hanging_connect_ends_at_the_connect_timeout_in_force_when_it_starts() {
        let (_listener, _held, addr) = full_queue().await;
        let timing = Arc::new(Timing::connect_within(Duration::from_secs(60)));
        let client = unpooled(timing.clone(), &Egress::direct());
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
