//! The answers an upload gets: a dedupe hit shaped like Fxiaoke's own answer, or Fxiaoke's
//! answer passed through with `deduplicated` spliced in (its bytes and key order kept), both
//! with `Repr-Digest` (RFC 9530) of the stored file. Also the bounded read of a body an early
//! answer leaves unread, so an HTTP/1 caller sees the answer instead of a reset.

use base64::Engine as _;
use bytes::Bytes;
use http::{header, HeaderValue, Request, Response};
use hyper::body::Incoming;

use super::request::MULTIPART_FRAMING_ALLOWANCE;
use super::source;
use crate::body::{full, Body};
use crate::dedupe::MediaRef;
use crate::upstream::envelope::Envelope;

/// `Repr-Digest` / `Content-Digest` value of a SHA-256 (RFC 9530).
pub fn repr_digest(sha256: &[u8; 32]) -> String {
    // `sha-256=:` + 44 base64 characters + `:`, written once.
    let mut v = String::with_capacity(54);
    v.push_str("sha-256=:");
    base64::engine::general_purpose::STANDARD.encode_string(sha256, &mut v);
    v.push(':');
    v
}

/// On HTTP/1.1 a body the caller is already sending must be read before answering, or closing
/// the connection with unread data resets it and the caller may lose the answer. With
/// `Expect: 100-continue` nothing was sent; on HTTP/2 hyper resets just the stream. Returns
/// whether the HTTP/1 connection can be reused (the body, if any, was read to its end).
pub async fn finish_unread_body(req: Request<Incoming>, limit: u64) -> bool {
    let expects_continue = req
        .headers()
        .get(header::EXPECT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"));
    if req.version() >= http::Version::HTTP_2 {
        return true;
    }
    if expects_continue {
        return false;
    }
    use http_body::Body as _;
    use http_body_util::BodyExt as _;
    let mut body = req.into_body();
    let mut seen = 0u64;
    let bound = limit.saturating_add(MULTIPART_FRAMING_ALLOWANCE);
    while let Ok(Some(Ok(frame))) =
        tokio::time::timeout(source::BODY_IDLE_TIMEOUT, body.frame()).await
    {
        seen += frame.data_ref().map_or(0, |d| d.len() as u64);
        if seen > bound {
            return false;
        }
    }
    body.is_end_stream()
}

/// A dedupe hit's answer. Its fields are in the order earlier releases wrote them (they built
/// a `serde_json` map, which sorts its keys), so the bytes are the same; serialised straight
/// from borrowed fields, a hit no longer builds and frees a map of owned strings.
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct Hit<'a> {
    deduplicated: bool,
    error_code: u8,
    error_description: &'a str,
    error_message: &'a str,
    media_id: &'a str,
    trace_id: &'a str,
}

/// The answer for a dedupe hit, shaped like Fxiaoke's.
pub fn hit_response(media: &MediaRef, sha256: &[u8; 32], request_id: &str) -> Response<Body> {
    let hit = Hit {
        deduplicated: true,
        error_code: 0,
        error_description: "success",
        error_message: "success",
        media_id: &media.media_id,
        trace_id: request_id,
    };
    // Strings and a number only: serialising cannot fail.
    let body = serde_json::to_vec(&hit).unwrap_or_default();
    json_with_digest(Bytes::from(body), sha256)
}

/// fxgate's own JSON answer about a file, with the file's SHA-256 as `Repr-Digest`.
pub fn with_digest(body: &serde_json::Value, sha256: &[u8; 32]) -> Response<Body> {
    json_with_digest(Bytes::from(body.to_string()), sha256)
}

fn json_with_digest(body: Bytes, sha256: &[u8; 32]) -> Response<Body> {
    let mut resp = Response::new(full(body));
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Ok(v) = HeaderValue::try_from(repr_digest(sha256)) {
        headers.insert("repr-digest", v);
    }
    resp
}

/// Forwards Fxiaoke's answer, adding `deduplicated` and `Repr-Digest` when the file was whole.
pub fn passthrough(
    status: http::StatusCode,
    env: Envelope,
    digest: Option<([u8; 32], bool)>,
) -> Response<Body> {
    let body = match (&env.json, digest) {
        (Some(map), Some((_, dedup))) => with_flag(&env.raw, map, dedup).unwrap_or_else(|| {
            let mut map = map.clone();
            map.insert("deduplicated".into(), serde_json::Value::Bool(dedup));
            Bytes::from(serde_json::Value::Object(map).to_string())
        }),
        _ => env.raw.clone(),
    };
    let mut resp = Response::new(full(body));
    *resp.status_mut() = status;
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Some((d, _)) = digest {
        if let Ok(v) = HeaderValue::from_str(&repr_digest(&d)) {
            headers.insert("repr-digest", v);
        }
    }
    resp
}

/// Fxiaoke's answer `raw` (a JSON object, parsed as `map`) with `"deduplicated"` added before
/// its closing brace: its own bytes and key order stay, and nothing is re-serialised.
fn with_flag(
    raw: &Bytes,
    map: &serde_json::Map<String, serde_json::Value>,
    dedup: bool,
) -> Option<Bytes> {
    if map.contains_key("deduplicated") {
        return None;
    }
    let end = raw.iter().rposition(|b| !b.is_ascii_whitespace())?;
    if raw[end] != b'}' {
        return None;
    }
    let field: &[u8] = if dedup {
        b"\"deduplicated\":true}"
    } else {
        b"\"deduplicated\":false}"
    };
    let mut out = Vec::with_capacity(end + 1 + field.len());
    out.extend_from_slice(&raw[..end]);
    if !map.is_empty() {
        out.push(b',');
    }
    out.extend_from_slice(field);
    Some(out.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flagged(raw: &str, dedup: bool) -> Option<String> {
        let map = match serde_json::from_str(raw) {
            Ok(serde_json::Value::Object(m)) => m,
            _ => panic!("test input is an object"),
        };
        with_flag(&Bytes::from(raw.to_string()), &map, dedup)
            .map(|b| String::from_utf8(b.to_vec()).expect("utf-8"))
    }

    fn body_of(resp: Response<Body>) -> Bytes {
        futures_util::FutureExt::now_or_never(http_body_util::BodyExt::collect(resp.into_body()))
            .expect("ready")
            .expect("whole")
            .to_bytes()
    }

    #[test]
    fn a_hit_answers_the_bytes_and_digest_earlier_releases_did() {
        let media = MediaRef {
            media_id: "m-\"1\"".into(),
            size: 3,
            content_type: "image/png".into(),
            created_at: std::time::SystemTime::now(),
            caller: "c".into(),
            holders: vec!["c".into()],
        };
        let sha = [0xAB; 32];
        let resp = hit_response(&media, &sha, "rid");
        let digest = resp.headers()["repr-digest"].clone();
        // What `serde_json::json!` wrote before, key order and escaping included.
        let before = serde_json::json!({
            "errorCode": 0,
            "errorMessage": "success",
            "errorDescription": "success",
            "mediaId": media.media_id,
            "traceId": "rid",
            "deduplicated": true,
        })
        .to_string();
        assert_eq!(body_of(resp), Bytes::from(before));
        let b64 = base64::engine::general_purpose::STANDARD.encode(sha);
        assert_eq!(digest, format!("sha-256=:{b64}:").as_str());
    }

    #[test]
    fn a_rewritten_answer_keeps_every_number_it_had() {
        // Fxiaoke's own `deduplicated` forces a rewrite; found by fuzz/envelope.
        let raw = Bytes::from_static(b"{\"deduplicated\":1,\"n\":2.555555555555555e76}");
        let env = Envelope::from_bytes(raw.clone());
        let before = env.json.clone().expect("an object");
        let resp = passthrough(http::StatusCode::OK, env, Some(([0; 32], false)));
        let body = futures_util::FutureExt::now_or_never(http_body_util::BodyExt::collect(
            resp.into_body(),
        ))
        .expect("ready")
        .expect("whole")
        .to_bytes();
        let after: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
        assert_eq!(after["n"], before["n"]);
        assert_eq!(after["deduplicated"], false);
    }

    #[test]
    fn the_flag_is_added_without_reordering_fxiaokes_answer() {
        let out = flagged("{\"mediaId\":\"m\",\"errorCode\":0}\n", false).expect("added");
        assert_eq!(
            out,
            "{\"mediaId\":\"m\",\"errorCode\":0,\"deduplicated\":false}"
        );
        let v: serde_json::Value = serde_json::from_str(&out).expect("still JSON");
        assert_eq!(v["deduplicated"], false);
        assert_eq!(
            flagged("{ }", true).as_deref(),
            Some("{ \"deduplicated\":true}")
        );
        // Never a duplicate key: the caller falls back to rewriting the object.
        assert_eq!(flagged("{\"deduplicated\":1}", false), None);
    }
}
