//! `UploadRequest`: everything the upload route learns from a request's head, parsed once
//! (design §4 steps 2–4): which upload it is, the caller and its corp, the file limit in force,
//! the body form, a claimed digest, and the byte reservation the quota layer made. The steps of
//! the lifecycle read it instead of the headers.

use std::sync::Arc;

use http::{header, HeaderMap, Request, Uri};
use hyper::body::Incoming;

use super::digest;
use super::source::{BodyCap, FileSource};
use crate::config::UploadConfig;
use crate::dedupe::{DedupeKey, LeaderGuard};
use crate::error::GatewayError;
use crate::middleware::auth::Principal;
use crate::middleware::request_id::RequestId;
use crate::quota::BytesTicket;
use crate::route::{query_param, Route};
use crate::sniff::{self, ImageType};
use crate::state::AppState;
use crate::upstream::Corp;

pub use crate::config::MULTIPART_FRAMING_ALLOWANCE;

/// The upload routes, refined by `?type=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UploadKind {
    /// `POST /media/upload/message`
    Message,
    /// `POST /media/upload?type=image`
    Image,
    /// `POST /media/upload?type=document`
    Document,
    /// `POST /media/upload/file` (`resourceType=N`): a permanent npath.
    File,
    /// `POST /media/upload/file?resourceType=TN`: a temporary npath (3 days upstream).
    FileTemp,
}

impl UploadKind {
    /// The kind of an upload to `route`.
    pub fn of(route: Route, uri: &Uri) -> Result<Self, GatewayError> {
        match route {
            Route::UploadMessage => Ok(Self::Message),
            // Only this route reads the query here (message uploads may carry long ones).
            Route::Upload => match query_param(uri, "type").as_deref() {
                Some("image") => Ok(Self::Image),
                Some("document") => Ok(Self::Document),
                _ => Err(GatewayError::BadRequest {
                    detail: "query parameter `type` must be `image` or `document`".into(),
                }),
            },
            Route::UploadFile => match query_param(uri, "resourceType").as_deref() {
                None | Some("N") => Ok(Self::File),
                Some("TN") => Ok(Self::FileTemp),
                _ => Err(GatewayError::BadRequest {
                    detail: "query parameter `resourceType` must be `N` or `TN`".into(),
                }),
            },
            other => Err(GatewayError::Internal {
                detail: format!("{other} routed to the upload handler"),
            }),
        }
    }

    /// The route, at fxgate and at Fxiaoke.
    pub fn route(self) -> Route {
        match self {
            Self::Message => Route::UploadMessage,
            Self::Image | Self::Document => Route::Upload,
            Self::File | Self::FileTemp => Route::UploadFile,
        }
    }

    /// The route's name in dedupe keys.
    pub fn label(self) -> &'static str {
        match self {
            Self::Message => "message",
            Self::Image => "image",
            Self::Document => "document",
            Self::File => "file:N",
            Self::FileTemp => "file:TN",
        }
    }

    /// The `type` query parameter Fxiaoke expects, if any.
    pub fn type_param(self) -> Option<&'static str> {
        match self {
            Self::Message => None,
            Self::Image => Some("image"),
            Self::Document => Some("document"),
            Self::File | Self::FileTemp => None,
        }
    }

    /// The route's file limit.
    pub fn limit(self, cfg: &UploadConfig) -> u64 {
        match self {
            Self::Message | Self::Image => cfg.message_max_bytes,
            Self::Document => cfg.document_max_bytes,
            Self::File | Self::FileTemp => cfg.file_max_bytes,
        }
    }
}

/// One upload, as its head describes it.
#[derive(Debug)]
pub struct UploadRequest {
    /// Which upload.
    pub kind: UploadKind,
    /// The caller's corp.
    pub corp: Arc<Corp>,
    /// The caller's name.
    pub caller: String,
    /// The file limit in force: the route's, or the caller's own if lower.
    pub limit: u64,
    /// `Content-Length`, when sent.
    pub announced: Option<u64>,
    /// The digest the caller claims for the file (RFC 9530 or `X-Content-SHA256`).
    pub claim: Option<[u8; 32]>,
    /// Today's bytes this upload reserved (`reserve_bytes`); dropped unsettled (failure,
    /// dedupe hit) it refunds.
    pub ticket: Option<BytesTicket>,
    /// When this upload leads a coalesced claim: the requests waiting for its mediaId.
    pub leader: Option<LeaderGuard>,
    /// The request id, for answers shaped like Fxiaoke's.
    pub request_id: String,
    content_type: Option<String>,
    boundary: Option<String>,
    filename_param: Option<String>,
}

/// The file's part as it goes upstream.
#[derive(Debug, Clone)]
pub struct Part {
    /// Filename (sanitised).
    pub filename: String,
    /// Content type: declared, else sniffed, else octet-stream.
    pub content_type: String,
}

impl UploadRequest {
    /// Parses the head of an upload to `route` by `principal`.
    pub fn parse(
        state: &AppState,
        req: &Request<Incoming>,
        route: Route,
        principal: &Principal,
    ) -> Result<Self, GatewayError> {
        let kind = UploadKind::of(route, req.uri())?;
        let corp = state.corp(&principal.client.corp)?;
        let document = kind == UploadKind::Document;
        let content_type = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        Ok(Self {
            kind,
            corp,
            caller: principal.client.name.clone(),
            limit: state
                .upload
                .load()
                .file_limit(route, document, &principal.client),
            announced: content_length(req.headers()),
            boundary: boundary(content_type.as_deref())?,
            content_type,
            filename_param: query_param(req.uri(), "filename")
                .map(|f| sanitize_filename(&f))
                .filter(|f| !f.is_empty()),
            claim: digest::claimed(req.headers())?,
            ticket: None,
            leader: None,
            request_id: req
                .extensions()
                .get::<RequestId>()
                .map(|r| r.0.to_string())
                .unwrap_or_default(),
        })
    }

    /// The upload's size and byte policy, before the body is touched: one 413 decision, then
    /// today's bytes reserved by `Content-Length` (a chunked body reserves as it flows). In
    /// this order, so a request that can never succeed is not told 429 "retry tomorrow" by a
    /// caller near its byte quota.
    pub async fn admit(
        &mut self,
        quotas: &crate::quota::Quotas,
        client: &std::sync::Arc<crate::config::ClientConfig>,
    ) -> Result<(), GatewayError> {
        self.refuse_oversized()?;
        self.ticket = Some(quotas.bytes_ticket(client, self.announced).await?);
        Ok(())
    }

    /// Refuses a `Content-Length` over the limit before the body is touched: with
    /// `Expect: 100-continue` the caller never sends it.
    fn refuse_oversized(&self) -> Result<(), GatewayError> {
        let Some(n) = self.announced else {
            return Ok(());
        };
        if crate::config::announced_too_large(n, self.limit, self.boundary.is_some()) {
            return Err(self.too_large(n));
        }
        Ok(())
    }

    /// The 413 for `seen` bytes.
    pub fn too_large(&self, seen: u64) -> GatewayError {
        GatewayError::PayloadTooLarge {
            seen,
            limit: self.limit,
            route: self.kind.route().path(),
        }
    }

    /// The index key a claimed digest is looked up under, before the body is read. A
    /// document's key includes its filename, known up front only from `?filename=`.
    pub fn claim_key(&self) -> Option<DedupeKey> {
        let sha256 = self.claim?;
        let filename = match self.kind {
            UploadKind::Document => Some(self.filename_param.clone()?),
            UploadKind::File | UploadKind::FileTemp => {
                Some(extension(self.filename_param.as_deref()?)?)
            }
            _ => None,
        };
        Some(self.key_with(sha256, filename))
    }

    /// The index key of the file fxgate hashed, sent as `part`. A File Service npath is keyed
    /// by the extension (design §10): Fxiaoke's new npaths carry it.
    pub fn key(&self, sha256: [u8; 32], part: &Part) -> DedupeKey {
        let filename = match self.kind {
            UploadKind::Document => Some(part.filename.clone()),
            UploadKind::File | UploadKind::FileTemp => extension(&part.filename),
            _ => None,
        };
        self.key_with(sha256, filename)
    }

    fn key_with(&self, sha256: [u8; 32], filename: Option<String>) -> DedupeKey {
        DedupeKey {
            corp: self.corp.cfg.name.clone(),
            route: self.kind.label(),
            sha256,
            filename,
        }
    }

    /// A claimed digest must match the bytes that came (940002 otherwise; nothing recorded).
    pub fn check_claim(&self, computed: [u8; 32]) -> Result<(), GatewayError> {
        use base64::Engine as _;
        match self.claim {
            Some(c) if c != computed => Err(GatewayError::DigestMismatch {
                computed: base64::engine::general_purpose::STANDARD.encode(computed),
            }),
            _ => Ok(()),
        }
    }

    /// The file inside `body`, in whichever form the caller sent it.
    pub async fn open_file(&self, body: Incoming) -> Result<FileSource, GatewayError> {
        match &self.boundary {
            Some(b) => {
                let cap = BodyCap::new(
                    self.limit,
                    MULTIPART_FRAMING_ALLOWANCE,
                    self.kind.route().path(),
                );
                // The File Service takes its own part name too, and signs the size up front.
                let (names, announced): (&'static [&'static str], _) = match self.kind {
                    UploadKind::File | UploadKind::FileTemp => {
                        (&["media", "facishareFile"], self.announced)
                    }
                    _ => (&["media"], None),
                };
                FileSource::multipart(body, b.clone(), cap, names, announced).await
            }
            None if self.announced == Some(0) => Err(GatewayError::BadRequest {
                detail: "empty body; send the file as the body or as part `media`".into(),
            }),
            None => Ok(FileSource::raw(
                body,
                self.filename_param.clone(),
                self.content_type.clone(),
                self.announced,
            )),
        }
    }

    /// The part to send upstream: the caller's filename and type where it gave them.
    /// `?filename=` comes first: a document's claim is keyed by it before the part is seen,
    /// so the file must go (and be recorded) under that name.
    pub fn part(&self, file: &FileSource, sniffed: Option<ImageType>) -> Part {
        let filename = self
            .filename_param
            .clone()
            .filter(|f| !f.is_empty())
            .or_else(|| {
                file.filename
                    .as_deref()
                    .map(sanitize_filename)
                    .filter(|f| !f.is_empty())
            })
            .unwrap_or_else(|| sniff::default_filename(sniffed).to_string());
        let content_type = match (&file.content_type, sniffed) {
            (Some(ct), _) if !ct.is_empty() => ct.clone(),
            (_, Some(t)) => t.mime().to_string(),
            _ => "application/octet-stream".to_string(),
        };
        Part {
            filename,
            content_type,
        }
    }
}

/// A filename's extension, lower case, without the dot (`None` without one).
pub fn extension(filename: &str) -> Option<String> {
    let (stem, ext) = filename.rsplit_once('.')?;
    let ok = !stem.is_empty() && !ext.is_empty() && ext.len() <= 16;
    let ok = ok && ext.chars().all(|c| c.is_ascii_alphanumeric());
    ok.then(|| ext.to_ascii_lowercase())
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// The multipart boundary, when the body is multipart.
fn boundary(content_type: Option<&str>) -> Result<Option<String>, GatewayError> {
    content_type
        .filter(|ct| {
            ct.trim_start()
                .to_ascii_lowercase()
                .starts_with("multipart/")
        })
        .map(|ct| {
            multer::parse_boundary(ct).map_err(|_| GatewayError::MalformedBody {
                detail: "multipart Content-Type without a boundary".into(),
            })
        })
        .transpose()
}

/// A filename safe inside `filename="..."`: no quotes, no line breaks, no path.
fn sanitize_filename(name: &str) -> String {
    let base = name.rsplit(['/', '\\']).next().unwrap_or(name);
    let clean: String = base
        .chars()
        .filter(|c| !c.is_control())
        .map(|c| if c == '"' { '\'' } else { c })
        .collect();
    clean.chars().take(200).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filenames_lose_paths_quotes_and_control_characters() {
        assert_eq!(sanitize_filename("../../etc/pa\"ss\r\nwd"), "pa'sswd");
        assert_eq!(sanitize_filename("C:\\x\\y.png"), "y.png");
        assert_eq!(sanitize_filename(&"a".repeat(300)).len(), 200);
    }

    #[test]
    fn the_kind_comes_from_the_route_and_type() {
        let uri: Uri = "/media/upload?type=document".parse().unwrap();
        assert_eq!(
            UploadKind::of(Route::Upload, &uri).unwrap(),
            UploadKind::Document
        );
        let bare: Uri = "/media/upload".parse().unwrap();
        assert!(UploadKind::of(Route::Upload, &bare).is_err());
        assert_eq!(
            UploadKind::of(Route::UploadMessage, &bare).unwrap(),
            UploadKind::Message
        );
        assert_eq!(UploadKind::Image.route(), Route::Upload);
    }
}
