//! `CanonicalPathLayer`: refuses a request whose path is not the one spelling fxgate accepts
//! (design §9, Boundaries; `route::canonical`) with 400 / 940004, before authentication,
//! quotas or any upstream call. Routing, `routes` allow-lists, budgets, metric labels and the
//! upstream URL then all use that one string, so `/cgi/crm/v2/data/../../message/send`,
//! `%2e%2e`, `..;`, `\..\`, `//` and a trailing `/` can neither widen an allow-list, reach
//! Fxiaoke's own token endpoints nor open a second budget window for one interface. The
//! decision is made once, by `RouteMatch::of` in the access-log layer; this layer enforces it.

use std::task::{Context, Poll};

use futures_util::future::{self, Either, Ready};
use tower::{Layer, Service};

use crate::error::GatewayError;
use crate::route::RouteMatch;

/// Refuses non-canonical paths.
#[derive(Debug, Clone, Copy, Default)]
pub struct CanonicalPathLayer;

impl<S> Layer<S> for CanonicalPathLayer {
    type Service = CanonicalPath<S>;
    fn layer(&self, inner: S) -> Self::Service {
        CanonicalPath { inner }
    }
}

/// See [`CanonicalPathLayer`].
#[derive(Debug, Clone)]
pub struct CanonicalPath<S> {
    inner: S,
}

impl<S, B> Service<http::Request<B>> for CanonicalPath<S>
where
    S: Service<http::Request<B>, Error = GatewayError>,
{
    type Response = S::Response;
    type Error = GatewayError;
    type Future = Either<Ready<Result<S::Response, GatewayError>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), GatewayError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        // A request that skipped the access-log layer (a test's) is resolved here.
        let matched = req
            .extensions()
            .get::<RouteMatch>()
            .copied()
            .unwrap_or_else(|| RouteMatch::of(req.uri().path()));
        match matched.refused {
            Some(reason) => Either::Left(future::ready(Err(GatewayError::PathNotCanonical {
                reason,
            }))),
            None => Either::Right(self.inner.call(req)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::middleware::testing::{ok, request};
    use tower::ServiceExt as _;

    #[tokio::test]
    async fn a_dot_segment_never_reaches_the_inner_service() {
        let svc = CanonicalPathLayer.layer(ok());
        let refused = svc
            .clone()
            .oneshot(request("/cgi/crm/v2/data/../../message/send", &[]))
            .await;
        assert!(matches!(
            refused,
            Err(GatewayError::PathNotCanonical { .. })
        ));
        assert!(svc.oneshot(request("/cgi/message/send", &[])).await.is_ok());
    }
}
