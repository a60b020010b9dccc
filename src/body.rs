//! Body types shared by the server, the upstream client and the sandbox.

use bytes::Bytes;
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Full};

/// The boxed error type used where causes are heterogeneous.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body of every response fxgate produces, and of every request it sends upstream.
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

/// A body holding `bytes` at once.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}
