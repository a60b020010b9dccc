//! The effective settings, defaults filled in and secrets masked (`fxgate check-config`).

use std::time::Duration;

use serde_json::{json, Value};

use super::parse::mask_url_password;
use super::*;

fn d(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

impl Config {
    /// The effective settings, defaults filled in and secrets masked (`check-config`).
    pub fn effective(&self) -> Value {
        json!({
            "server": self.server_json(),
            "tracing": self.tracing_json(),
            "log": { "format": match self.log.format { LogFormat::Pretty => "pretty", LogFormat::Json => "json" }, "level": self.log.level },
            "corps": self.corps.iter().map(|(name, c)| (name.clone(), corp_json(c))).collect::<serde_json::Map<_, _>>(),
            "upload": {
                "message_max_bytes": self.upload.message_max_bytes,
                "message_types": self.upload.message_types.iter().map(|t| t.mime()).collect::<Vec<_>>(),
                "document_max_bytes": self.upload.document_max_bytes,
                "file_max_bytes": self.upload.file_max_bytes,
            },
            "dedupe": {
                "ttl": d(self.dedupe.ttl),
                "max_entries": self.dedupe.max_entries,
                "claim_scope": match self.dedupe.claim_scope { ClaimScope::Client => "client", ClaimScope::Corp => "corp" },
            },
            "store": {
                "backend": match self.store.backend { Backend::Memory => "memory", Backend::Redis => "redis" },
                "redis_url": mask_url_password(self.store.redis_url.expose()),
                "quota_fail_mode": match self.store.quota_fail_mode { FailMode::Open => "open", FailMode::Closed => "closed" },
                "key_prefix": self.store.key_prefix,
                "timeout": d(self.store.timeout),
                "lease_ttl": d(self.store.lease_ttl),
                "redis_mode": match &self.store.mode { RedisMode::Standalone => "standalone", RedisMode::Sentinel(_) => "sentinel", RedisMode::Cluster(_) => "cluster" },
                "redis_sentinels": match &self.store.mode { RedisMode::Sentinel(s) => Some(&s.sentinels), _ => None },
                "redis_master_name": match &self.store.mode { RedisMode::Sentinel(s) => Some(&s.master_name), _ => None },
                "redis_sentinel_username": match &self.store.mode { RedisMode::Sentinel(s) => s.username.as_deref(), _ => None },
                "redis_sentinel_password": match &self.store.mode { RedisMode::Sentinel(s) => s.password.as_ref().map(|_| "****"), _ => None },
                "redis_nodes": match &self.store.mode { RedisMode::Cluster(n) => Some(n), _ => None },
                "redis_tls": self.store.tls,
                "redis_username": self.store.redis_username,
                "redis_password": self.store.redis_password.as_ref().map(|_| "****"),
                "redis_ca_file": self.store.redis_tls.ca.as_ref().map(|p| p.display().to_string()),
                "redis_cert_file": self.store.redis_tls.client.as_ref().map(|(c, _)| c.display().to_string()),
                "redis_key_file": self.store.redis_tls.client.as_ref().map(|(_, k)| k.display().to_string()),
            },
            "passthrough": {"max_body": self.passthrough.max_body, "max_answer": self.passthrough.max_answer},
            "clients": self.clients.iter().map(client_json).collect::<Vec<_>>(),
        })
    }

    fn server_json(&self) -> Value {
        let s = &self.server;
        json!({
            "listen": s.listen.to_string(),
            "admin_listen": s.admin_listen.to_string(),
            "tls_cert": s.tls.as_ref().map(|t| t.cert.display().to_string()),
            "tls_key": s.tls.as_ref().map(|t| t.key.display().to_string()),
            "client_ca": s.tls.as_ref().and_then(|t| t.client_ca.as_ref()).map(|p| p.display().to_string()),
            "request_header_timeout": d(s.request_header_timeout),
            "idle_timeout": d(s.idle_timeout),
            "shutdown_grace": d(s.shutdown_grace),
            "admin_key_sha256": s.admin_key_sha256.map(hex::encode),
            "max_inflight": s.max_inflight,
            "watch_interval": s.watch_interval.map(d),
            "workers": s.workers,
            "max_unauthenticated": s.unauthenticated.max_requests,
            "unauthenticated_body_bytes": s.unauthenticated.max_bytes,
            "unauthenticated_body_timeout": d(s.unauthenticated.timeout),
        })
    }

    fn tracing_json(&self) -> Value {
        let t = &self.tracing;
        json!({
            "otlp_endpoint": t.otlp_endpoint.as_ref().map(ToString::to_string),
            "service_name": t.service_name,
            "sample_ratio": t.sample_ratio,
            "export_timeout": d(t.export_timeout),
        })
    }
}

fn corp_json(c: &CorpConfig) -> Value {
    json!({
        "base_url": match &c.base_url { BaseUrl::Sandbox => "sandbox".to_string(), BaseUrl::Url(u) => u.clone() },
        "app_id": c.app_id,
        "app_secret": "****",
        "permanent_code": "****",
        "refresh_at": c.refresh_at,
        "upstream_requests_per_20s": c.upstream_requests_per_20s,
        "daily_call_budget": c.daily_call_budget,
        "upstream_timeout": d(c.upstream_timeout),
        "connect_timeout": d(c.connect_timeout),
        "ca_file": c.ca_file.as_ref().map(|r| r.path.display().to_string()),
        "file_service_user": c.files.user,
        "file_upload_hosts": c.files.hosts,
    })
}

fn client_json(c: &ClientConfig) -> Value {
    json!({
        "name": c.name,
        "keys": c.keys.iter().map(|k| json!({
            "sha256": hex::encode(k.sha256),
            "not_after": super::not_after_text(k.not_after_ms),
        })).collect::<Vec<_>>(),
        "cert_subject": c.cert_subject,
        "corp": c.corp,
        "requests_per_minute": c.requests_per_minute,
        "bytes_per_day": c.bytes_per_day,
        "max_concurrent_uploads": c.max_concurrent_uploads,
        "max_file_bytes": c.max_file_bytes,
        "routes": c.routes.as_ref().map(|r| r.iter().map(RoutePattern::to_config).collect::<Vec<_>>()),
        "api_style": c.api_style.label(),
        "act_as": c.act_as,
    })
}
