//! `ErrorResponseLayer`: the single place where a `GatewayError` becomes an HTTP response (the
//! Fxiaoke-style envelope with fxgate's code) and is logged, exactly once. Inside it, handlers
//! and layers return `Err(GatewayError)` with `?`; outside it, the error type is `Infallible`.

use std::convert::Infallible;
use std::task::{Context, Poll};

use tower::{Layer, Service};

use super::request_id::RequestId;
use super::{BoxFuture, Resp};
use crate::error::{ErrorSource, GatewayError};

/// Converts errors to envelopes.
#[derive(Debug, Clone, Default)]
pub struct ErrorResponseLayer;

impl<S> Layer<S> for ErrorResponseLayer {
    type Service = ErrorResponse<S>;
    fn layer(&self, inner: S) -> Self::Service {
        ErrorResponse { inner }
    }
}

/// See [`ErrorResponseLayer`].
#[derive(Debug, Clone)]
pub struct ErrorResponse<S> {
    inner: S,
}

impl<S, B> Service<http::Request<B>> for ErrorResponse<S>
where
    B: Send + 'static,
    S: Service<http::Request<B>, Response = Resp, Error = GatewayError> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Resp;
    type Error = Infallible;
    type Future = BoxFuture<Result<Resp, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        match self.inner.poll_ready(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Ok(())) => Poll::Ready(Ok(())),
            Poll::Ready(Err(e)) => {
                // The inner layers are always ready; an error here is a bug worth a log line.
                tracing::error!(error = %e, "service not ready");
                Poll::Ready(Ok(()))
            }
        }
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let id = req
            .extensions()
            .get::<RequestId>()
            .map(|r| r.0.clone())
            .unwrap_or_else(|| "-".into());
        // An error answered before the body was read leaves the HTTP/1 connection in an
        // unknown state: tell the client not to reuse it (hyper then closes it), instead of
        // letting its pool race our close.
        let may_leave_body = req.version() < http::Version::HTTP_2
            && (req.headers().contains_key(http::header::TRANSFER_ENCODING)
                || req
                    .headers()
                    .get(http::header::CONTENT_LENGTH)
                    .is_some_and(|v| v.as_bytes() != b"0"));
        let fut = self.inner.call(req);
        Box::pin(async move {
            match fut.await {
                Ok(resp) => Ok(resp),
                Err(err) => {
                    let (status, code) = err.status_and_code();
                    match (err.source_kind(), &err) {
                        (ErrorSource::Internal, GatewayError::Internal { detail }) => {
                            tracing::error!(request_id = %id, code, %detail, "internal error")
                        }
                        (ErrorSource::Upstream, GatewayError::UpstreamUnreachable { source }) => {
                            tracing::warn!(request_id = %id, code, cause = %source, "{err}")
                        }
                        (ErrorSource::Upstream, _) | (ErrorSource::Internal, _) => {
                            tracing::warn!(request_id = %id, code, status = status.as_u16(), "{err}")
                        }
                        (ErrorSource::Client, _) => {
                            tracing::debug!(request_id = %id, code, status = status.as_u16(), "{err}")
                        }
                    }
                    let mut resp = err.into_response(&id);
                    if may_leave_body {
                        resp.headers_mut().insert(
                            http::header::CONNECTION,
                            http::HeaderValue::from_static("close"),
                        );
                    }
                    Ok(resp)
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::middleware::testing::{envelope, request};
    use std::time::Duration;
    use tower::ServiceExt as _;

    fn failing(
        err: fn() -> GatewayError,
    ) -> impl Service<http::Request<()>, Response = Resp, Error = GatewayError, Future = impl Send>
           + Clone
           + Send
           + 'static {
        tower::service_fn(move |_req: http::Request<()>| async move { Err::<Resp, _>(err()) })
    }

    #[tokio::test]
    async fn an_error_becomes_its_envelope_with_status_code_and_retry_after() {
        let mut req = request("/media/upload", &[]);
        req.extensions_mut().insert(RequestId("rid-1".into()));
        let resp = ErrorResponseLayer
            .layer(failing(|| GatewayError::QuotaExceeded {
                kind: "requests_per_minute",
                retry_after: Duration::from_millis(1500),
            }))
            .oneshot(req)
            .await
            .unwrap();
        assert_eq!(resp.status(), 429);
        assert_eq!(resp.headers()[http::header::RETRY_AFTER], "2");
        let env = envelope(resp).await;
        assert_eq!(env["errorCode"], 942901);
        assert_eq!(env["traceId"], "rid-1");
    }

    #[tokio::test]
    async fn an_internal_error_shows_no_detail_and_an_unread_body_closes_the_connection() {
        let req = request("/media/upload", &[("content-length", "10")]);
        let resp = ErrorResponseLayer
            .layer(failing(|| GatewayError::Internal {
                detail: "secret internals".into(),
            }))
            .oneshot(req)
            .await
            .unwrap();
        assert_eq!(resp.status(), 500);
        assert_eq!(resp.headers()[http::header::CONNECTION], "close");
        let env = envelope(resp).await;
        assert_eq!(env["errorCode"], 950001);
        assert!(!env.to_string().contains("secret internals"));
    }
}
