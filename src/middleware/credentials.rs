//! What a caller presents as its credential (design §3, §9), found in the head or, for JSON
//! routes whose head carries none, in the body: a gateway key, an `fxg_` token, or an SDK's
//! `appId` / `appSecret`. Finding it is this file; deciding who that is, `auth`.

use std::time::Duration;

use bytes::Bytes;
use http::header;

use crate::body::read_capped;
use crate::error::GatewayError;
use crate::route::{query_param, Route};
use crate::session::PREFIX;

/// How long an unauthenticated caller may take to send a body that carries its credential.
const BODY_WAIT: Duration = Duration::from_secs(30);

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

/// Reads the body (at most `limit` bytes, within `BODY_WAIT`) into `CallerBody` and finds the
/// credential in it.
pub(super) async fn from_body<B>(
    req: &mut http::Request<B>,
    route: Route,
    limit: usize,
) -> Result<Presented, GatewayError>
where
    B: http_body::Body<Data = Bytes> + Unpin,
{
    let body = read_capped(req.body_mut(), limit, route.label(), BODY_WAIT).await?;
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
    Ok(found)
}
