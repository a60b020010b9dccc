//! `FileSource`: the file inside a caller's request, as a stream of chunks, whatever the body
//! form: a `multipart/form-data` body with part `media` (Fxiaoke's own form), or a raw body
//! (`Content-Type: image/...`, `?filename=`). The multipart framing is parsed as it arrives
//! (`multipart::Multipart`, which slices the chunks hyper read); nothing but the current chunk
//! is held.

use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::BodyExt;
use hyper::body::Incoming;

use super::multipart::{Multipart, MultipartError, PartHead};
use crate::error::GatewayError;

/// Longest pause fxgate tolerates between two body chunks from a caller.
pub const BODY_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Limit on each non-file part that precedes or follows `media` (they are read and dropped).
const OTHER_PART_MAX: usize = 64 * 1024;

/// The file a caller sent.
pub struct FileSource {
    /// Filename to forward (sanitised for a multipart header).
    pub filename: Option<String>,
    /// Declared content type of the file.
    pub content_type: Option<String>,
    /// The file's exact length, when the body form tells it before the bytes arrive.
    pub exact_len: Option<u64>,
    inner: Inner,
}

type Parts = Multipart<http_body_util::BodyDataStream<Incoming>>;

enum Inner {
    Raw(http_body_util::BodyDataStream<Incoming>),
    /// The parts, and whether `media`'s data is still being read.
    Multipart(Box<Parts>, bool),
}

impl std::fmt::Debug for FileSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileSource")
            .field("filename", &self.filename)
            .field("exact_len", &self.exact_len)
            .finish()
    }
}

fn multipart_error(e: MultipartError) -> GatewayError {
    match e {
        MultipartError::Interrupted => GatewayError::BodyInterrupted,
        MultipartError::Malformed(d) => GatewayError::MalformedBody {
            detail: format!("multipart: {d}"),
        },
    }
}

async fn idle<T>(fut: impl std::future::Future<Output = T>) -> Result<T, GatewayError> {
    tokio::time::timeout(BODY_IDLE_TIMEOUT, fut)
        .await
        .map_err(|_| GatewayError::BodyInterrupted)
}

impl FileSource {
    /// A raw body: the whole body is the file.
    pub fn raw(
        body: Incoming,
        filename: Option<String>,
        content_type: Option<String>,
        len: Option<u64>,
    ) -> Self {
        Self {
            filename,
            content_type,
            exact_len: len,
            inner: Inner::Raw(body.into_data_stream()),
        }
    }

    /// A multipart body: reads (and drops) parts until the one named `media`, then stops at
    /// its first byte.
    pub async fn multipart(body: Incoming, boundary: String) -> Result<Self, GatewayError> {
        let mut parts = Multipart::new(body.into_data_stream(), &boundary, BODY_IDLE_TIMEOUT);
        loop {
            let Some(head) = parts.next_part().await.map_err(multipart_error)? else {
                return Err(GatewayError::MalformedBody {
                    detail: "no part named `media`; send the file as `-F media=@file`".into(),
                });
            };
            if head.name.as_deref() == Some("media") {
                return Ok(Self {
                    filename: head.filename,
                    content_type: head.content_type,
                    exact_len: None,
                    inner: Inner::Multipart(Box::new(parts), true),
                });
            }
            drain_part(&mut parts, &head).await?;
        }
    }

    /// The next chunk of the file, `None` at its end. For multipart bodies the end also
    /// checks that no second `media` part follows.
    pub async fn next_chunk(&mut self) -> Result<Option<Bytes>, GatewayError> {
        match &mut self.inner {
            Inner::Raw(stream) => match idle(stream.next()).await? {
                Some(Ok(chunk)) => Ok(Some(chunk)),
                Some(Err(_)) => Err(GatewayError::BodyInterrupted),
                None => Ok(None),
            },
            Inner::Multipart(parts, in_media) => {
                if *in_media {
                    match parts.chunk().await.map_err(multipart_error)? {
                        Some(chunk) => return Ok(Some(chunk)),
                        None => *in_media = false,
                    }
                }
                // The rest of the body: other parts are dropped, a second file is an error.
                while let Some(other) = parts.next_part().await.map_err(multipart_error)? {
                    if other.name.as_deref() == Some("media") {
                        return Err(GatewayError::MalformedBody {
                            detail: "more than one part named `media`".into(),
                        });
                    }
                    drain_part(parts, &other).await?;
                }
                Ok(None)
            }
        }
    }
}

async fn drain_part(parts: &mut Parts, head: &PartHead) -> Result<(), GatewayError> {
    let mut seen = 0usize;
    while let Some(chunk) = parts.chunk().await.map_err(multipart_error)? {
        seen += chunk.len();
        if seen > OTHER_PART_MAX {
            return Err(GatewayError::MalformedBody {
                detail: format!(
                    "part `{}` exceeds {OTHER_PART_MAX} bytes; only `media` may be large",
                    head.name.as_deref().unwrap_or("")
                ),
            });
        }
    }
    Ok(())
}
