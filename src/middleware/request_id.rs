//! `RequestIdLayer`: outermost. Takes a well-formed `X-Request-Id` from the caller or mints a
//! UUIDv4, puts it in the request extensions as `RequestId`, and echoes it on every response,
//! including those synthesised from errors further in.

use std::sync::Arc;
use std::task::{Context, Poll};

use http::HeaderValue;
use tower::{Layer, Service};

use super::{BoxFuture, Resp};

/// The request id, in request extensions.
#[derive(Debug, Clone)]
pub struct RequestId(pub Arc<str>);

/// Header carrying the id both ways.
pub const X_REQUEST_ID: &str = "x-request-id";

/// Adds `RequestId`.
#[derive(Debug, Clone, Default)]
pub struct RequestIdLayer;

impl<S> Layer<S> for RequestIdLayer {
    type Service = RequestIdService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RequestIdService { inner }
    }
}

/// See [`RequestIdLayer`].
#[derive(Debug, Clone)]
pub struct RequestIdService<S> {
    inner: S,
}

/// A caller-supplied id is kept only if it is short and plain: it ends up in logs and headers.
fn acceptable(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
}

impl<S, B> Service<http::Request<B>> for RequestIdService<S>
where
    B: Send + 'static,
    S: Service<http::Request<B>, Response = Resp> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Resp;
    type Error = S::Error;
    type Future = BoxFuture<Result<Resp, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        let id: Arc<str> = match req
            .headers()
            .get(X_REQUEST_ID)
            .and_then(|v| v.to_str().ok())
        {
            Some(v) if acceptable(v) => v.into(),
            _ => uuid::Uuid::new_v4().to_string().into(),
        };
        req.extensions_mut().insert(RequestId(id.clone()));
        let fut = self.inner.call(req);
        Box::pin(async move {
            let mut resp = fut.await?;
            if let Ok(v) = HeaderValue::from_str(&id) {
                resp.headers_mut().insert(X_REQUEST_ID, v);
            }
            Ok(resp)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::middleware::testing::{ok, request};
    use tower::ServiceExt as _;

    #[tokio::test]
    async fn a_plain_id_is_kept_and_echoed_a_hostile_one_replaced() {
        let resp = RequestIdLayer
            .layer(ok())
            .oneshot(request("/x", &[(X_REQUEST_ID, "abc-123.4:5")]))
            .await
            .unwrap();
        assert_eq!(resp.headers()[X_REQUEST_ID], "abc-123.4:5");
        let resp = RequestIdLayer
            .layer(ok())
            .oneshot(request("/x", &[(X_REQUEST_ID, "a b\"<script>")]))
            .await
            .unwrap();
        let minted = resp.headers()[X_REQUEST_ID].to_str().unwrap();
        assert!(uuid::Uuid::parse_str(minted).is_ok(), "{minted}");
    }

    #[tokio::test]
    async fn the_inner_service_sees_the_same_id() {
        let inner = tower::service_fn(|req: http::Request<()>| async move {
            let id = req.extensions().get::<RequestId>().unwrap().0.to_string();
            Ok::<Resp, std::convert::Infallible>(http::Response::new(crate::body::full(id)))
        });
        let resp = RequestIdLayer
            .layer(inner)
            .oneshot(request("/x", &[]))
            .await
            .unwrap();
        let header = resp.headers()[X_REQUEST_ID].to_str().unwrap().to_string();
        let seen = crate::middleware::testing::body(resp).await;
        assert_eq!(seen, header.as_bytes());
    }
}
