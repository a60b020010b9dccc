//! Fxiaoke's File Service (design §10, fxiaoke.md §3), the two steps that give an npath for
//! up to 100 MB. Step 1 (`generatorFileUploadCredential`) is an ordinary call (`Corp::call`:
//! the corp's budget, the OAuth token, a token rejection checked and retried once) whose answer
//! signs one file of one size for one upload. Step 2 sends that file to the URL step 1 named,
//! with the signed headers verbatim, streamed, and never retried (the signature is single-use).
//! The URL is checked before anything is sent: https, and a host the corp allows, so an
//! upstream answer can never steer the file (or anything else) elsewhere.

use std::sync::Arc;

use futures_util::future::BoxFuture;
use futures_util::FutureExt as _;
use http::{header, HeaderMap, HeaderName, HeaderValue, Request, Response, Uri};
use hyper::body::Incoming;
use serde_json::Value;

use super::body::{channel_of, BodySender, DigestReceiver};
use super::call::{JsonCall, Reply, Report, Take};
use super::envelope::UpstreamCode;
use super::media::AbortOnDrop;
use super::token::{ApiStyle, CorpToken};
use super::transport::FILE_BURST;
use super::Corp;
use crate::body::{full, Body};
use crate::error::GatewayError;

/// Step 1's path (and its budget's interface and metric label).
pub const CREDENTIAL_PATH: &str = "/cgi/crm/v2/generatorFileUploadCredential";

/// Step 2's metric label (its URL is whatever step 1 names).
pub const UPLOAD_LABEL: &str = "file-service-upload";

/// The headers step 1 signs and step 2 must carry verbatim (fxiaoke.md §3).
const SIGNED: [&str; 8] = [
    "acid", "resource", "ak", "sign", "expiry", "filename", "size", "digest",
];

/// How long the signature lives: an upload of 100 MiB at 1 MiB/s fits.
const EXPIRE_SECS: u64 = 3600;

/// What step 1 asks to sign.
#[derive(Debug)]
pub struct FileAsk<'a> {
    /// The Fxiaoke user the call is made as (`x-fs-userid`).
    pub user: &'a str,
    /// `TN` (temporary) rather than `N`.
    pub temporary: bool,
    /// The file's name and extension.
    pub filename: &'a str,
    /// Its extension, without the dot.
    pub extension: &'a str,
    /// Its exact size.
    pub size: u64,
}

/// A signed upload: where to, with which headers, linked to step 1's trace.
#[derive(Debug)]
pub struct Credential {
    url: Uri,
    headers: HeaderMap,
    link: String,
}

impl Corp {
    /// Step 1: a signature for the file `ask` describes.
    pub async fn file_credential(
        &self,
        ask: &FileAsk<'_>,
        report: &dyn Report,
    ) -> Result<Credential, GatewayError> {
        let body = serde_json::json!({"data": {
            "resourceType": if ask.temporary { "TN" } else { "N" },
            "isStreamUpload": true,
            "filename": ask.filename,
            "extension": ask.extension,
            "fileSize": ask.size,
            "expireTime": EXPIRE_SECS,
        }})
        .to_string();
        let build = |token: &CorpToken, head: http::request::Builder| {
            oauth_request(head, token, ask.user, body.clone())
        };
        let call = JsonCall {
            path: CREDENTIAL_PATH,
            label: CREDENTIAL_PATH,
            style: ApiStyle::OAuth,
            token_in_query: false,
            take: Take::Json,
            build: &build,
        };
        let Reply::Json(answer) = self.call(&call, report).await? else {
            return Err(invalid("step 1 answered something other than JSON"));
        };
        if answer.code != UpstreamCode::Success {
            return Err(GatewayError::FileServiceRefused {
                step: 1,
                code: answer.code.code().map_or("none".into(), |c| c.to_string()),
                message: answer.env.str_field("errorMessage").unwrap_or("").into(),
            });
        }
        let data = answer
            .env
            .json
            .as_ref()
            .and_then(|j| j.get("data"))
            .and_then(Value::as_object)
            .ok_or_else(|| invalid("step 1's answer has no `data`"))?;
        let text = |k: &str| match data.get(k) {
            Some(Value::String(s)) => Some(s.clone()),
            Some(Value::Number(n)) => Some(n.to_string()),
            _ => None,
        };
        let url: Uri = text("url")
            .and_then(|u| u.parse().ok())
            .ok_or_else(|| invalid("step 1's `data.url` is not a URL"))?;
        self.check_upload_url(&url)?;
        let mut headers = HeaderMap::new();
        for name in SIGNED {
            let value =
                text(name).ok_or_else(|| invalid("step 1's answer lacks a signed field"))?;
            let value = HeaderValue::try_from(value)
                .map_err(|_| invalid("a signed field is not a header value"))?;
            headers.insert(HeaderName::from_static(name), value);
        }
        let content_type = text("contentType").unwrap_or_else(|| "application/octet-stream".into());
        let content_type = HeaderValue::try_from(content_type)
            .map_err(|_| invalid("`contentType` is not a header value"))?;
        headers.insert(header::CONTENT_TYPE, content_type);
        Ok(Credential {
            url,
            headers,
            link: answer.env.trace_id().unwrap_or_default(),
        })
    }

    /// The upload URL's scheme and host (design §10): https (http only when the corp's own
    /// `base_url` is http, as the sandbox is), to a host in `file_upload_hosts` or the corp's
    /// own origin.
    fn check_upload_url(&self, url: &Uri) -> Result<(), GatewayError> {
        let base: Option<Uri> = self.base.parse().ok();
        let base = base.as_ref();
        let origin = |u: &Uri| {
            (
                u.scheme_str().map(str::to_owned),
                u.host().map(str::to_ascii_lowercase),
                u.port_u16(),
            )
        };
        let same_origin = base.is_some_and(|b| origin(b) == origin(url));
        let scheme_ok = match url.scheme_str() {
            Some("https") => true,
            Some("http") => base.is_some_and(|b| b.scheme_str() == Some("http")),
            _ => false,
        };
        let host = url.host().unwrap_or("");
        if scheme_ok && (same_origin || self.cfg.files.allows(host)) {
            return Ok(());
        }
        let shown = url.authority().map_or(host.to_string(), |a| a.to_string());
        tracing::warn!(corp = %self.cfg.name, host = %shown, "File Service upload URL refused");
        Err(GatewayError::UploadHostRefused { host: shown })
    }
}

fn invalid(detail: &str) -> GatewayError {
    GatewayError::UpstreamInvalid {
        detail: detail.into(),
    }
}

/// A call in the OAuth style, as step 1 needs it.
fn oauth_request(
    mut head: http::request::Builder,
    token: &CorpToken,
    user: &str,
    body: String,
) -> Result<Request<Body>, GatewayError> {
    let mut bearer = HeaderValue::try_from(format!("Bearer {}", token.access_token.expose()))
        .map_err(|_| invalid("the OAuth token is not a header value"))?;
    bearer.set_sensitive(true);
    head = head
        .header(header::CONTENT_TYPE, "application/json; charset=utf-8")
        .header(header::AUTHORIZATION, bearer)
        .header("x-fs-ea", &token.corp_id)
        .header("x-fs-userid", user);
    head.body(full(body)).map_err(|e| GatewayError::Internal {
        detail: format!("building step 1: {e}"),
    })
}

type AnswerFuture = BoxFuture<'static, Result<Response<Incoming>, GatewayError>>;

/// Step 2 under way; dropping it (or its sender) unfinished aborts the upload.
pub struct FilePending {
    corp: Arc<Corp>,
    answer: AnswerFuture,
}

impl std::fmt::Debug for FilePending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FilePending").finish_non_exhaustive()
    }
}

impl Credential {
    /// Step 2: opens the upload of `size` bytes to the signed URL, with a fresh `traceId` and
    /// step 1's as `linkId`. The caller feeds the file into the sender.
    pub fn stream(
        self,
        corp: &Arc<Corp>,
        size: u64,
    ) -> Result<(BodySender, DigestReceiver, FilePending, String), GatewayError> {
        let trace = uuid::Uuid::new_v4().to_string();
        let sep = if self.url.query().is_some() { '&' } else { '?' };
        let link: String = form_urlencoded::byte_serialize(self.link.as_bytes()).collect();
        let uri: Uri = format!("{}{sep}traceId={trace}&linkId={link}", self.url)
            .parse()
            .map_err(|_| invalid("the upload URL does not take a query"))?;
        let (tx, body, digest) = channel_of(Some(size), FILE_BURST);
        let mut req = Request::post(uri)
            .header(header::CONTENT_LENGTH, size)
            .body(Body::new(body))
            .map_err(|e| GatewayError::Internal {
                detail: format!("building step 2: {e}"),
            })?;
        req.headers_mut().extend(self.headers);
        let request = corp.client().files.request(req);
        let task = AbortOnDrop::spawn(async move { Ok(request.await?) });
        let pending = FilePending {
            corp: corp.clone(),
            answer: task.wait().boxed(),
        };
        Ok((tx, digest, pending, trace))
    }
}

impl FilePending {
    /// Step 2's answer, `{success, code, message, data}`: the npath, or fxgate's 502 / 950204
    /// with Fxiaoke's code and message. Its deadline runs from the last byte sent.
    pub async fn npath(self) -> Result<(String, std::time::Duration), GatewayError> {
        let resp = self.corp.timed(UPLOAD_LABEL, self.answer).await?;
        let answer = self.corp.read_answer(UPLOAD_LABEL, resp).await?;
        let json = answer.env.json.as_ref();
        let field = |k: &str| json.and_then(|j| j.get(k));
        let npath = field("data")
            .and_then(Value::as_str)
            .filter(|p| !p.is_empty());
        match (field("success"), npath) {
            (Some(Value::Bool(true)), Some(npath)) => Ok((npath.to_string(), answer.took)),
            (Some(Value::Bool(_)), _) => Err(GatewayError::FileServiceRefused {
                step: 2,
                code: field("code").map_or("none".into(), Value::to_string),
                message: field("message")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .into(),
            }),
            _ => Err(invalid("step 2 answered without `success`")),
        }
    }
}
