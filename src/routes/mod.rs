//! The route table: method + path → handler. Innermost service of the caller-facing stack;
//! it finds the `Principal` and `LogContext` the outer layers put into the extensions.

pub mod forward;

use std::sync::Arc;
use std::task::{Context, Poll};

use http::Method;
use tower::Service;

use crate::state::AppState;
use crate::error::GatewayError;
use crate::middleware::access_log::LogContext;
use crate::middleware::auth::Principal;
use crate::middleware::{BoxFuture, Req, Resp};
use crate::upload::{self, UploadKind};

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

fn upload_kind(req: &Req) -> Result<UploadKind, GatewayError> {
    let ty = crate::route::query_param(req.uri(), "type");
    match ty.as_deref() {
        Some("image") => Ok(UploadKind::Image),
        Some("document") => Ok(UploadKind::Document),
        _ => Err(GatewayError::BadRequest {
            detail: "query parameter `type` must be `image` or `document`".into(),
        }),
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
    let path = req.uri().path();
    let is_post = req.method() == Method::POST;
    match path {
        "/media/upload/message" if is_post => {
            upload::handle(&state, req, UploadKind::Message, &principal, &log).await
        }
        "/media/upload" if is_post => {
            let kind = upload_kind(&req)?;
            upload::handle(&state, req, kind, &principal, &log).await
        }
        "/media/download" if is_post => {
            forward::json_call(&state, req, forward::JsonRoute::Download, &principal, &log).await
        }
        "/media/delete" if is_post => {
            forward::json_call(&state, req, forward::JsonRoute::Delete, &principal, &log).await
        }
        "/media/upload/message" | "/media/upload" | "/media/download" | "/media/delete" => {
            Err(GatewayError::MethodNotAllowed)
        }
        _ => Err(GatewayError::NotFound),
    }
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
