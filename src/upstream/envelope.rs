//! Fxiaoke's answers: HTTP 200 says nothing, the JSON `errorCode` says everything
//! (fxiaoke.md §2). This module reads an answer once, boundedly, and classifies it.

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Incoming;

use crate::error::GatewayError;

/// Largest JSON answer fxgate reads into memory (Fxiaoke's envelopes are a few hundred bytes).
pub const MAX_ENVELOPE_BYTES: usize = 1024 * 1024;

/// `errorCode` for a missing or expired corp token: invalidate, refresh once (fxiaoke.md §2).
pub const TOKEN_EXPIRED: i64 = 20016;

/// A JSON answer from Fxiaoke.
#[derive(Debug, Clone)]
pub struct Envelope {
    /// The raw bytes, passed through unchanged unless a field must be added.
    pub raw: Bytes,
    /// The parsed object, when it is one.
    pub json: Option<serde_json::Map<String, serde_json::Value>>,
}

impl Envelope {
    /// Reads a whole answer, at most `MAX_ENVELOPE_BYTES`.
    pub async fn read(body: Incoming) -> Result<Self, GatewayError> {
        let raw = http_body_util::Limited::new(body, MAX_ENVELOPE_BYTES)
            .collect()
            .await
            .map_err(|e| GatewayError::UpstreamInvalid {
                detail: format!("reading the answer failed: {e}"),
            })?
            .to_bytes();
        let json = match serde_json::from_slice::<serde_json::Value>(&raw) {
            Ok(serde_json::Value::Object(map)) => Some(map),
            _ => None,
        };
        Ok(Self { raw, json })
    }

    /// `errorCode`, when present.
    pub fn error_code(&self) -> Option<i64> {
        self.json.as_ref()?.get("errorCode")?.as_i64()
    }

    /// Fxiaoke's `traceId`, for the access log.
    pub fn trace_id(&self) -> Option<String> {
        Some(self.json.as_ref()?.get("traceId")?.as_str()?.to_owned())
    }

    /// A string field.
    pub fn str_field(&self, name: &str) -> Option<&str> {
        self.json.as_ref()?.get(name)?.as_str()
    }
}
