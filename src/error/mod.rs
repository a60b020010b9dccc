//! `GatewayError`: every failure fxgate itself raises, classified by fault, and the one place
//! where such an error becomes an HTTP response in Fxiaoke's envelope.
//!
//! Codes are six digits: `9`, then the HTTP status, then a serial (design §3). The error table
//! in docs/api.md lists the same variants, so keep them in step.

use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};

use crate::body::{full, Body, ReadError};

/// Who is at fault, which decides the log level and whether a retry can help.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorSource {
    /// The caller sent something we refuse; retrying the same request fails again.
    Client,
    /// Fxiaoke (or the network to it) failed; a later retry may succeed.
    Upstream,
    /// A bug or a local resource problem.
    Internal,
}

/// Every error fxgate raises on its own account (upstream answers pass through instead).
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The multipart framing or the request form is unusable.
    #[error("malformed request body")]
    MalformedBody {
        /// What exactly is wrong, safe to show the caller.
        detail: String,
    },
    /// A query parameter or header is missing or invalid.
    #[error("bad request")]
    BadRequest {
        /// What exactly is wrong, safe to show the caller.
        detail: String,
    },
    /// The caller's claimed digest does not match the bytes it sent.
    #[error("digest mismatch")]
    DigestMismatch {
        /// The digest fxgate computed, base64.
        computed: String,
    },
    /// The request path is not the one spelling fxgate accepts (design §9, Boundaries):
    /// refused before authentication or any upstream call.
    #[error("path not canonical")]
    PathNotCanonical {
        /// Which rule it breaks.
        reason: &'static str,
    },
    /// No caller key, or one that matches no configured caller.
    #[error("unknown or missing caller key")]
    Unauthenticated,
    /// An `fxg_` token presented to a token endpoint: only a key or a certificate mints one
    /// (design §9), so a leaked token cannot renew itself.
    #[error("a token cannot mint a token")]
    TokenCannotMint,
    /// A configured caller key past its `not_after` (rotated out).
    #[error("expired caller key")]
    KeyExpired,
    /// An `fxg_` token fxgate does not know (never issued, expired, or its caller removed):
    /// answered in Fxiaoke's own shape, HTTP 200 and `errorCode` 20016, so an SDK's usual
    /// refresh logic fetches a new one.
    #[error("corpAccessToken missing or expired")]
    TokenUnknown,
    /// The caller may not use this route.
    #[error("route not allowed for caller")]
    RouteForbidden {
        /// The caller's configured name.
        client: String,
    },
    /// The caller may not act as the user its call names (`act_as`).
    #[error("user not allowed for caller")]
    UserForbidden {
        /// The caller's configured name.
        client: String,
        /// The user it asked for.
        user: String,
    },
    /// No such route.
    #[error("no such route")]
    NotFound,
    /// The route exists but not for this method.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// The body (or the file inside it) is larger than the route allows.
    #[error("{}", if is_upload_label(route) { "file too large" } else { "request body too large" })]
    PayloadTooLarge {
        /// How much was seen (or announced) when the limit was crossed.
        seen: u64,
        /// The limit in force.
        limit: u64,
        /// The route whose limit it is.
        route: &'static str,
    },
    /// An upload whose size must be known up front (the File Service signs it) came without
    /// `Content-Length`.
    #[error("length required")]
    LengthRequired,
    /// A File Service upload needs a Fxiaoke user to ask as, and the caller has none (an
    /// OAuth-style caller's `act_as`, or the corp's `file_service_user`).
    #[error("no file service user")]
    NoFileUser {
        /// The caller's configured name.
        client: String,
    },
    /// Fxiaoke's File Service refused the file (step 1's non-zero `errorCode`, or step 2's
    /// `success:false`): nothing recorded, the reserved bytes refunded.
    #[error("file service refused the upload")]
    FileServiceRefused {
        /// Which step: 1 (the credential) or 2 (the upload).
        step: u8,
        /// Fxiaoke's code.
        code: String,
        /// Fxiaoke's message.
        message: String,
    },
    /// Step 1 named an upload URL fxgate does not send files to (not https, or a host outside
    /// `file_upload_hosts` and the corp's own origin): no byte went there.
    #[error("upload host refused")]
    UploadHostRefused {
        /// The host it named.
        host: String,
    },
    /// The file's first bytes are not one of the allowed types.
    #[error("file type not allowed")]
    UnsupportedType {
        /// What the first bytes look like.
        detected: &'static str,
    },
    /// The caller exceeded one of its quotas.
    #[error("caller quota exceeded")]
    QuotaExceeded {
        /// Which quota.
        kind: &'static str,
        /// When a retry may pass.
        retry_after: Duration,
    },
    /// The shared quota store (Redis) is down and `quota_fail_mode = "closed"`.
    #[error("quota store unavailable")]
    QuotaStoreDown,
    /// The corp's upstream budget is spent, or Fxiaoke itself rate-limited the corp.
    #[error("corp upstream budget exhausted")]
    UpstreamBudget {
        /// When a retry may pass.
        retry_after: Duration,
        /// The daily call budget (rather than the 20 s window) is spent.
        daily: bool,
        /// Fxiaoke's own rate-limit code (14001, 30004), when it said so.
        upstream_code: Option<i64>,
    },
    /// Fxiaoke could not be reached.
    #[error("upstream unreachable")]
    UpstreamUnreachable {
        /// The transport error, already free of URLs that could hold a token.
        #[source]
        source: crate::body::BoxError,
    },
    /// Fxiaoke answered something that is not its envelope.
    #[error("upstream answered an unreadable response")]
    UpstreamInvalid {
        /// What was wrong with it.
        detail: String,
    },
    /// No valid corp access token could be obtained.
    #[error("no valid corp access token")]
    NoToken {
        /// The corp whose token is missing.
        corp: String,
    },
    /// Fxiaoke rejected the token (20016); it was invalidated and a refresh started.
    #[error("upstream rejected the corp token; refreshed, retry")]
    TokenRejected,
    /// Fxiaoke did not answer in time.
    #[error("upstream timeout")]
    UpstreamTimeout {
        /// The deadline that passed.
        after: Duration,
    },
    /// `server.max_inflight` requests are in flight: shed rather than queued.
    #[error("gateway overloaded")]
    Overloaded,
    /// The caller stopped sending (or hung up) mid-body.
    #[error("request body interrupted")]
    BodyInterrupted,
    /// A bug: logged with detail, answered generically.
    #[error("internal error")]
    Internal {
        /// Logged, never shown to the caller.
        detail: String,
    },
}

impl From<ReadError> for GatewayError {
    fn from(e: ReadError) -> Self {
        match e {
            ReadError::Interrupted => GatewayError::BodyInterrupted,
            ReadError::Refused => GatewayError::Overloaded,
            ReadError::TooLarge { seen, limit, route } => {
                GatewayError::PayloadTooLarge { seen, limit, route }
            }
        }
    }
}

impl GatewayError {
    /// The HTTP status and fxgate error code of this error.
    pub fn status_and_code(&self) -> (StatusCode, u32) {
        use GatewayError::*;
        match self {
            MalformedBody { .. } => (StatusCode::BAD_REQUEST, 940001),
            DigestMismatch { .. } => (StatusCode::BAD_REQUEST, 940002),
            BadRequest { .. } => (StatusCode::BAD_REQUEST, 940003),
            PathNotCanonical { .. } => (StatusCode::BAD_REQUEST, 940004),
            BodyInterrupted => (StatusCode::BAD_REQUEST, 940005),
            LengthRequired => (StatusCode::LENGTH_REQUIRED, 941101),
            NoFileUser { .. } => (StatusCode::FORBIDDEN, 940303),
            FileServiceRefused { .. } => (StatusCode::BAD_GATEWAY, 950204),
            UploadHostRefused { .. } => (StatusCode::BAD_GATEWAY, 950205),
            Unauthenticated | KeyExpired | TokenCannotMint => (StatusCode::UNAUTHORIZED, 940101),
            TokenUnknown => (StatusCode::OK, 20016),
            RouteForbidden { .. } => (StatusCode::FORBIDDEN, 940301),
            UserForbidden { .. } => (StatusCode::FORBIDDEN, 940302),
            NotFound => (StatusCode::NOT_FOUND, 940401),
            MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, 940501),
            PayloadTooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, 941301),
            UnsupportedType { .. } => (StatusCode::UNSUPPORTED_MEDIA_TYPE, 941501),
            QuotaExceeded { .. } => (StatusCode::TOO_MANY_REQUESTS, 942901),
            UpstreamBudget { .. } => (StatusCode::TOO_MANY_REQUESTS, 942902),
            QuotaStoreDown => (StatusCode::TOO_MANY_REQUESTS, 942903),
            Internal { .. } => (StatusCode::INTERNAL_SERVER_ERROR, 950001),
            UpstreamUnreachable { .. } => (StatusCode::BAD_GATEWAY, 950201),
            UpstreamInvalid { .. } => (StatusCode::BAD_GATEWAY, 950202),
            NoToken { .. } => (StatusCode::SERVICE_UNAVAILABLE, 950301),
            TokenRejected => (StatusCode::SERVICE_UNAVAILABLE, 950302),
            Overloaded => (StatusCode::SERVICE_UNAVAILABLE, 950303),
            UpstreamTimeout { .. } => (StatusCode::GATEWAY_TIMEOUT, 950401),
        }
    }

    /// Who is at fault.
    pub fn source_kind(&self) -> ErrorSource {
        use GatewayError::*;
        match self {
            MalformedBody { .. }
            | DigestMismatch { .. }
            | BadRequest { .. }
            | BodyInterrupted
            | LengthRequired
            | NoFileUser { .. }
            | PathNotCanonical { .. }
            | Unauthenticated
            | KeyExpired
            | TokenCannotMint
            | TokenUnknown
            | RouteForbidden { .. }
            | UserForbidden { .. }
            | NotFound
            | MethodNotAllowed
            | PayloadTooLarge { .. }
            | UnsupportedType { .. }
            | QuotaExceeded { .. } => ErrorSource::Client,
            UpstreamBudget { .. }
            | UpstreamUnreachable { .. }
            | UpstreamInvalid { .. }
            | NoToken { .. }
            | TokenRejected
            | FileServiceRefused { .. }
            | UploadHostRefused { .. }
            | UpstreamTimeout { .. } => ErrorSource::Upstream,
            Internal { .. } | QuotaStoreDown | Overloaded => ErrorSource::Internal,
        }
    }

    /// How long a caller should wait before retrying, when a retry can help.
    pub fn retry_after(&self) -> Option<Duration> {
        use GatewayError::*;
        match self {
            QuotaExceeded { retry_after, .. } | UpstreamBudget { retry_after, .. } => {
                Some(*retry_after)
            }
            TokenRejected | NoToken { .. } | QuotaStoreDown | Overloaded => {
                Some(Duration::from_secs(1))
            }
            _ => None,
        }
    }

    /// The `errorDescription`: specific, but never internal detail or a secret.
    pub fn description(&self) -> String {
        use GatewayError::*;
        match self {
            MalformedBody { detail } | BadRequest { detail } => detail.clone(),
            DigestMismatch { computed } => {
                format!("the claimed digest does not match the file; computed sha-256=:{computed}:")
            }
            PathNotCanonical { reason } => format!(
                "{reason}; send the one canonical spelling of the path (segments of A-Z a-z 0-9 . _ ~ -, none empty, `.` or `..`)"
            ),
            KeyExpired => "this gateway key has passed its `not_after` (it was rotated out); use the caller's current key".into(),
            Unauthenticated => {
                "send a gateway key as `Authorization: Bearer <key>` or `X-Api-Key: <key>`".into()
            }
            TokenCannotMint => "an fxg_ token cannot mint another; fetch one with the caller's gateway key (`appId` = caller name, `appSecret` = key) or its client certificate".into(),
            TokenUnknown => "the token is unknown or expired; fetch a new one from /cgi/corpAccessToken/get/V2 or /oauth2.0/token".into(),
            RouteForbidden { client } => format!("caller `{client}` may not use this route"),
            UserForbidden { client, user } => format!(
                "caller `{client}` may not act as user `{}`; its `act_as` lists the users it may",
                echo(user)
            ),
            NotFound => "no such route; see docs/api.md for the routes fxgate serves".into(),
            MethodNotAllowed => "this route accepts POST only".into(),
            PayloadTooLarge { seen, limit, route } if is_upload_label(route) => {
                format!("media part is {seen} bytes; limit for {route} is {limit}")
            }
            PayloadTooLarge { seen, limit, route } => {
                format!("the request body is at least {seen} bytes; limit for {route} is {limit}")
            }
            UnsupportedType { detected } => format!(
                "the file's first bytes look like {detected}, which this route does not accept"
            ),
            QuotaExceeded { kind, retry_after } => {
                format!("{kind} quota exceeded; retry after {}s", ceil_secs(*retry_after))
            }
            UpstreamBudget { retry_after, daily, upstream_code } => {
                let what = match (upstream_code, daily) {
                    (Some(code), _) => format!("Fxiaoke rate-limited the corp (errorCode {code})"),
                    (None, true) => "the corp's daily Fxiaoke call budget is spent".to_string(),
                    (None, false) => "the corp's Fxiaoke calls per 20 s are used up".to_string(),
                };
                format!("{what}; retry after {}s", ceil_secs(*retry_after))
            }
            UpstreamUnreachable { .. } => "Fxiaoke could not be reached".into(),
            UpstreamInvalid { detail } => format!("Fxiaoke answered an unreadable response: {detail}"),
            NoToken { corp } => format!("no valid access token for corp `{corp}` could be obtained"),
            TokenRejected => {
                "Fxiaoke rejected the corp token (20016) and a new one was fetched; retry the upload"
                    .into()
            }
            UpstreamTimeout { after } => {
                format!("Fxiaoke did not answer within {}", humantime::format_duration(*after))
            }
            BodyInterrupted => "the request body ended early or could not be read".into(),
            LengthRequired | NoFileUser { .. } | FileServiceRefused { .. } | UploadHostRefused { .. } => {
                self.file_description()
            }
            QuotaStoreDown => {
                "the shared quota store is unavailable and quotas fail closed; retry after 1s"
                    .into()
            }
            Overloaded => {
                "fxgate is at its limit of requests in flight (server.max_inflight); retry after 1s"
                    .into()
            }
            Internal { .. } => "internal error".into(),
        }
    }

    /// The descriptions of the File Service's errors (design §10).
    fn file_description(&self) -> String {
        use GatewayError::*;
        match self {
            LengthRequired => "this route signs the file's size before it is sent: send `Content-Length`, or `Upload-Length` with a chunked body".into(),
            NoFileUser { client } => format!(
                "caller `{client}` has no Fxiaoke user for the File Service: an OAuth-style caller sends `X-Fs-Userid` or has `act_as`; otherwise set the corp's `file_service_user`"
            ),
            FileServiceRefused { step, code, message } => format!(
                "Fxiaoke's File Service refused step {step}: code {}, {}",
                echo(code),
                echo(message)
            ),
            UploadHostRefused { host } => format!(
                "Fxiaoke's step 1 named the upload host `{}`, which is not in the corp's `file_upload_hosts` (or not https); nothing was sent there",
                echo(host)
            ),
            _ => self.description(),
        }
    }

    /// The envelope response for this error, tagged with the request id.
    pub fn into_response(self, request_id: &str) -> Response<Body> {
        let (status, code) = self.status_and_code();
        let upload_limit = match &self {
            GatewayError::PayloadTooLarge { limit, route, .. } if is_upload_label(route) => {
                Some(*limit)
            }
            _ => None,
        };
        let envelope = serde_json::json!({
            "traceId": request_id,
            "errorCode": code,
            "errorMessage": self.to_string(),
            "errorDescription": self.description(),
        });
        let mut resp = Response::new(full(Bytes::from(envelope.to_string())));
        *resp.status_mut() = status;
        let headers = resp.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let Some(after) = self.retry_after() {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(ceil_secs(after)));
        }
        resp.extensions_mut().insert(ErrorCode(code));
        if let Some(limit) = upload_limit {
            // IETF resumable-upload draft: the largest upload this route takes.
            if let Ok(v) = HeaderValue::try_from(format!("max-size={limit}")) {
                resp.headers_mut().insert("upload-limit", v);
            }
        }
        resp
    }
}

/// Whether a route label is an upload's, whose body is a file.
fn is_upload_label(route: &str) -> bool {
    route.starts_with("/media/upload")
}

/// A caller-supplied value as quoted back in an error: at most 64 characters, so an answer
/// never grows with what the caller sent.
fn echo(value: &str) -> String {
    const MAX: usize = 64;
    match value.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{}…", &value[..cut]),
        None => value.to_string(),
    }
}

/// Whole seconds for `Retry-After`, rounded up and at least 1 (a client told "0" or "11" for
/// 11.9 s would come back too early).
fn ceil_secs(d: Duration) -> u64 {
    (d.as_secs() + u64::from(d.subsec_nanos() > 0)).max(1)
}

/// Marks a response that fxgate synthesized from a `GatewayError`, for the access log.
#[derive(Debug, Clone, Copy)]
pub struct ErrorCode(pub u32);

#[cfg(test)]
mod tests;
