//! The admin listener (plain HTTP/1.1, separate port): `/metrics` (Prometheus text from the
//! injected registry), `/healthz` (the process answers), `/readyz` (this replica can serve:
//! `AppState::readiness`; `?verbose` lists every check), `POST /admin/reload` and `GET /admin/clients`. `/admin/*` needs
//! `Authorization: Bearer <admin key>` (`server.admin_key_sha256`) unless the admin listener is
//! bound to loopback. Kept off the caller-facing stack so scrapes and probes never compete with uploads.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use prometheus::{Encoder, TextEncoder};

use crate::body::{full, Body};
use crate::state::AppState;
use crate::upstream::token::TokenProvider;

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(full(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// A flow's token as `/readyz` and `/admin/clients` show it. Only the legacy token decides
/// readiness: uploads need it, while an OAuth token failing affects only OAuth-style callers
/// and taking every replica out of rotation would not bring it back.
fn token_state(tokens: &TokenProvider) -> &'static str {
    match (tokens.ready(), tokens.in_use()) {
        (true, _) => "ok",
        (false, false) => "idle (fetched when first needed)",
        (false, true) => "no valid token",
    }
}

/// `/readyz`: 200 when every readiness check passes, else 503 naming the failing ones;
/// `?verbose` lists every check, and each corp's OAuth token (informational).
fn readyz(state: &AppState, verbose: bool) -> Response<Body> {
    let checks = state.readiness();
    let ready = checks.iter().all(|(_, ok, _)| *ok);
    let mut lines = String::new();
    for (name, ok, found) in checks.iter().filter(|(_, ok, _)| verbose || !*ok) {
        let mark = if *ok { "ok" } else { "FAIL" };
        lines.push_str(&format!("{mark} {name}: {found}\n"));
    }
    if verbose {
        for (name, corp) in &state.corps {
            lines.push_str(&format!(
                "info corp {name} oauth: {}\n",
                token_state(&corp.oauth)
            ));
        }
    }
    if ready && !verbose {
        lines.push_str("ready\n");
    }
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    text(status, lines)
}

async fn handle(state: Arc<AppState>, req: Request<Incoming>) -> Response<Body> {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/healthz") => text(StatusCode::OK, "ok\n"),
        (&Method::GET, "/readyz") => readyz(&state, req.uri().query() == Some("verbose")),
        (&Method::GET, "/metrics") => {
            for (name, corp) in &state.corps {
                // An OAuth token nobody has asked for yet is no alert: its series appear once used.
                for tokens in [&corp.tokens, &corp.oauth]
                    .into_iter()
                    .filter(|t| t.flow() == crate::upstream::token::ApiStyle::Legacy || t.in_use())
                {
                    let labels = [name.as_str(), tokens.flow().label()];
                    let age = tokens.age().map_or(0, |a| a.as_secs() as i64);
                    state.metrics.token.age.with_label_values(&labels).set(age);
                    state
                        .metrics
                        .token
                        .valid
                        .with_label_values(&labels)
                        .set(i64::from(tokens.ready()));
                }
            }
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                let alive = rt.metrics().num_alive_tasks();
                state
                    .metrics
                    .process
                    .runtime_tasks
                    .set(i64::try_from(alive).unwrap_or(i64::MAX));
            }
            // Derived here, at the scrape, from what `/readyz` reads: the one place it is set.
            if let Some(redis) = &state.redis {
                state.metrics.store.up.set(i64::from(redis.healthy()));
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
        (_, path) if path.starts_with("/admin/") => admin(state, req).await,
        _ => text(
            StatusCode::NOT_FOUND,
            "not found; try /metrics /healthz /readyz /admin/clients\n",
        ),
    }
}

fn json(status: StatusCode, value: serde_json::Value) -> Response<Body> {
    let mut r = Response::new(full(value.to_string()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    r
}

/// Who may use `/admin/*`: anyone on a loopback admin listener (only this host reaches it);
/// elsewhere only a caller presenting the admin key, and nobody if no key is configured.
fn admin_access(
    listen: std::net::IpAddr,
    key_sha256: Option<[u8; 32]>,
    authorization: Option<&str>,
) -> Result<(), (StatusCode, &'static str)> {
    if listen.is_loopback() {
        return Ok(());
    }
    let Some(expected) = key_sha256 else {
        return Err((
            StatusCode::FORBIDDEN,
            "set server.admin_key_sha256 to use /admin/* on a non-loopback admin_listen",
        ));
    };
    let presented = authorization
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|k| crate::config::hash_key(k.trim()));
    match presented {
        Some(h) if bool::from(subtle::ConstantTimeEq::ct_eq(&h[..], &expected[..])) => Ok(()),
        _ => Err((
            StatusCode::UNAUTHORIZED,
            "admin key required: Authorization: Bearer <key>",
        )),
    }
}

async fn admin(state: Arc<AppState>, req: Request<Incoming>) -> Response<Body> {
    let authorization = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let server = &state.cfg.server;
    if let Err((status, why)) = admin_access(
        server.admin_listen.ip(),
        server.admin_key_sha256,
        authorization,
    ) {
        return json(status, serde_json::json!({ "error": why }));
    }
    match (req.method(), req.uri().path()) {
        (&Method::POST, "/admin/reload") => reload(state),
        (&Method::GET, "/admin/clients") => {
            let registry = state.clients.load();
            let mut clients = Vec::with_capacity(registry.all().len());
            for c in registry.all() {
                clients.push(client_json(c, state.quotas.usage(c).await));
            }
            let corps: serde_json::Map<_, _> = state
                .corps
                .iter()
                .map(|(name, c)| {
                    let corp = serde_json::json!({
                        "daily_calls_left": c.budget.remaining_today(),
                        "token_ok": c.tokens.ready(),
                        "tokens": {"legacy": token_state(&c.tokens), "oauth": token_state(&c.oauth)},
                    });
                    (name.clone(), corp)
                })
                .collect();
            json(
                StatusCode::OK,
                serde_json::json!({"clients": clients, "corps": corps}),
            )
        }
        _ => json(
            StatusCode::NOT_FOUND,
            serde_json::json!({"error": "admin routes: POST /admin/reload, GET /admin/clients"}),
        ),
    }
}

/// `POST /admin/reload`: the config file, applied whole or refused whole (409 with the keys
/// that need a restart, 400 for a file that does not load), and the TLS files when the
/// listener speaks HTTPS (each applies or is refused on its own).
fn reload(state: Arc<AppState>) -> Response<Body> {
    use crate::state::ReloadError;
    let trigger = "POST /admin/reload";
    let config = state.reload_logged(trigger);
    let tls = state.reload_tls(trigger);
    let (mut status, mut body) = match &config {
        Ok(diff) => (
            StatusCode::OK,
            serde_json::json!({"reloaded": true, "clients": state.clients.load().all().len(), "applied": diff.to_json()}),
        ),
        Err(ReloadError::RestartRequired(keys)) => (
            StatusCode::CONFLICT,
            serde_json::json!({"reloaded": false, "restart_required": keys}),
        ),
        Err(ReloadError::Invalid(e)) => (
            StatusCode::BAD_REQUEST,
            serde_json::json!({"reloaded": false, "error": e}),
        ),
    };
    if let Some(tls) = &tls {
        body["tls"] = match tls {
            Ok(()) => serde_json::json!({"reloaded": true}),
            Err(e) => serde_json::json!({"reloaded": false, "error": e}),
        };
        if tls.is_err() && status == StatusCode::OK {
            status = StatusCode::BAD_REQUEST;
        }
    }
    json(status, body)
}

/// One caller in `/admin/clients`: its limits and its usage (across replicas when shared).
fn client_json(c: &crate::config::ClientConfig, usage: crate::quota::Usage) -> serde_json::Value {
    serde_json::json!({
        "name": c.name,
        "corp": c.corp,
        "auth": if c.keys.is_empty() { "certificate" } else { "key" },
        // When each key stops working (null: never), so a rotation's progress can be read.
        "keys": c.keys.iter().map(|k| crate::config::not_after_text(k.not_after_ms)).collect::<Vec<_>>(),
        "routes": c.routes.as_ref().map(|r| r.iter().map(crate::route::RoutePattern::to_config).collect::<Vec<_>>()),
        "api_style": c.api_style.label(),
        "act_as": c.act_as,
        "limits": {
            "requests_per_minute": c.requests_per_minute,
            "max_concurrent_uploads": c.max_concurrent_uploads,
            "bytes_per_day": c.bytes_per_day,
            "max_file_bytes": c.max_file_bytes,
        },
        "usage": {
            "uploads_in_flight": usage.uploads_in_flight,
            "bytes_today": usage.bytes_today,
        },
    })
}

/// The admin endpoints as a service, for `server::serve`.
pub fn service(
    state: Arc<AppState>,
) -> impl tower::Service<
    Request<Incoming>,
    Response = Response<Body>,
    Error = Infallible,
    Future = impl std::future::Future<Output = Result<Response<Body>, Infallible>> + Send,
> + Clone
       + Send
       + 'static {
    tower::service_fn(move |req| {
        let state = state.clone();
        async move { Ok::<_, Infallible>(handle(state, req).await) }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_routes_need_the_key_off_loopback() {
        let key = crate::config::hash_key("admin-secret");
        let loopback = "127.0.0.1".parse().unwrap();
        let public = "0.0.0.0".parse().unwrap();
        assert!(admin_access(loopback, None, None).is_ok());
        assert_eq!(
            admin_access(public, None, Some("Bearer admin-secret"))
                .unwrap_err()
                .0,
            StatusCode::FORBIDDEN
        );
        assert_eq!(
            admin_access(public, Some(key), None).unwrap_err().0,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            admin_access(public, Some(key), Some("Bearer wrong"))
                .unwrap_err()
                .0,
            StatusCode::UNAUTHORIZED
        );
        assert!(admin_access(public, Some(key), Some("Bearer admin-secret")).is_ok());
    }
}
