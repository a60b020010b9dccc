//! `FileSource`: the file inside a caller's request, as a stream of chunks, whatever the body
//! form: a `multipart/form-data` body with part `media` (Fxiaoke's own form), or a raw body
//! (`Content-Type: image/...`, `?filename=`). The multipart framing is parsed as it arrives
//! (`multipart::Multipart`, which slices the chunks hyper read); nothing but the current chunk
//! is held. A multipart body as a whole is held to the file limit plus the framing allowance,
//! with or without `Content-Length`, so filler parts cannot stretch it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::BodyExt;
use hyper::body::Incoming;

use super::multipart::{Multipart, MultipartError, PartHead};
use crate::error::GatewayError;

pub use crate::route::BODY_IDLE_TIMEOUT;
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
    /// The part names a file may come under (multipart).
    names: &'static [&'static str],
    inner: Inner,
}

type Parts = Multipart<Counted>;

enum Inner {
    Raw(http_body_util::BodyDataStream<Incoming>),
    /// The parts, whether `media`'s data is still being read, and the body's byte bound.
    Multipart(Box<Parts>, bool, BodyCap),
}

/// A multipart body's bound: every byte of the body (parts, framing) counts.
#[derive(Debug, Clone)]
pub struct BodyCap {
    max: u64,
    limit: u64,
    route: &'static str,
    seen: Arc<AtomicU64>,
}

impl BodyCap {
    /// The file `limit` on `route` plus `allowance` for the framing.
    pub fn new(limit: u64, allowance: u64, route: &'static str) -> Self {
        Self {
            max: limit.saturating_add(allowance),
            limit,
            route,
            seen: Arc::new(AtomicU64::new(0)),
        }
    }

    fn check(&self) -> Result<(), GatewayError> {
        match self.seen.load(Ordering::Relaxed) {
            n if n > self.max => Err(GatewayError::PayloadTooLarge {
                seen: n,
                limit: self.limit,
                route: self.route,
            }),
            _ => Ok(()),
        }
    }
}

/// The body's data, counted as the multipart reader pulls it.
pub struct Counted {
    inner: http_body_util::BodyDataStream<Incoming>,
    seen: Arc<AtomicU64>,
}

impl futures_util::Stream for Counted {
    type Item = Result<Bytes, hyper::Error>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        let polled = self.inner.poll_next_unpin(cx);
        if let std::task::Poll::Ready(Some(Ok(chunk))) = &polled {
            self.seen.fetch_add(chunk.len() as u64, Ordering::Relaxed);
        }
        polled
    }
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
            names: &[],
            inner: Inner::Raw(body.into_data_stream()),
        }
    }

    /// A multipart body: reads (and drops) parts until the file's (named one of `names`),
    /// then stops at its first byte. With `announced` (the body's `Content-Length`) the file's
    /// length is worked out from it: what is left less the closing delimiter
    /// (`\r\n--boundary--\r\n`, as curl and every HTTP library write it).
    pub async fn multipart(
        body: Incoming,
        boundary: String,
        cap: BodyCap,
        names: &'static [&'static str],
        announced: Option<u64>,
    ) -> Result<Self, GatewayError> {
        let counted = Counted {
            inner: body.into_data_stream(),
            seen: cap.seen.clone(),
        };
        let mut parts = Multipart::new(counted, &boundary, BODY_IDLE_TIMEOUT);
        loop {
            let next = parts.next_part().await;
            cap.check()?;
            let Some(head) = next.map_err(multipart_error)? else {
                return Err(GatewayError::MalformedBody {
                    detail: "no part named `media`; send the file as `-F media=@file`".into(),
                });
            };
            if head.name.as_deref().is_some_and(|n| names.contains(&n)) {
                let closing = boundary.len() as u64 + 8;
                let consumed = cap.seen.load(Ordering::Relaxed) - parts.buffered() as u64;
                let exact_len =
                    announced.and_then(|n| n.checked_sub(consumed)?.checked_sub(closing));
                return Ok(Self {
                    filename: head.filename,
                    content_type: head.content_type,
                    exact_len,
                    names,
                    inner: Inner::Multipart(Box::new(parts), true, cap),
                });
            }
            drain_part(&mut parts, &head, &cap).await?;
        }
    }

    /// The next chunk of the file, `None` at its end. For multipart bodies the end also
    /// checks that no second `media` part follows.
    pub async fn next_chunk(&mut self) -> Result<Option<Bytes>, GatewayError> {
        let names = self.names;
        match &mut self.inner {
            Inner::Raw(stream) => match idle(stream.next()).await? {
                Some(Ok(chunk)) => Ok(Some(chunk)),
                Some(Err(_)) => Err(GatewayError::BodyInterrupted),
                None => Ok(None),
            },
            Inner::Multipart(parts, in_media, cap) => {
                if *in_media {
                    let chunk = parts.chunk().await;
                    cap.check()?;
                    match chunk.map_err(multipart_error)? {
                        Some(chunk) => return Ok(Some(chunk)),
                        None => *in_media = false,
                    }
                }
                // The rest of the body: other parts are dropped, a second file is an error.
                loop {
                    let next = parts.next_part().await;
                    cap.check()?;
                    let Some(other) = next.map_err(multipart_error)? else {
                        return Ok(None);
                    };
                    if other.name.as_deref().is_some_and(|n| names.contains(&n)) {
                        return Err(GatewayError::MalformedBody {
                            detail: "more than one file part".into(),
                        });
                    }
                    drain_part(parts, &other, cap).await?;
                }
            }
        }
    }
}

async fn drain_part(parts: &mut Parts, head: &PartHead, cap: &BodyCap) -> Result<(), GatewayError> {
    let mut seen = 0usize;
    loop {
        let chunk = parts.chunk().await;
        cap.check()?;
        let Some(chunk) = chunk.map_err(multipart_error)? else {
            return Ok(());
        };
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
}
