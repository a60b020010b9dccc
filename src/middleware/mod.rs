//! The tower layers of the caller-facing stack, one concern each. Their order is set, and
//! explained, in `app::service`.

pub mod access_log;
pub mod auth;
pub mod catch_panic;
pub mod error_response;
pub mod quota;
pub mod request_id;
pub mod sensitive;
pub mod shed;

/// The request type every layer sees.
pub type Req = http::Request<hyper::body::Incoming>;
/// The response type every layer produces.
pub type Resp = http::Response<crate::body::Body>;
/// The boxed future of a layer.
pub type BoxFuture<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'static>>;
