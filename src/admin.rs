//! The admin listener (plain HTTP/1.1, separate port): `/metrics` (Prometheus text from the
//! injected registry), `/healthz` (the process answers), `/readyz` (every corp holds a usable
//! token). Kept off the caller-facing stack so scrapes and probes never compete with uploads.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use prometheus::{Encoder, TextEncoder};
use tokio::net::TcpListener;

use crate::app::AppState;
use crate::body::{full, Body};

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(full(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

async fn handle(state: Arc<AppState>, req: Request<Incoming>) -> Response<Body> {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/healthz") => text(StatusCode::OK, "ok\n"),
        (&Method::GET, "/readyz") => {
            let mut lines = String::new();
            for (name, corp) in &state.corps {
                lines.push_str(&format!(
                    "corp {name}: {}\n",
                    if corp.tokens.ready() {
                        "token ok"
                    } else {
                        "no valid token"
                    }
                ));
            }
            let status = if state.ready() {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            text(status, lines)
        }
        (&Method::GET, "/metrics") => {
            for (name, corp) in &state.corps {
                let age = corp.tokens.age().map_or(0, |a| a.as_secs() as i64);
                state.metrics.token_age.with_label_values(&[name]).set(age);
            }
            let mut buf = Vec::new();
            let encoder = TextEncoder::new();
            if let Err(e) = encoder.encode(&state.registry.gather(), &mut buf) {
                return text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("encoding metrics failed: {e}\n"),
                );
            }
            let mut r = text(StatusCode::OK, buf);
            if let Ok(v) = header::HeaderValue::from_str(encoder.format_type()) {
                r.headers_mut().insert(header::CONTENT_TYPE, v);
            }
            r
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "not found; try /metrics /healthz /readyz\n",
        ),
    }
}

/// Serves the admin endpoints until the task is aborted.
pub async fn serve(listener: TcpListener, state: Arc<AppState>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let state = state.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(handle(state, req).await) }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}
