//! What a caller presents as its credential (design §3, §9), found in the head or, for JSON
//! routes whose head carries none, in the body: a gateway key, an `fxg_` token, or an SDK's
//! `appId` / `appSecret`. Finding it is this file; deciding who that is, `auth`.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::body::read_capped_with;
use crate::config::Unauthenticated;
use crate::error::GatewayError;
use crate::route::{query_param, Route};
use crate::session::PREFIX;

/// The one pool of work done before a caller is known (design §9, Boundaries): reading a
/// body to find an SDK's credential. At most `max_requests` such reads at once, holding at
/// most `max_bytes` in all, each within `timeout`; a read that finds the pool full is 503 /
/// 950303 at once, so anonymous clients can neither grow memory nor take the places of
/// callers that authenticate in their headers (those never touch this pool).
#[derive(Debug, Clone)]
pub struct PreAuthPool {
    requests: Arc<Semaphore>,
    bytes: Arc<Semaphore>,
    timeout: Duration,
}

impl PreAuthPool {
    /// A pool of `limits`.
    pub fn new(limits: Unauthenticated) -> Self {
        let max_bytes = usize::try_from(limits.max_bytes).unwrap_or(usize::MAX);
        Self {
            requests: Arc::new(Semaphore::new(limits.max_requests)),
            bytes: Arc::new(Semaphore::new(max_bytes.min(Semaphore::MAX_PERMITS))),
            timeout: limits.timeout,
        }
    }

    /// `n` more bytes; a body larger than the whole pool never fits and is refused too.
    fn bytes(&self, n: usize) -> Result<OwnedSemaphorePermit, GatewayError> {
        let n = u32::try_from(n).map_err(|_| GatewayError::Overloaded)?;
        self.bytes
            .clone()
            .try_acquire_many_owned(n)
            .map_err(|_| GatewayError::Overloaded)
    }
}

/// A place in the pre-authentication pool and the bytes it holds; freed on drop, once the
/// caller is known (or refused).
#[derive(Debug, Default)]
pub(super) struct PoolPlace {
    seat: Option<OwnedSemaphorePermit>,
    bytes: Option<OwnedSemaphorePermit>,
}

impl PoolPlace {
    /// Adds `more` bytes to what this place holds.
    fn hold(&mut self, more: OwnedSemaphorePermit) {
        match &mut self.bytes {
            Some(held) => held.merge(more),
            None => self.bytes = Some(more),
        }
    }
}

/// A body the auth layer had to read to find the credential, for the handler.
#[derive(Debug, Clone)]
pub struct CallerBody(pub Bytes);

/// What the caller presented.
#[derive(Debug)]
pub(super) enum Presented {
    Nothing,
    Key(String),
    /// An `fxg_` token.
    Token(String),
    /// An SDK's `appId` / `appSecret` at a token endpoint.
    App {
        id: String,
        secret: String,
    },
    /// A header was sent but holds no usable credential (wrong scheme, empty, not ASCII).
    Unusable,
}

impl Presented {
    fn bearer(value: String) -> Self {
        if value.starts_with(PREFIX) {
            Self::Token(value)
        } else {
            Self::Key(value)
        }
    }
}

pub(super) fn from_head<B>(req: &http::Request<B>) -> Presented {
    if let Some(v) = req.headers().get(header::AUTHORIZATION) {
        let key = v.to_str().ok().and_then(|v| {
            let (scheme, rest) = v.trim().split_once(' ')?;
            (scheme.eq_ignore_ascii_case("bearer") && !rest.trim().is_empty())
                .then(|| rest.trim().to_string())
        });
        return key.map_or(Presented::Unusable, Presented::bearer);
    }
    match req
        .headers()
        .get("x-api-key")
        .map(|v| v.to_str().map(str::trim))
    {
        Some(Ok(v)) if !v.is_empty() => return Presented::Key(v.to_string()),
        Some(_) => return Presented::Unusable,
        None => {}
    }
    // The seed's `?corpAccessToken=…&corpId=…` (a real Fxiaoke token there is just dropped).
    match query_param(req.uri(), "corpAccessToken") {
        Some(t) if t.starts_with(PREFIX) => Presented::Token(t),
        _ => Presented::Nothing,
    }
}

/// The credential fields an SDK puts into a JSON body (anything else in it is ignored here).
#[derive(serde::Deserialize)]
struct BodyCredentials {
    #[serde(rename = "corpAccessToken")]
    token: Option<String>,
    #[serde(rename = "appId")]
    app_id: Option<String>,
    #[serde(rename = "appSecret")]
    app_secret: Option<String>,
}

/// Reads the body (at most `limit` bytes, within the pool's bounds) into `CallerBody` and
/// finds the credential in it; the place it took in `pool` is held until the caller is known.
pub(super) async fn from_body<B>(
    req: &mut http::Request<B>,
    route: Route,
    limit: usize,
    pool: &PreAuthPool,
) -> Result<(Presented, PoolPlace), GatewayError>
where
    B: http_body::Body<Data = Bytes> + Unpin,
{
    let mut place = PoolPlace::default();
    let seat = pool.requests.clone().try_acquire_owned();
    place.seat = Some(seat.map_err(|_| GatewayError::Overloaded)?);
    let announced = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if let Some(n) = announced.filter(|n| *n > limit as u64) {
        return Err(GatewayError::PayloadTooLarge {
            seen: n,
            limit: limit as u64,
            route: route.label(),
        });
    }
    // The announced length is reserved up front; a chunked body's bytes as they arrive.
    let mut reserved = announced.unwrap_or(0) as usize;
    if reserved > 0 {
        place.hold(pool.bytes(reserved)?);
    }
    let grow = |total: usize| {
        if total <= reserved {
            return true;
        }
        let more = pool.bytes(total - reserved).ok();
        reserved = total;
        more.map(|p| place.hold(p)).is_some()
    };
    let body = read_capped_with(req.body_mut(), limit, route.label(), pool.timeout, grow).await?;
    let found = match serde_json::from_slice::<BodyCredentials>(&body) {
        Ok(BodyCredentials {
            app_id: Some(id),
            app_secret: Some(secret),
            ..
        }) if matches!(route, Route::Token(_)) => Presented::App { id, secret },
        Ok(BodyCredentials { token: Some(t), .. }) if t.starts_with(PREFIX) => Presented::Token(t),
        _ => Presented::Nothing,
    };
    req.extensions_mut().insert(CallerBody(body));
    Ok((found, place))
}
