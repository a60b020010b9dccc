//! `SensitiveHeadersLayer`: outermost. Marks the caller's credentials (`Authorization`,
//! `X-Api-Key`, `Cookie`) sensitive before anything else sees the request, so no `Debug` of a
//! request or header map below — in a log line, a panic message, a span — can print them
//! (hyper and `http` render a sensitive value as `Sensitive`). `AuthLayer` then removes them.

use std::task::{Context, Poll};

use http::header::{self, HeaderName};
use tower::{Layer, Service};

/// The headers that carry caller credentials.
pub const SENSITIVE: [HeaderName; 3] = [
    header::AUTHORIZATION,
    HeaderName::from_static("x-api-key"),
    header::COOKIE,
];

/// Marks credential headers sensitive.
#[derive(Debug, Clone, Copy, Default)]
pub struct SensitiveHeadersLayer;

impl<S> Layer<S> for SensitiveHeadersLayer {
    type Service = SensitiveHeaders<S>;
    fn layer(&self, inner: S) -> Self::Service {
        SensitiveHeaders { inner }
    }
}

/// See [`SensitiveHeadersLayer`].
#[derive(Debug, Clone)]
pub struct SensitiveHeaders<S> {
    inner: S,
}

impl<S, B> Service<http::Request<B>> for SensitiveHeaders<S>
where
    S: Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        for name in &SENSITIVE {
            if let header::Entry::Occupied(mut entry) = req.headers_mut().entry(name) {
                for value in entry.iter_mut() {
                    value.set_sensitive(true);
                }
            }
        }
        self.inner.call(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::middleware::testing::request;
    use tower::ServiceExt as _;

    #[tokio::test]
    async fn credentials_are_marked_and_nothing_else() {
        let inner = tower::service_fn(|req: http::Request<()>| async move {
            let h = req.headers();
            let marked = |n: &str| h.get_all(n).iter().all(|v| v.is_sensitive());
            let debug = format!("{h:?}");
            assert!(
                !debug.contains("alpha-key") && !debug.contains("sess=1"),
                "{debug}"
            );
            Ok::<_, std::convert::Infallible>((
                marked("authorization") && marked("x-api-key") && marked("cookie"),
                h.get("x-request-id").is_some_and(|v| !v.is_sensitive()),
            ))
        });
        let req = request(
            "/x",
            &[
                ("authorization", "Bearer alpha-key"),
                ("x-api-key", "alpha-key"),
                ("cookie", "sess=1"),
                ("x-request-id", "r1"),
            ],
        );
        let seen = SensitiveHeadersLayer
            .layer(inner)
            .oneshot(req)
            .await
            .unwrap();
        assert_eq!(seen, (true, true));
    }
}
