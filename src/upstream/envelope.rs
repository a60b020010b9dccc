//! Fxiaoke's answers: HTTP 200 says nothing, the JSON `errorCode` says everything
//! (fxiaoke.md §2). This module reads an answer once, boundedly, and classifies its code into
//! `UpstreamCode`, the one place fxgate decides what a Fxiaoke code means.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use crate::error::GatewayError;

/// Largest JSON answer fxgate reads into memory (Fxiaoke's envelopes are a few hundred bytes).
pub const MAX_ENVELOPE_BYTES: usize = 1024 * 1024;

/// The codes fxiaoke.md §2 lists, each its own `error_code` label value (alerts tell token,
/// throttle, quota and server trouble from callers' own business errors by them).
const KNOWN_CODES: [(i64, &str); 25] = [
    (0, "0"),
    (-1, "-1"),
    (-2, "-2"),
    (10002, "10002"),
    (10006, "10006"),
    (10013, "10013"),
    (11002, "11002"),
    (11003, "11003"),
    (11014, "11014"),
    (14001, "14001"),
    (15003, "15003"),
    (20005, "20005"),
    (20006, "20006"),
    (20014, "20014"),
    (20015, "20015"),
    (20016, "20016"),
    (20017, "20017"),
    (20020, "20020"),
    (20021, "20021"),
    (20022, "20022"),
    (20023, "20023"),
    (30002, "30002"),
    (30003, "30003"),
    (30004, "30004"),
    (50009, "50009"),
];

/// What an answer's `errorCode` means to fxgate (fxiaoke.md §2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamCode {
    /// `0`.
    Success,
    /// `20016`: the corp token is missing or expired: invalidate, refresh once.
    TokenExpired,
    /// `14001`: the per-interface limit (100 calls / 20 s).
    InterfaceLimit,
    /// `30004`: the per-second frequency limit.
    FrequencyLimit,
    /// Any other code: passed through to the caller.
    Other(i64),
    /// No `errorCode` at all (not an envelope, or a download's file).
    Missing,
}

impl UpstreamCode {
    /// Classifies an `errorCode`.
    pub fn of(code: Option<i64>) -> Self {
        match code {
            None => Self::Missing,
            Some(0) => Self::Success,
            Some(20016) => Self::TokenExpired,
            Some(14001) => Self::InterfaceLimit,
            Some(30004) => Self::FrequencyLimit,
            Some(c) => Self::Other(c),
        }
    }

    /// The numeric code, when there was one.
    pub fn code(self) -> Option<i64> {
        match self {
            Self::Success => Some(0),
            Self::TokenExpired => Some(20016),
            Self::InterfaceLimit => Some(14001),
            Self::FrequencyLimit => Some(30004),
            Self::Other(c) => Some(c),
            Self::Missing => None,
        }
    }

    /// The `error_code` label of `fxgate_upstream_requests_total`: Fxiaoke's code when it is
    /// one fxiaoke.md §2 lists, `other` for any other (a code is whatever integer an answer
    /// holds, and each new value would be a new series for good), `none` without one.
    pub fn label(self) -> &'static str {
        match self.code() {
            None => "none",
            Some(c) => KNOWN_CODES
                .iter()
                .find(|(code, _)| *code == c)
                .map_or("other", |(_, label)| label),
        }
    }

    /// Fxiaoke rate-limited the corp: a 429 for the caller instead of an HTTP 200 passed on.
    pub fn throttled(self) -> Option<GatewayError> {
        let retry_after = match self {
            Self::InterfaceLimit => Duration::from_secs(20),
            Self::FrequencyLimit => Duration::from_secs(1),
            _ => return None,
        };
        Some(GatewayError::UpstreamBudget {
            retry_after,
            daily: false,
            upstream_code: self.code(),
        })
    }
}

/// An answer read far enough to decide on it.
#[derive(Debug)]
pub enum Read {
    /// Whole, within `MAX_ENVELOPE_BYTES`.
    Whole(Envelope),
    /// Larger: what was read, and the rest still to come. No token or rate-limit envelope is
    /// this large, so such an answer is only ever passed on.
    Large {
        /// The first bytes (over `MAX_ENVELOPE_BYTES`).
        head: Bytes,
        /// The rest of the body.
        rest: Incoming,
    },
}

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
        Ok(Self::from_bytes(raw))
    }

    /// Reads an answer whole when it fits in `MAX_ENVELOPE_BYTES`; a larger one is handed
    /// back with its first bytes, to be passed on as it comes.
    pub async fn read_or_large(mut body: Incoming) -> Result<Read, GatewayError> {
        let mut buf = BytesMut::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| GatewayError::UpstreamInvalid {
                detail: format!("reading the answer failed: {e}"),
            })?;
            if let Ok(data) = frame.into_data() {
                buf.extend_from_slice(&data);
                if buf.len() > MAX_ENVELOPE_BYTES {
                    return Ok(Read::Large {
                        head: buf.freeze(),
                        rest: body,
                    });
                }
            }
        }
        Ok(Read::Whole(Self::from_bytes(buf.freeze())))
    }

    /// The `errorCode` a large answer's first bytes carry (for the metric only: nothing is
    /// decided on an answer this large).
    pub fn leading_code(head: &[u8]) -> UpstreamCode {
        let key = b"\"errorCode\"";
        let Some(at) = head.windows(key.len()).position(|w| w == key) else {
            return UpstreamCode::Missing;
        };
        let rest = &head[at + key.len()..];
        let rest = rest.trim_ascii_start().strip_prefix(b":").unwrap_or(b"");
        let rest = rest.trim_ascii_start();
        let len = rest
            .iter()
            .enumerate()
            .take_while(|(i, b)| b.is_ascii_digit() || (*i == 0 && **b == b'-'))
            .count();
        let code = std::str::from_utf8(&rest[..len])
            .ok()
            .and_then(|s| s.parse().ok());
        UpstreamCode::of(code)
    }

    /// An answer already read whole.
    pub fn from_bytes(raw: Bytes) -> Self {
        let json = match serde_json::from_slice::<serde_json::Value>(&raw) {
            Ok(serde_json::Value::Object(map)) => Some(map),
            _ => None,
        };
        Self { raw, json }
    }

    /// `errorCode`, when present.
    pub fn error_code(&self) -> Option<i64> {
        self.json.as_ref()?.get("errorCode")?.as_i64()
    }

    /// `errorCode`, classified.
    pub fn code(&self) -> UpstreamCode {
        UpstreamCode::of(self.error_code())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_only_rate_limits_throttle() {
        for c in [0, 20016, 14001, 30004, -1, 10006] {
            assert_eq!(UpstreamCode::of(Some(c)).code(), Some(c));
        }
        assert_eq!(UpstreamCode::of(None).label(), "none");
        assert_eq!(UpstreamCode::of(Some(20016)).label(), "20016");
        assert_eq!(UpstreamCode::of(Some(-2)).label(), "-2");
        // Any integer an answer holds would otherwise be a series for good.
        assert_eq!(UpstreamCode::of(Some(987_654_321)).label(), "other");
        assert!(UpstreamCode::InterfaceLimit.throttled().is_some());
        assert!(UpstreamCode::FrequencyLimit.throttled().is_some());
        assert!(UpstreamCode::TokenExpired.throttled().is_none());
    }

    #[test]
    fn a_large_answers_code_is_read_from_its_first_bytes() {
        let code = |s: &str| Envelope::leading_code(s.as_bytes());
        assert_eq!(
            code(r#"{"errorCode" : 0,"data":[]}"#),
            UpstreamCode::Success
        );
        assert_eq!(code(r#"{"a":1,"errorCode":-1}"#), UpstreamCode::Other(-1));
        assert_eq!(code(r#"{"data":[]}"#), UpstreamCode::Missing);
        assert_eq!(code(r#"{"errorCode":"#), UpstreamCode::Missing);
    }
}
