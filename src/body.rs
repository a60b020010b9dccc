//! Body types shared by the server, the upstream client and the sandbox.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Full};

/// The boxed error type used where causes are heterogeneous.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why [`read_capped`] gave up; `error.rs` maps each to fxgate's envelope (kept apart so this
/// leaf module does not import the error type that itself builds bodies).
#[derive(Debug)]
pub enum ReadError {
    /// The caller closed, reset or stalled before the body was whole.
    Interrupted,
    /// More than `limit` bytes.
    TooLarge {
        /// Bytes read when the limit was crossed.
        seen: u64,
        /// The cap the caller passed.
        limit: u64,
        /// The route label the 413 names.
        route: &'static str,
    },
    /// The caller's `grow` refused more bytes (a pool is full).
    Refused,
}

/// The body of every response fxgate produces, and of every request it sends upstream.
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

/// A body holding `bytes` at once.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// Reads a small body (a JSON call's) whole, in place: at most `limit` bytes (413, 941301,
/// labelled `route`, beyond) and within `wait` (400, 940005, for a caller that stalls). The
/// request keeps its (now spent) body, so a layer can read it and still pass the request on.
pub async fn read_capped<B>(
    body: &mut B,
    limit: usize,
    route: &'static str,
    wait: Duration,
) -> Result<Bytes, ReadError>
where
    B: http_body::Body<Data = Bytes> + Unpin,
{
    read_capped_with(body, limit, route, wait, |_| true).await
}

/// As [`read_capped`], asking `grow(total)` before the body grows to `total` bytes; a `false`
/// stops the read (`Refused`): how a bounded pool accounts for what it holds.
pub async fn read_capped_with<B>(
    body: &mut B,
    limit: usize,
    route: &'static str,
    wait: Duration,
    mut grow: impl FnMut(usize) -> bool,
) -> Result<Bytes, ReadError>
where
    B: http_body::Body<Data = Bytes> + Unpin,
{
    let mut buf = BytesMut::new();
    let read = async {
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|_| ReadError::Interrupted)?;
            if let Ok(data) = frame.into_data() {
                if buf.len() + data.len() > limit {
                    return Err(ReadError::TooLarge {
                        seen: (buf.len() + data.len()) as u64,
                        limit: limit as u64,
                        route,
                    });
                }
                if !grow(buf.len() + data.len()) {
                    return Err(ReadError::Refused);
                }
                buf.extend_from_slice(&data);
            }
        }
        Ok(())
    };
    tokio::time::timeout(wait, read)
        .await
        .map_err(|_| ReadError::Interrupted)??;
    Ok(buf.freeze())
}

/// `body`, failing with `StalledBody` when no frame arrives for `idle`: an upstream that stops
/// sending mid-file would otherwise hold the caller (and its slot) for good.
pub fn idle_bounded<B>(body: B, idle: Duration) -> Body
where
    B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    IdleBounded {
        inner: body,
        idle,
        deadline: Box::pin(tokio::time::sleep(idle)),
    }
    .boxed_unsync()
}

/// The error of a body that went quiet for longer than its idle bound.
#[derive(Debug)]
pub struct StalledBody(pub Duration);

impl std::fmt::Display for StalledBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "no data for {:?}", self.0)
    }
}

impl std::error::Error for StalledBody {}

struct IdleBounded<B> {
    inner: B,
    idle: Duration,
    deadline: std::pin::Pin<Box<tokio::time::Sleep>>,
}

impl<B> http_body::Body for IdleBounded<B>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        use std::future::Future as _;
        use std::task::Poll;
        if let Poll::Ready(frame) = std::pin::Pin::new(&mut self.inner).poll_frame(cx) {
            let next = tokio::time::Instant::now() + self.idle;
            self.deadline.as_mut().reset(next);
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        match self.deadline.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(StalledBody(self.idle))))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A caller that sends part of its body and then nothing: answered, never waited on.
    #[tokio::test]
    async fn a_body_that_stalls_halfway_is_given_up_after_the_wait() {
        let start = futures_util::stream::iter([Ok::<_, std::convert::Infallible>(
            http_body::Frame::data(Bytes::from_static(b"{\"corpAccessToken\":")),
        )]);
        let stalled = futures_util::StreamExt::chain(start, futures_util::stream::pending());
        let mut body = http_body_util::StreamBody::new(stalled);
        // The deadline is the caller's to choose; a short one keeps the test short.
        let r = read_capped(&mut body, 1024, "/cgi/*", Duration::from_millis(50)).await;
        assert!(matches!(r, Err(ReadError::Interrupted)), "{r:?}");
    }

    #[tokio::test]
    async fn a_body_over_the_limit_is_413_and_one_within_is_read_whole() {
        let mut big = Full::new(Bytes::from(vec![b'x'; 2000]));
        let r = read_capped(&mut big, 1024, "/cgi/*", Duration::from_secs(1)).await;
        assert!(matches!(r, Err(ReadError::TooLarge { limit: 1024, .. })));
        let mut ok = Full::new(Bytes::from_static(b"{}"));
        let r = read_capped(&mut ok, 1024, "/cgi/*", Duration::from_secs(1)).await;
        assert_eq!(r.unwrap(), "{}");
    }
}
