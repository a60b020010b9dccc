//! Uploads through a running gateway to a running sandbox: the happy paths (multipart and
//! raw), the refusals that must happen before Fxiaoke sees anything, download and delete.

mod support;

use std::time::Duration;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn multipart_upload_reaches_the_sandbox_byte_for_byte() {
    let (sandbox, gw) = pair(&[], |_| {});
    let http = client();
    let file = jpeg(300_000, 7);
    let (status, headers, body) = upload_multipart(
        &http,
        &gw.upload_url(),
        ALPHA_KEY,
        file.clone(),
        "photo.jpg",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["errorCode"], 0, "{body}");
    assert_eq!(body["deduplicated"], false);
    assert!(headers.contains_key("x-request-id"));
    let digest = headers["repr-digest"].to_str().unwrap();
    assert_eq!(digest, repr_digest(&file));
    let media = sandbox.media(body["mediaId"].as_str().unwrap()).await;
    assert_eq!(media["sha256"], sha256_hex(&file));
    assert_eq!(media["size"], file.len());
    assert_eq!(media["filename"], "photo.jpg");
    assert_eq!(media["contentType"], "image/jpeg");
    assert_eq!(media["route"], "message");
}

#[tokio::test]
async fn raw_upload_with_filename_and_x_api_key() {
    let (sandbox, gw) = pair(&[], |_| {});
    let file = jpeg(70_000, 3);
    let resp = client()
        .post(format!(
            "{}/media/upload?type=image&filename=scan.jpg",
            gw.url
        ))
        .header("x-api-key", BETA_KEY)
        .header("content-type", "image/jpeg")
        .body(file.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["errorCode"], 0, "{body}");
    let media = sandbox.media(body["mediaId"].as_str().unwrap()).await;
    assert_eq!(media["sha256"], sha256_hex(&file));
    assert_eq!(media["filename"], "scan.jpg");
    assert_eq!(media["route"], "image");
}

#[tokio::test]
async fn document_route_accepts_any_type_and_keeps_the_extension() {
    let (sandbox, gw) = pair(&[], |_| {});
    let file = b"%PDF-1.7 a small document".repeat(1000);
    let part = reqwest::multipart::Part::bytes(file.clone())
        .file_name("合同.pdf")
        .mime_str("application/pdf")
        .unwrap();
    let form = reqwest::multipart::Form::new()
        .text("note", "ignored")
        .part("media", part);
    let resp = client()
        .post(format!("{}/media/upload?type=document", gw.url))
        .bearer_auth(ALPHA_KEY)
        .multipart(form)
        .send()
        .await
        .unwrap();
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["errorCode"], 0, "{body}");
    let media = sandbox.media(body["mediaId"].as_str().unwrap()).await;
    assert_eq!(media["sha256"], sha256_hex(&file));
    assert_eq!(media["filename"], "合同.pdf");
    assert_eq!(media["contentType"], "application/pdf");
}

#[tokio::test]
async fn missing_or_unknown_key_is_401_and_reaches_nothing() {
    let (sandbox, gw) = pair(&[], |_| {});
    let http = client();
    for key in [None, Some("not-a-key"), Some("")] {
        let mut req = http
            .post(gw.upload_url())
            .header("content-type", "image/jpeg")
            .body(jpeg(1000, 1));
        if let Some(k) = key {
            req = req.bearer_auth(k);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 401);
        let body: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(body["errorCode"], 940101);
        assert!(body["traceId"].as_str().is_some_and(|t| !t.is_empty()));
    }
    assert_eq!(sandbox.stats().await["upload_requests"], 0);
}

#[tokio::test]
async fn wrong_magic_bytes_is_415_and_fxiaoke_sees_nothing() {
    let (sandbox, gw) = pair(&[], |_| {});
    let pdf = b"%PDF-1.4 pretending to be a jpeg".repeat(100);
    let (status, _, body) =
        upload_multipart(&client(), &gw.upload_url(), ALPHA_KEY, pdf, "x.jpg").await;
    assert_eq!(status, 415, "{body}");
    assert_eq!(body["errorCode"], 941501);
    assert!(body["errorDescription"]
        .as_str()
        .unwrap()
        .contains("application/pdf"));
    assert_eq!(sandbox.stats().await["upload_requests"], 0);
}

#[tokio::test]
async fn oversize_content_length_is_refused_before_the_body_is_sent() {
    let (sandbox, gw) = pair(&[], |_| {});
    let answer = expect_continue(&gw, ALPHA_KEY, "/media/upload/message", 6 << 20).await;
    // Straight to 413: no `100 Continue`, so a well-behaved client never sends a body byte.
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("941301"), "{answer}");
    assert!(
        answer.contains("limit for /media/upload/message is 5242880"),
        "{answer}"
    );
    assert_eq!(sandbox.stats().await["upload_requests"], 0);
}

#[tokio::test]
async fn oversize_chunked_body_is_cut_off_and_the_upstream_upload_aborted() {
    let (sandbox, gw) = pair(&[], |_| {});
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = (0..96)
        .map(|i| {
            Ok(if i == 0 {
                jpeg(64 * 1024, 1)
            } else {
                vec![i as u8; 64 * 1024]
            })
        })
        .collect();
    let body = reqwest::Body::wrap_stream(futures_util::stream::iter(chunks));
    let resp = client()
        .post(gw.upload_url())
        .bearer_auth(ALPHA_KEY)
        .header("content-type", "image/jpeg")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["errorCode"], 941301);
    // The upstream request was opened (the type check passed) and then aborted.
    let stats = sandbox.wait("uploads_aborted", 1).await;
    assert_eq!(stats["uploads_completed"], 0, "{stats}");
}

#[tokio::test]
async fn bad_requests_get_clear_envelopes() {
    let (sandbox, gw) = pair(&[], |_| {});
    let http = client();
    // No `type` on the CRM route.
    let r = http
        .post(format!("{}/media/upload", gw.url))
        .bearer_auth(ALPHA_KEY)
        .body(jpeg(100, 1))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(
        r.json::<serde_json::Value>().await.unwrap()["errorCode"],
        940003
    );
    // Multipart without a `media` part.
    let form = reqwest::multipart::Form::new().text("file", "x");
    let r = http
        .post(gw.upload_url())
        .bearer_auth(ALPHA_KEY)
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(
        r.json::<serde_json::Value>().await.unwrap()["errorCode"],
        940001
    );
    // Broken multipart framing.
    let r = http
        .post(gw.upload_url())
        .bearer_auth(ALPHA_KEY)
        .header("content-type", "multipart/form-data; boundary=XYZ")
        .body("--XYZ\r\nContent-Disposition: form-data; name=\"media\"; filename=\"a.jpg\"\r\n\r\n\u{ff}\u{d8}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    // Unknown route, wrong method.
    let r = http
        .post(format!("{}/api/nothing", gw.url))
        .bearer_auth(ALPHA_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(
        r.json::<serde_json::Value>().await.unwrap()["errorCode"],
        940401
    );
    let r = http
        .get(gw.upload_url())
        .bearer_auth(ALPHA_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    assert_eq!(sandbox.stats().await["uploads_completed"], 0);
}

#[tokio::test]
async fn download_streams_the_file_and_delete_passes_through() {
    let (sandbox, gw) = pair(&[], |_| {});
    let http = client();
    let file = jpeg(200_000, 9);
    let (_, _, body) =
        upload_multipart(&http, &gw.upload_url(), ALPHA_KEY, file.clone(), "d.jpg").await;
    let id = body["mediaId"].as_str().unwrap().to_string();

    // The caller's own credentials in the body are dropped; fxgate's token is used instead.
    let req = serde_json::json!({"mediaId": id, "mediaTypeDesc": "IMAGE", "corpAccessToken": "stolen", "corpId": "FSCID_X"});
    let resp = http
        .post(format!("{}/media/download", gw.url))
        .bearer_auth(ALPHA_KEY)
        .json(&req)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "image/jpeg");
    assert_eq!(resp.bytes().await.unwrap().as_ref(), file.as_slice());

    let resp = http
        .post(format!("{}/media/delete", gw.url))
        .bearer_auth(ALPHA_KEY)
        .json(&serde_json::json!({"mediaId": id}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.json::<serde_json::Value>().await.unwrap()["errorCode"],
        0
    );
    assert_eq!(sandbox.media(&id).await["error"], "no such media");

    // Fxiaoke's own error envelope passes through unchanged (HTTP 200, errorCode ≠ 0).
    let resp = http
        .post(format!("{}/media/download", gw.url))
        .bearer_auth(ALPHA_KEY)
        .json(&req)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["errorCode"], 10002, "{body}");

    // Not JSON at all.
    let resp = http
        .post(format!("{}/media/delete", gw.url))
        .bearer_auth(ALPHA_KEY)
        .body("mediaId=1")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
}

/// A multipart body sent chunked, with an epilogue after the closing boundary: the answer
/// comes at once and the connection serves the next upload.
/// A chunked `multipart/form-data` body: `fillers` parts of 60 000 bytes around a small JPEG
/// part `media` (before it when `fillers_first`).
fn padded_multipart(fillers: usize, fillers_first: bool) -> reqwest::Body {
    let filler = |i: usize| {
        let mut part =
            format!("--B\r\nContent-Disposition: form-data; name=\"pad{i}\"\r\n\r\n").into_bytes();
        part.extend(std::iter::repeat_n(b'x', 60_000));
        part.extend_from_slice(b"\r\n");
        Ok::<_, std::io::Error>(part)
    };
    let mut media =
        b"--B\r\nContent-Disposition: form-data; name=\"media\"; filename=\"a.jpg\"\r\n\
          Content-Type: image/jpeg\r\n\r\n"
            .to_vec();
    media.extend_from_slice(&jpeg(3000, 7));
    media.extend_from_slice(b"\r\n");
    let mut chunks: Vec<_> = (0..fillers).map(filler).collect();
    chunks.insert(if fillers_first { fillers } else { 0 }, Ok(media));
    chunks.push(Ok(b"--B--\r\n".to_vec()));
    reqwest::Body::wrap_stream(futures_util::stream::iter(chunks))
}

#[tokio::test]
async fn chunked_multipart_filler_parts_cannot_stretch_the_body_past_the_file_limit() {
    let (sandbox, gw) = pair(&[], |_| {});
    // 100 parts of 60 000 bytes: 6 MB in a body for the 5 MiB route, each part under the
    // per-part bound, no Content-Length to refuse up front.
    for fillers_first in [false, true] {
        let resp = client()
            .post(gw.upload_url())
            .bearer_auth(ALPHA_KEY)
            .header("content-type", "multipart/form-data; boundary=B")
            .body(padded_multipart(100, fillers_first))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 413, "fillers first: {fillers_first}");
        let body: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(body["errorCode"], 941301, "{body}");
    }
    let stats = sandbox.stats().await;
    assert_eq!(stats["uploads_completed"], 0, "{stats}");
    // The same parts within the bound pass.
    let resp = client()
        .post(gw.upload_url())
        .bearer_auth(ALPHA_KEY)
        .header("content-type", "multipart/form-data; boundary=B")
        .body(padded_multipart(0, false))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn a_chunked_multipart_upload_leaves_the_connection_reusable() {
    let (sandbox, gw) = pair(&[], |_| {});
    let addr = gw.url.trim_start_matches("http://").to_string();
    let mut tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
    for n in 0..2u32 {
        let mut body =
            b"--B\r\nContent-Disposition: form-data; name=\"media\"; filename=\"a.jpg\"\r\n\r\n"
                .to_vec();
        body.extend_from_slice(&unique_jpeg(3000, n));
        body.extend_from_slice(b"\r\n--B--\r\nepilogue\r\n");
        let mut req = format!(
            "POST /media/upload/message HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {ALPHA_KEY}\r\n\
             Content-Type: multipart/form-data; boundary=B\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n",
            body.len()
        )
        .into_bytes();
        req.extend_from_slice(&body);
        req.extend_from_slice(b"\r\n0\r\n\r\n");
        tcp.write_all(&req).await.unwrap();
        let answer = read_response(&mut tcp).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "upload {n}: {answer}");
        assert!(answer.contains("\"errorCode\":0"), "upload {n}: {answer}");
        assert!(
            !answer.to_ascii_lowercase().contains("connection: close"),
            "{answer}"
        );
    }
    assert_eq!(sandbox.stats().await["uploads_completed"], 2);
}

/// One HTTP/1.1 response with a `Content-Length`, read whole.
async fn read_response(tcp: &mut tokio::net::TcpStream) -> String {
    let mut buf = Vec::new();
    let mut piece = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut piece))
            .await
            .expect("answer in time")
            .unwrap();
        assert!(
            n > 0,
            "connection closed: {}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&piece[..n]);
        let text = String::from_utf8_lossy(&buf).to_string();
        if let Some(end) = text.find("\r\n\r\n") {
            let len = text[..end]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse::<usize>().unwrap())
                })
                .expect("content-length");
            if buf.len() >= end + 4 + len {
                return text;
            }
        }
    }
}

#[tokio::test]
async fn the_sandbox_reads_a_body_to_its_end_so_the_connection_stays_reusable() {
    // Like Fxiaoke's buffering front end. When the sandbox answered at the closing delimiter
    // with the CRLF after it still unread, hyper closed the connection after the answer, and
    // fxgate's next upload on that pooled connection failed with 950201 (seen in benches/e2e
    // at 5 MiB, c=64, once the body went out as smaller writes).
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let sandbox = Sandbox::spawn(&[]);
    let sdk = support::sdk::FxiaokeSdk::new(
        &sandbox.url,
        "sandbox-app",
        APP_SECRET,
        "sandbox-permanent-code",
    );
    let (token, corp) = sdk.token().await;
    let addr = sandbox.url.trim_start_matches("http://").to_string();
    let mut tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let file = jpeg(2000, 3);
    let mut body = b"--bnd\r\nContent-Disposition: form-data; name=\"media\"; filename=\"a.jpg\"\r\nContent-Type: image/jpeg\r\n\r\n".to_vec();
    body.extend_from_slice(&file);
    body.extend_from_slice(b"\r\n--bnd--\r\n");
    let head = |len: usize| {
        format!(
            "POST /media/upload?type=image&corpAccessToken={token}&corpId={corp}&thirdTraceId={} HTTP/1.1\r\n\
             Host: {addr}\r\nContent-Type: multipart/form-data; boundary=bnd\r\n\
             Content-Length: {len}\r\n\r\n",
            uuid::Uuid::new_v4()
        )
    };
    // All but the final CRLF: the form is complete, the body is not, so no answer yet (the
    // old sandbox answered here, then closed the connection).
    tcp.write_all(head(body.len()).as_bytes()).await.unwrap();
    tcp.write_all(&body[..body.len() - 2]).await.unwrap();
    let mut early = [0u8; 64];
    let answered =
        tokio::time::timeout(std::time::Duration::from_millis(500), tcp.read(&mut early)).await;
    assert!(answered.is_err(), "answered before the body ended");
    tcp.write_all(b"\r\n").await.unwrap();
    let first = read_answer(&mut tcp).await;
    assert!(first.contains("\"errorCode\":0"), "{first}");
    // The same connection carries the next upload.
    tcp.write_all(head(body.len()).as_bytes()).await.unwrap();
    tcp.write_all(&body).await.unwrap();
    let second = read_answer(&mut tcp).await;
    assert!(
        second.contains("\"errorCode\":0"),
        "second answer: {second:?}"
    );

    /// One whole answer (head and `Content-Length` body), or what came before the close.
    async fn read_answer(tcp: &mut tokio::net::TcpStream) -> String {
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let text = String::from_utf8_lossy(&got).into_owned();
            if let Some((head, rest)) = text.split_once("\r\n\r\n") {
                let len = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().to_string())
                    })
                    .and_then(|v| v.parse::<usize>().ok());
                if len.is_some_and(|n| rest.len() >= n) {
                    return text;
                }
            }
            let n = tokio::time::timeout(std::time::Duration::from_secs(10), tcp.read(&mut buf))
                .await
                .expect("an answer within 10 s")
                .unwrap_or(0);
            if n == 0 {
                return text;
            }
            got.extend_from_slice(&buf[..n]);
        }
    }
}
