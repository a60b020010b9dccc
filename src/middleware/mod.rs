//! The tower layers of the caller-facing stack, one concern each. Their order is set, and
//! explained, in `app::service`.

pub mod access_log;
pub mod auth;
pub mod catch_panic;
pub mod credentials;
pub mod error_response;
pub mod path;
pub mod quota;
pub mod request_id;
pub mod sensitive;
pub mod shed;
pub mod trace;

/// The request type every layer sees.
pub type Req = http::Request<hyper::body::Incoming>;
/// The response type every layer produces.
pub type Resp = http::Response<crate::body::Body>;
/// The address a request's connection came from (every listener puts it in the extensions).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerAddr(pub std::net::SocketAddr);

/// The verified client certificate of the connection, when the caller presented one.
#[derive(Debug, Clone)]
pub struct PeerIdentity {
    /// The subject, RFC 4514 style (`CN=billing, O=Example`).
    pub subject: String,
    /// Its common name, if any.
    pub common_name: Option<String>,
    /// SHA-256 of the certificate's DER, hex.
    pub fingerprint: String,
}

impl PeerIdentity {
    /// Whether a configured `cert_subject` names this certificate: the whole subject, or
    /// `CN=<name>` for its common name.
    pub fn matches(&self, wanted: &str) -> bool {
        let wanted = wanted.trim();
        wanted == self.subject
            || self
                .common_name
                .as_deref()
                .is_some_and(|cn| wanted.strip_prefix("CN=").is_some_and(|w| w == cn))
    }
}

/// The boxed future of a layer.
pub type BoxFuture<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'static>>;

/// Helpers for the layer tests: an inner service, a caller, a body reader.
#[cfg(test)]
pub(crate) mod testing {
    use std::sync::Arc;

    use bytes::Bytes;
    use http_body_util::BodyExt as _;

    use super::Resp;
    use crate::body::full;
    use crate::config::ClientConfig;
    use crate::error::GatewayError;
    use crate::metrics::Metrics;

    /// An inner service that answers 200 `ok`.
    pub(crate) fn ok<B: Send + 'static>() -> impl tower::Service<
        http::Request<B>,
        Response = Resp,
        Error = GatewayError,
        Future = impl Send,
    > + Clone
           + Send
           + 'static {
        tower::service_fn(|_req: http::Request<B>| async {
            Ok::<Resp, GatewayError>(http::Response::new(full("ok")))
        })
    }

    /// A caller named `name` with the key `name-key` and no limits.
    pub(crate) fn caller(name: &str) -> ClientConfig {
        ClientConfig {
            name: name.into(),
            keys: vec![crate::config::ClientKey {
                sha256: crate::config::hash_key(&format!("{name}-key")),
                not_after_ms: None,
            }],
            cert_subject: None,
            corp: "default".into(),
            requests_per_minute: None,
            bytes_per_day: None,
            max_concurrent_uploads: None,
            max_file_bytes: None,
            routes: None,
            api_style: crate::route::ApiStyle::Legacy,
            act_as: Vec::new(),
        }
    }

    /// Fresh metric families.
    pub(crate) fn metrics() -> Metrics {
        Metrics::register(&prometheus::Registry::new()).expect("metrics register")
    }

    /// The whole body of a response.
    pub(crate) async fn body(resp: Resp) -> Bytes {
        resp.into_body().collect().await.expect("body").to_bytes()
    }

    /// The envelope of an error response.
    pub(crate) async fn envelope(resp: Resp) -> serde_json::Value {
        serde_json::from_slice(&body(resp).await).expect("an envelope")
    }

    /// The body of a layer test's request that reads it.
    pub(crate) type TestBody = http_body_util::Full<Bytes>;

    /// A request to `path` with `headers` and no body.
    pub(crate) fn request(path: &str, headers: &[(&str, &str)]) -> http::Request<()> {
        with_body(path, headers, "").map(|_| ())
    }

    /// A request to `path` with `headers` and `body`.
    pub(crate) fn with_body(
        path: &str,
        headers: &[(&str, &str)],
        body: &'static str,
    ) -> http::Request<TestBody> {
        let mut b = http::Request::post(path);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(http_body_util::Full::new(Bytes::from_static(
            body.as_bytes(),
        )))
        .expect("request")
    }

    /// An in-memory token store on the system clock.
    pub(crate) fn sessions() -> crate::session::Sessions {
        crate::session::Sessions::new(
            Arc::new(crate::session::MemorySessions::new(100)),
            crate::clock::SystemClock::shared(),
        )
    }

    /// An `Arc`ed caller registry of `callers`.
    pub(crate) fn registry(
        callers: &[ClientConfig],
    ) -> Arc<arc_swap::ArcSwap<super::auth::ClientRegistry>> {
        Arc::new(arc_swap::ArcSwap::from_pointee(
            super::auth::ClientRegistry::new(callers),
        ))
    }
}
