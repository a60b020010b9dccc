//! The HTTP(S) client every upstream call uses (hyper-util + rustls), and the reduction of its
//! transport errors to something safe to log. Kept apart from `Corp` so the token refresher,
//! which needs a client of its own, does not depend on the corp that owns it.

use std::time::Duration;

use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;

use crate::body::Body;
use crate::error::GatewayError;

/// The connection pool type shared by all of a corp's calls.
pub type HttpClient = Client<HttpsConnector<HttpConnector>, Body>;

fn connector(connect_timeout: Duration) -> HttpsConnector<HttpConnector> {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(connect_timeout));
    http.set_nodelay(true);
    hyper_rustls::HttpsConnectorBuilder::new()
        .with_webpki_roots()
        .https_or_http()
        .enable_http1()
        .wrap_connector(http)
}

/// hyper's per-connection buffer: what it queues to write (an upload's body, ahead of a slow
/// Fxiaoke) and what it reads into (a download). hyper's default (~400 KiB) made an upload held
/// up by upstream back-pressure cost about 1.1 MiB; the caller's side reads 40 KiB at a time
/// (`server::ServeOptions::gateway`).
const UPSTREAM_BUF: usize = 16 * 1024;

/// Builds the pooled HTTPS/HTTP client.
pub fn pooled(connect_timeout: Duration) -> HttpClient {
    Client::builder(TokioExecutor::new())
        .http1_max_buf_size(UPSTREAM_BUF)
        .pool_idle_timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(64)
        .build(connector(connect_timeout))
}

/// A client that keeps no idle connections.
pub fn unpooled(connect_timeout: Duration) -> HttpClient {
    Client::builder(TokioExecutor::new())
        .http1_max_buf_size(UPSTREAM_BUF)
        .pool_max_idle_per_host(0)
        .build(connector(connect_timeout))
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
