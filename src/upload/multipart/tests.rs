//! Compiled only under #[cfg(test)] (declared so in `upload/multipart.rs`).
//! The multipart reader against multer (differential, random splits), slices not copies,
//! malformed and truncated bodies, and garbage that must get an answer.
use super::*;

const BOUNDARY: &str = "XyZ-boundary-1234";
const IDLE: Duration = Duration::from_secs(5);

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> usize {
        (self.next() % n) as usize
    }
}

type Chunks = futures_util::stream::Iter<std::vec::IntoIter<Result<Bytes, std::io::Error>>>;

fn chunked(body: &[u8], rng: &mut Rng) -> Chunks {
    let mut chunks = Vec::new();
    let mut at = 0;
    while at < body.len() {
        // Mostly tiny pieces (every split position), sometimes whole read buffers.
        let n = if rng.below(4) == 0 {
            1 + rng.below(40_000)
        } else {
            1 + rng.below(48)
        };
        let end = (at + n).min(body.len());
        chunks.push(Ok(Bytes::copy_from_slice(&body[at..end])));
        at = end;
    }
    futures_util::stream::iter(chunks)
}

/// Bytes that look like a delimiter, or its beginning, without being one.
fn tricky_data(rng: &mut Rng) -> Vec<u8> {
    let near = [
        &b"\r\n--"[..],
        b"\r\n--XyZ-bound",
        b"\r\n--XyZ-boundary-123",
        b"--XyZ-boundary-1234",
        b"\r\r\n\r\n",
        b"\r\n-",
        b"\r",
    ];
    let mut data = Vec::new();
    for _ in 0..rng.below(12) {
        match rng.below(3) {
            0 => data.extend_from_slice(near[rng.below(near.len() as u64)]),
            1 => data.extend((0..rng.below(3000)).map(|_| rng.next() as u8)),
            _ => data.extend(std::iter::repeat_n(b'\r', rng.below(5))),
        }
    }
    // The pieces may happen to join into a real delimiter: cut there.
    let delim = format!("\r\n--{BOUNDARY}");
    if let Some(i) = memchr::memmem::find(&data, delim.as_bytes()) {
        data.truncate(i);
    }
    data
}

type Parsed = Vec<(PartHead, Vec<u8>)>;

fn form(parts: &Parsed, preamble: &[u8]) -> Vec<u8> {
    let mut body = preamble.to_vec();
    for (head, data) in parts {
        body.extend_from_slice(format!("--{BOUNDARY}\r\n").as_bytes());
        body.extend_from_slice(
            format!(
                "Content-Disposition: form-data; name=\"{}\"",
                head.name.as_deref().unwrap_or("")
            )
            .as_bytes(),
        );
        if let Some(f) = &head.filename {
            body.extend_from_slice(format!("; filename=\"{f}\"").as_bytes());
        }
        body.extend_from_slice(b"\r\n");
        if let Some(t) = &head.content_type {
            body.extend_from_slice(format!("Content-Type: {t}\r\n").as_bytes());
        }
        body.extend_from_slice(b"\r\n");
        body.extend_from_slice(data);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
    body
}

async fn ours(stream: Chunks) -> Result<Parsed, MultipartError> {
    let mut m = Multipart::new(stream, BOUNDARY, IDLE);
    let mut out = Vec::new();
    while let Some(head) = m.next_part().await? {
        let mut data = Vec::new();
        while let Some(c) = m.chunk().await? {
            assert!(!c.is_empty(), "no empty chunks");
            data.extend_from_slice(&c);
        }
        out.push((head, data));
    }
    Ok(out)
}

async fn multers(stream: Chunks) -> Parsed {
    let mut m = multer::Multipart::new(stream, BOUNDARY);
    let mut out = Vec::new();
    while let Some(mut f) = m.next_field().await.expect("multer field") {
        let head = PartHead {
            name: f.name().map(str::to_owned),
            filename: f.file_name().map(str::to_owned),
            content_type: f.content_type().map(|m| m.to_string()),
        };
        let mut data = Vec::new();
        while let Some(c) = f.chunk().await.expect("multer chunk") {
            data.extend_from_slice(&c);
        }
        out.push((head, data));
    }
    out
}

#[tokio::test]
async fn agrees_with_multer_on_random_bodies_split_anywhere() {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    for round in 0..400 {
        let parts: Parsed = (0..1 + rng.below(4))
            .map(|i| {
                let head = PartHead {
                    name: Some(format!("p{i}")),
                    filename: (rng.below(2) == 0).then(|| format!("f {i}.jpg")),
                    content_type: (rng.below(2) == 0).then(|| "image/jpeg".to_string()),
                };
                (head, tricky_data(&mut rng))
            })
            .collect();
        let preamble: &[u8] = if rng.below(3) == 0 {
            b"ignored\r\n"
        } else {
            b""
        };
        let body = form(&parts, preamble);
        let seed = rng.next();
        let mine = ours(chunked(&body, &mut Rng(seed)))
            .await
            .unwrap_or_else(|e| panic!("round {round}: {e:?}"));
        assert_eq!(mine, parts, "round {round}: what was sent");
        let theirs = multers(chunked(&body, &mut Rng(seed))).await;
        assert_eq!(mine, theirs, "round {round}: multer");
    }
}

#[tokio::test]
async fn slices_the_chunks_it_was_given_rather_than_copying_them() {
    let data = vec![7u8; 100_000];
    let parts = vec![(
        PartHead {
            name: Some("media".into()),
            ..PartHead::default()
        },
        data,
    )];
    let body = Bytes::from(form(&parts, b""));
    let range = body.as_ptr() as usize..body.as_ptr() as usize + body.len();
    let stream = futures_util::stream::iter(vec![Ok::<_, std::io::Error>(body.clone())]);
    let mut m = Multipart::new(stream, BOUNDARY, IDLE);
    m.next_part().await.expect("part").expect("media");
    let c = m.chunk().await.expect("data").expect("bytes");
    assert_eq!(c.len(), 100_000);
    assert!(
        range.contains(&(c.as_ptr() as usize)),
        "a slice of the input"
    );
}

async fn error_of(body: &[u8]) -> MultipartError {
    let mut rng = Rng(7);
    match ours(chunked(body, &mut rng)).await {
        Ok(p) => panic!("accepted {:?}: {p:?}", String::from_utf8_lossy(body)),
        Err(e) => e,
    }
}

#[tokio::test]
async fn refuses_what_is_not_a_whole_form() {
    let ok = form(
        &vec![(
            PartHead {
                name: Some("media".into()),
                ..PartHead::default()
            },
            b"abc".to_vec(),
        )],
        b"",
    );
    let cut = &ok[..ok.len() - 10];
    for (body, why) in [
        (&b"no boundary at all"[..], "no boundary"),
        (cut, "ends inside a part"),
        (b"--XyZ-boundary-1234", "ends after a boundary"),
        (b"--XyZ-boundary-1234xx\r\n\r\n", "no line break"),
        (
            b"--XyZ-boundary-1234\r\nContent-Disposition: form-data",
            "inside a part's headers",
        ),
        (b"--XyZ-boundary-1234\r\nno colon here\r\n\r\n", "headers"),
    ] {
        match error_of(body).await {
            MultipartError::Malformed(d) => assert!(d.contains(why), "{d} / {why}"),
            e => panic!("{e:?}"),
        }
    }
    let huge = format!("--{BOUNDARY}\r\nX-Pad: {}\r\n\r\n", "a".repeat(MAX_HEAD));
    assert!(matches!(
        error_of(huge.as_bytes()).await,
        MultipartError::Malformed(d) if d.contains("exceed")
    ));
    let stream = futures_util::stream::iter(vec![Err::<Bytes, _>(std::io::Error::other("reset"))]);
    let mut m = Multipart::new(stream, BOUNDARY, IDLE);
    assert_eq!(m.next_part().await, Err(MultipartError::Interrupted));
}

/// Garbage assembled from pieces of valid forms, split anywhere: an answer (parts or an
/// error), never a panic or a hang.
#[tokio::test]
async fn survives_random_garbage() {
    let pieces: [&[u8]; 10] = [
        b"--XyZ-boundary-1234",
        b"\r\n",
        b"--",
        b"Content-Disposition: form-data; name=\"media\"",
        b"Content-Type: image/jpeg",
        b"\r\n\r\n",
        b" \t",
        b"\r",
        b"x",
        b"; filename=\"a\\\"b\"",
    ];
    let mut rng = Rng(0x2545_F491_4F6C_DD1D);
    for _ in 0..3000 {
        let body: Vec<u8> = (0..rng.below(30))
            .flat_map(|_| pieces[rng.below(pieces.len() as u64)].to_vec())
            .collect();
        let seed = rng.next();
        let parsed = tokio::time::timeout(IDLE, ours(chunked(&body, &mut Rng(seed))))
            .await
            .expect("an answer, not a hang");
        if let Ok(parts) = parsed {
            let total: usize = parts.iter().map(|(_, d)| d.len()).sum();
            assert!(total <= body.len());
        }
    }
}

#[test]
fn reads_disposition_parameters_by_name() {
    let v = br#"form-data; filename*=UTF-8''x.jpg; name = "me\"dia" ;filename="a;b.jpg""#;
    assert_eq!(disposition_param(v, "name").as_deref(), Some("me\"dia"));
    assert_eq!(disposition_param(v, "filename").as_deref(), Some("a;b.jpg"));
    assert_eq!(
        disposition_param(b"form-data; name=media", "name").as_deref(),
        Some("media")
    );
    assert_eq!(
        disposition_param(b"form-data; flag; name=x", "name").as_deref(),
        Some("x")
    );
    assert_eq!(disposition_param(b"form-data", "name"), None);
    assert_eq!(disposition_param(b"form-data; name=\"open", "name"), None);
}
