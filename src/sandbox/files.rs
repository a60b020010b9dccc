//! The sandbox's File Service (fxiaoke.md §3): the two-step signed upload of up to 100 MB that
//! gives an npath, as strict as Fxiaoke documents it. Step 1 (`/cgi/crm/v2/
//! generatorFileUploadCredential`, a business call: token, trace id and per-interface limit
//! checked by `openapi`) hands out a single-use signature for one file of one size; step 2
//! (`POST {data.url}?traceId=…&linkId=…`, the URL's trailing `/` kept) must carry every signed
//! header verbatim, arrive before the expiry and bring exactly `size` bytes. Each violation is
//! answered `{"success":false,…}`, as step 2 answers, not with an `errorCode`. The file is
//! hashed as it streams, never kept.

use http::{header, HeaderMap, Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use super::state::{Credential, State, StoredFile};
use super::{fx_error, json as answer};
use crate::body::Body;
use crate::route::query_param;

/// Step 2's path on the sandbox (with its trailing `/`).
pub(super) const UPLOAD_PATH: &str = "/fs/stream/upload/";

/// Fxiaoke's File Service limit.
const MAX_FILE: u64 = 104_857_600;

/// Step 1: `{"data":{resourceType, isStreamUpload, filename, extension, fileSize, expireTime}}`.
pub(super) fn credential(
    state: &State,
    body: &Map<String, Value>,
    host: &str,
    trace: &str,
) -> Response<Body> {
    let data = body.get("data").and_then(Value::as_object);
    let field = |k: &str| data.and_then(|d| d.get(k));
    let resource = field("resourceType").and_then(Value::as_str).unwrap_or("");
    let filename = field("filename").and_then(Value::as_str).unwrap_or("");
    let size = field("fileSize").and_then(Value::as_u64).unwrap_or(0);
    let expire = field("expireTime").and_then(Value::as_u64).unwrap_or(0);
    if let Some(why) = problem(data) {
        return fx_error(10002, why);
    }
    state.stats.bump(|s| &s.file_credentials);
    let random = || uuid::Uuid::new_v4().simple().to_string();
    let (sign, now) = (random(), state.opts.clock.unix_ms());
    let faults = state.faults.lock();
    let expiry_ms = if faults.file_expired_signatures {
        now.saturating_sub(1000)
    } else {
        now + expire * 1000
    };
    let url = faults
        .file_upload_url
        .clone()
        .unwrap_or_else(|| format!("http://{host}{UPLOAD_PATH}"));
    drop(faults);
    let content_type = "application/octet-stream".to_string();
    let headers = vec![
        ("acid", format!("sandbox.{}", super::state::EA)),
        ("resource", resource.to_string()),
        ("ak", "sandbox-ak".to_string()),
        ("sign", sign.clone()),
        ("expiry", expiry_ms.to_string()),
        ("filename", filename.to_string()),
        ("size", size.to_string()),
        ("digest", random()),
    ];
    let mut data: Map<String, Value> = headers
        .iter()
        .map(|(k, v)| (k.to_string(), Value::String(v.clone())))
        .collect();
    data.insert("method".into(), "POST".into());
    data.insert("url".into(), url.into());
    data.insert("contentType".into(), content_type.clone().into());
    state.files.lock().credentials.insert(
        sign,
        Credential {
            headers,
            content_type,
            size,
            expiry_ms,
            link: trace.to_string(),
            temporary: resource == "TN",
            used: false,
        },
    );
    answer(json!({"errorCode": 0, "errorMessage": "success", "traceId": trace, "data": data}))
}

/// What is wrong with step 1's `data`, if anything.
fn problem(data: Option<&Map<String, Value>>) -> Option<&'static str> {
    let field = |k: &str| data.and_then(|d| d.get(k));
    let text = |k: &str| field(k).and_then(Value::as_str).unwrap_or("");
    let number = |k: &str| field(k).and_then(Value::as_u64).unwrap_or(0);
    if !matches!(text("resourceType"), "N" | "TN") {
        Some("resourceType must be N or TN")
    } else if field("isStreamUpload") != Some(&Value::Bool(true)) {
        Some("isStreamUpload must be true")
    } else if text("filename").is_empty() || text("extension").is_empty() {
        Some("filename and extension are required")
    } else if !(1..=MAX_FILE).contains(&number("fileSize")) {
        Some("fileSize must be 1..104857600")
    } else if !(60..=604_800).contains(&number("expireTime")) {
        Some("expireTime must be 60..604800")
    } else {
        None
    }
}

/// Step 2 failures, as step 2 answers them.
fn refused(state: &State, code: i64, message: &str) -> Response<Body> {
    state.stats.bump(|s| &s.file_uploads_rejected);
    answer(json!({"success": false, "code": code, "message": message, "data": null}))
}

/// Step 2: the signed headers, the expiry, the size, the trailing `/`, then the bytes.
pub(super) async fn upload(state: &State, req: Request<Incoming>) -> Response<Body> {
    state.stats.bump(|s| &s.file_upload_requests);
    let (parts, body) = req.into_parts();
    let checked = check(state, &parts.uri, &parts.headers);
    let (size, temporary, filename) = match checked {
        Ok(c) => c,
        Err((code, why)) => {
            drain(body).await;
            return refused(state, code, why);
        }
    };
    if state.faults.lock().take_file_upload_failure() {
        drain(body).await;
        return refused(state, 500, "file service busy");
    }
    let Some(sha256) = read(state, body, size).await else {
        state.stats.bump(|s| &s.file_uploads_aborted);
        return refused(state, 400, "the body did not bring `size` bytes");
    };
    let hex = uuid::Uuid::new_v4().simple().to_string();
    let npath = if temporary {
        format!("TN_{hex}")
    } else {
        let day = chrono_day(state.opts.clock.unix_ms());
        format!("N_{day}_{hex}")
    };
    state.files.lock().stored.insert(
        npath.clone(),
        StoredFile {
            sha256,
            size,
            filename,
        },
    );
    state.stats.bump(|s| &s.file_uploads_completed);
    answer(json!({"success": true, "code": 0, "message": "success", "data": npath}))
}

type Checked = (u64, bool, String);

fn check(
    state: &State,
    uri: &http::Uri,
    headers: &HeaderMap,
) -> Result<Checked, (i64, &'static str)> {
    if uri.path() != UPLOAD_PATH {
        return Err((404, "no such upload path (is its trailing / kept?)"));
    }
    let header = |k: &str| headers.get(k).and_then(|v| v.to_str().ok()).unwrap_or("");
    if query_param(uri, "traceId").is_none_or(|t| t.is_empty()) {
        return Err((400, "traceId is required"));
    }
    let mut files = state.files.lock();
    let Some(cred) = files.credentials.get_mut(header("sign")) else {
        return Err((403, "unknown signature"));
    };
    if cred.used {
        return Err((403, "the signature was used already"));
    }
    cred.used = true;
    if cred.expiry_ms < state.opts.clock.unix_ms() {
        return Err((403, "the signature expired"));
    }
    if query_param(uri, "linkId").as_deref() != Some(cred.link.as_str()) {
        return Err((400, "linkId must be step 1's traceId"));
    }
    if cred.headers.iter().any(|(k, v)| header(k) != v) {
        return Err((403, "a signed header differs from step 1's"));
    }
    if header(header::CONTENT_TYPE.as_str()) != cred.content_type {
        return Err((400, "Content-Type must be the signed contentType"));
    }
    let length = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if length != Some(cred.size) {
        return Err((400, "Content-Length must be the signed size"));
    }
    let filename = header("filename").to_string();
    Ok((cred.size, cred.temporary, filename))
}

/// Reads and hashes the body; `None` unless it is exactly `size` bytes.
async fn read(state: &State, mut body: Incoming, size: u64) -> Option<[u8; 32]> {
    let mut hash = Sha256::new();
    let mut seen = 0u64;
    // A slow File Service (fault `upload_read_kib_per_sec`), as for the media upload.
    let rate = state.faults.lock().upload_read_kib_per_sec;
    while let Some(frame) = body.frame().await {
        let frame = frame.ok()?;
        if let Some(data) = frame.data_ref() {
            super::faults::pace_read(rate, data.len()).await;
            seen += data.len() as u64;
            if !state.opts.discard {
                hash.update(data);
            }
        }
    }
    (seen == size).then(|| hash.finalize().into())
}

async fn drain(mut body: Incoming) {
    let _ = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        while let Some(Ok(_)) = body.frame().await {}
    })
    .await;
}

/// `yyyymm_dd` of a Unix time in ms (UTC), as new npaths carry it.
fn chrono_day(unix_ms: u64) -> String {
    let days = (unix_ms / 86_400_000) as i64;
    // Howard Hinnant's civil-from-days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}{m:02}_{d:02}")
}

/// `GET /_sandbox/files/{npath}`: what step 2 stored under it.
pub(super) fn describe(state: &State, npath: &str) -> Response<Body> {
    match state.files.lock().stored.get(npath) {
        Some(f) => answer(json!({
            "npath": npath,
            "sha256": hex::encode(f.sha256),
            "size": f.size,
            "filename": f.filename,
        })),
        None => {
            let mut r = answer(json!({"error": "no such npath"}));
            *r.status_mut() = http::StatusCode::NOT_FOUND;
            r
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn npaths_carry_the_utc_day() {
        assert_eq!(super::chrono_day(0), "197001_01");
        // 2026-12-03T05:00:00Z
        assert_eq!(super::chrono_day(1_796_274_000_000), "202612_03");
    }
}
