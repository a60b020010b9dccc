//! The route table: method + path → handler. Innermost service of the caller-facing stack;
//! it finds the `Principal` and `LogContext` the outer layers put into the extensions.

pub mod forward;
pub mod issue;
pub mod members;
pub mod passthrough;

use std::sync::Arc;
use std::task::{Context, Poll};

use http::Method;
use tower::Service;

use crate::error::GatewayError;
use crate::middleware::access_log::LogContext;
use crate::middleware::auth::{CallerBody, Principal};
use crate::middleware::request_id::RequestId;
use crate::middleware::{BoxFuture, Req, Resp};
use crate::route::{Route, RouteMatch};
use crate::state::AppState;
use crate::upload;

/// Dispatches to the handlers.
#[derive(Debug, Clone)]
pub struct Router {
    state: Arc<AppState>,
}

impl Router {
    /// Routes over `state`.
    pub fn new(state: Arc<AppState>) -> Self {
        Self { state }
    }
}

async fn route(state: Arc<AppState>, req: Req) -> Result<Resp, GatewayError> {
    let principal = req
        .extensions()
        .get::<Principal>()
        .cloned()
        .ok_or_else(|| GatewayError::Internal {
            detail: "router reached without a Principal".into(),
        })?;
    let log = req
        .extensions()
        .get::<LogContext>()
        .cloned()
        .unwrap_or_default();
    let route = req
        .extensions()
        .get::<RouteMatch>()
        .map_or_else(|| Route::of(req.uri().path()), |m| m.route)
        .ok_or(GatewayError::NotFound)?;
    // Every route fxgate serves is a POST (design §3).
    if req.method() != Method::POST {
        return Err(GatewayError::MethodNotAllowed);
    }
    match route {
        Route::UploadMessage | Route::Upload => {
            upload::handle(&state, req, route, &principal, &log).await
        }
        Route::UploadFile => upload::file::handle(&state, req, &principal, &log).await,
        Route::Download | Route::Delete => {
            forward::json_call(&state, req, route, &principal, &log).await
        }
        Route::Passthrough => passthrough::call(&state, req, &principal, &log).await,
        Route::Token(style) => {
            let id = req
                .extensions()
                .get::<RequestId>()
                .map(|r| r.0.to_string())
                .unwrap_or_default();
            issue::issue(&state, style, &principal, &id).await
        }
    }
}

/// A JSON route's body: the one the auth layer already read for a credential, or read now,
/// at most `limit` bytes (413, 941301 beyond).
pub(crate) async fn caller_json(
    mut req: Req,
    route: Route,
    passthrough_max: u64,
) -> Result<bytes::Bytes, GatewayError> {
    if let Some(body) = req.extensions().get::<CallerBody>() {
        return Ok(body.0.clone());
    }
    let limit = route.body_limit(passthrough_max).unwrap_or(0);
    let label = route.label();
    crate::body::read_capped(req.body_mut(), limit as usize, label, route.body_idle())
        .await
        .map_err(GatewayError::from)
}

impl Service<Req> for Router {
    type Response = Resp;
    type Error = GatewayError;
    type Future = BoxFuture<Result<Resp, GatewayError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), GatewayError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Req) -> Self::Future {
        Box::pin(route(self.state.clone(), req))
    }
}

/// Fxiaoke's JSON answer, passed back as it came.
pub(super) fn json_answer(status: http::StatusCode, raw: bytes::Bytes) -> Resp {
    let mut out = http::Response::new(crate::body::full(raw));
    *out.status_mut() = status;
    out.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    out
}
