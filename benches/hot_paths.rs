//! Micro-benchmarks of the per-byte and per-request hot paths: SHA-256 of upload bytes,
//! multipart framing (multer), type sniffing and the error envelope. `cargo bench`.

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use fxgate::config::ImageType;
use fxgate::GatewayError;
use sha2::{Digest, Sha256};

fn hashing(c: &mut Criterion) {
    let mut g = c.benchmark_group("sha256");
    for size in [64 * 1024, 1024 * 1024] {
        let data = vec![0x5au8; size];
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_with_input(BenchmarkId::from_parameter(size), &data, |b, d| {
            b.iter(|| Sha256::digest(d))
        });
    }
    g.finish();
}

/// The gateway's multipart reader against multer (its previous parser, still the sandbox's),
/// on a 1 MiB file in the 32 KiB pieces the server reads.
fn multipart(c: &mut Criterion) {
    const BOUNDARY: &str = "----WebKitFormBoundary7MA4YWxkTrZu0gW";
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    let file = vec![0x42u8; 1024 * 1024];
    let mut body = format!("--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"media\"; filename=\"a.jpg\"\r\nContent-Type: image/jpeg\r\n\r\n").into_bytes();
    body.extend_from_slice(&file);
    body.extend_from_slice(format!("\r\n--{BOUNDARY}--\r\n").as_bytes());
    let chunks: Vec<Bytes> = body.chunks(32 * 1024).map(Bytes::copy_from_slice).collect();
    let stream =
        || futures_util::stream::iter(chunks.clone().into_iter().map(Ok::<_, std::io::Error>));
    let mut g = c.benchmark_group("multipart_1MiB_in_32KiB_chunks");
    g.throughput(Throughput::Bytes(body.len() as u64));
    g.bench_function("fxgate", |b| {
        b.iter(|| {
            rt.block_on(async {
                let mut mp = fxgate::upload::multipart::Multipart::new(
                    stream(),
                    BOUNDARY,
                    std::time::Duration::from_secs(60),
                );
                let mut n = 0;
                while let Ok(Some(_)) = mp.next_part().await {
                    while let Ok(Some(chunk)) = mp.chunk().await {
                        n += chunk.len();
                    }
                }
                assert_eq!(n, file.len());
            })
        })
    });
    g.bench_function("multer", |b| {
        b.iter(|| {
            rt.block_on(async {
                let mut mp = multer::Multipart::new(stream(), BOUNDARY);
                let mut n = 0;
                while let Ok(Some(mut field)) = mp.next_field().await {
                    while let Ok(Some(chunk)) = field.chunk().await {
                        n += chunk.len();
                    }
                }
                assert_eq!(n, file.len());
            })
        })
    });
    g.finish();
}

fn per_request(c: &mut Criterion) {
    let head = [
        0x89, b'P', b'N', b'G', b'\r', b'\n', 0x1a, b'\n', 0, 0, 0, 13,
    ];
    c.bench_function("sniff_png", |b| {
        b.iter(|| ImageType::sniff(std::hint::black_box(&head)))
    });
    let media = fxgate::dedupe::MediaRef {
        media_id: "bench-media-id-0123456789".into(),
        size: 10_240,
        content_type: "image/jpeg".into(),
        created_at: std::time::SystemTime::now(),
        caller: "bench".into(),
        holders: vec!["bench".into()],
    };
    c.bench_function("dedupe_hit_answer", |b| {
        b.iter(|| {
            fxgate::upload::answer::hit_response(
                std::hint::black_box(&media),
                &[7u8; 32],
                "0b672c61-5f95-455e-bd45-f5baac029988",
            )
        })
    });
    c.bench_function("error_envelope", |b| {
        b.iter(|| {
            GatewayError::PayloadTooLarge {
                seen: 6_291_456,
                limit: 5_242_880,
                route: "/media/upload/message",
            }
            .into_response("0b672c61-5f95-455e-bd45-f5baac029988")
        })
    });
}

/// A request's token lookup when the token is cached (the common case): a `watch` borrow and
/// an `Arc` clone, against a live in-process sandbox.
fn token_lookup(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("fxgate.toml");
    let (provider, _sandbox) = rt.block_on(async {
        let sandbox = fxgate::sandbox::spawn("127.0.0.1:0".parse().expect("addr"), Default::default()).await.expect("sandbox");
        let toml = format!(
            "[corps.default]\nbase_url = \"{}\"\napp_id = \"sandbox-app\"\napp_secret = \"sandbox-secret\"\npermanent_code = \"sandbox-permanent-code\"\n",
            sandbox.url()
        );
        std::fs::write(&path, toml).expect("config");
        let cfg = fxgate::Config::load(&path, Some(Default::default())).expect("config");
        let corp = cfg.corps["default"].clone();
        let metrics = fxgate::metrics::Metrics::register(&prometheus::Registry::new()).expect("metrics");
        let endpoint = fxgate::upstream::token::Endpoint {
            timing: std::sync::Arc::new(fxgate::upstream::timing::Timing::new(&corp)),
            cfg: corp,
            base: sandbox.url(),
        };
        let provider = fxgate::upstream::token::TokenProvider::spawn(
            endpoint,
            fxgate::upstream::token::ApiStyle::Legacy,
            metrics,
            std::sync::Arc::new(fxgate::upstream::token::store::MemoryTokens),
            fxgate::clock::SystemClock::shared(),
        );
        provider.get().await.expect("first token");
        (provider, sandbox)
    });
    c.bench_function("token_lookup_cached", |b| {
        b.iter(|| rt.block_on(provider.get()).expect("token"))
    });
}

/// Recording a new upload in the embedded index and looking it up again, as every miss does
/// (the index keeps growing in the benchmark, as it does for a gateway that mostly sees new
/// files).
fn dedupe_index(c: &mut Criterion) {
    use fxgate::dedupe::{DedupeKey, DedupeStore, MediaRef, MemoryStore};
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let store = MemoryStore::new(
        std::time::Duration::from_secs(3600),
        1_000_000,
        fxgate::clock::SystemClock::shared(),
    );
    let mut n = 0u64;
    c.bench_function("dedupe_record_and_lookup", |b| {
        b.iter(|| {
            n += 1;
            let mut sha256 = [0u8; 32];
            sha256[..8].copy_from_slice(&n.to_le_bytes());
            let key = DedupeKey {
                corp: "default".into(),
                route: "message",
                sha256,
                filename: None,
            };
            let media = MediaRef {
                media_id: format!("media-{n}"),
                size: 10 * 1024,
                content_type: "image/jpeg".into(),
                created_at: std::time::SystemTime::now(),
                caller: "bench".into(),
                holders: vec!["bench".into()],
            };
            rt.block_on(async {
                store.put(key.clone(), media).await.expect("recorded");
                store.get(&key).await.ok().flatten().expect("found")
            })
        })
    });
}

criterion_group!(
    benches,
    hashing,
    multipart,
    per_request,
    token_lookup,
    dedupe_index
);
criterion_main!(benches);
