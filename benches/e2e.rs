//! End-to-end benchmark, one run, ratios against baselines measured in the same run:
//!
//! * **direct**: client → sink;
//! * **nginx**: client → nginx (`proxy_request_buffering off`, HTTP/1.1 keep-alive upstream) → sink;
//! * **fxgate**: client → fxgate (auth, token injection, SHA-256, dedupe index) → sink.
//!
//! The sink is `fxgate sandbox --discard`: it parses the multipart body and reads every byte
//! (it neither hashes nor keeps them). The client is the hyper load generator below; every
//! upload carries distinct bytes (so dedupe never short-cuts the fxgate path), and each
//! workload is bounded in time (`FXGATE_BENCH_SECS` per target, default 5, split into
//! `FXGATE_BENCH_ROUNDS` interleaved rounds, default 3) and count. CPU time and resident
//! memory of the proxy processes come from /proc. Prints Markdown.
//!
//! `bash benches/run.sh` installs nginx-light when missing and runs this; without nginx the
//! nginx rows are skipped.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use sha2::Digest as _;

#[path = "support/procs.rs"]
mod procs;

type ReqBody = BoxBody<Bytes, std::io::Error>;
type Http = Client<HttpConnector, ReqBody>;

const MIB: usize = 1 << 20;
const BOUNDARY: &str = "fxgatebenchboundary";

/// Where requests go and how they authenticate.
#[derive(Clone)]
struct Target {
    name: &'static str,
    base: String,
    /// `Some((token, corp))` for direct/nginx (Fxiaoke credentials in the query), `None` for fxgate.
    fx: Option<(String, String)>,
}

impl Target {
    fn url(&self) -> String {
        match &self.fx {
            Some((token, corp)) => format!(
                "{}/media/upload/message?corpAccessToken={token}&corpId={corp}&thirdTraceId={}",
                self.base,
                uuid::Uuid::new_v4()
            ),
            None => format!("{}/media/upload/message", self.base),
        }
    }
}

/// A multipart upload of `shared.len() + 12` bytes, distinct by `n`, without copying `shared`.
fn upload(
    target: &Target,
    n: u64,
    shared: &Bytes,
    pace: Option<Duration>,
) -> http::Request<ReqBody> {
    let mut head = format!(
        "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"media\"; filename=\"b.jpg\"\r\nContent-Type: image/jpeg\r\n\r\n"
    )
    .into_bytes();
    head.extend_from_slice(&[0xFF, 0xD8, 0xFF, 0xE0]);
    head.extend_from_slice(&n.to_le_bytes());
    let tail = Bytes::from(format!("\r\n--{BOUNDARY}--\r\n"));
    let len = head.len() + shared.len() + tail.len();
    let body: ReqBody = match pace {
        None => StreamBody::new(futures_util::stream::iter(
            [Bytes::from(head), shared.clone(), tail]
                .into_iter()
                .map(|b| Ok(Frame::data(b))),
        ))
        .boxed(),
        Some(every) => {
            // Slow client: 64 KiB per `every`.
            let mut pieces: Vec<Bytes> = vec![Bytes::from(head)];
            let mut off = 0;
            while off < shared.len() {
                let end = (off + 64 * 1024).min(shared.len());
                pieces.push(shared.slice(off..end));
                off = end;
            }
            pieces.push(tail);
            let stream =
                futures_util::stream::unfold(pieces.into_iter(), move |mut it| async move {
                    let next = it.next()?;
                    tokio::time::sleep(every).await;
                    Some((Ok(Frame::data(next)), it))
                });
            StreamBody::new(stream).boxed()
        }
    };
    multipart_post(target, len, body)
}

/// A multipart upload of `len` bytes to `target`'s upload URL, with fxgate's key when it is
/// fxgate.
fn multipart_post(target: &Target, len: usize, body: ReqBody) -> http::Request<ReqBody> {
    let mut b = http::Request::post(target.url())
        .header(
            "content-type",
            format!("multipart/form-data; boundary={BOUNDARY}"),
        )
        .header("content-length", len);
    if target.fx.is_none() {
        b = b.header("authorization", format!("Bearer {}", procs::BENCH_KEY));
    }
    b.body(body).expect("request")
}

/// The head and tail of a three-frame upload of `len` bytes (a JPEG; the counter between them
/// makes each upload distinct without copying either).
fn split_parts(len: usize) -> Arc<(Bytes, Bytes)> {
    let file = len - 16;
    let mut head = format!(
        "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"media\"; filename=\"b.jpg\"\r\nContent-Type: image/jpeg\r\n\r\n"
    )
    .into_bytes();
    head.extend_from_slice(&[0xFF, 0xD8, 0xFF, 0xE0]);
    head.resize(head.len() + file / 2 - 4, 0x42);
    let mut tail = vec![0x42u8; file - file / 2];
    tail.extend_from_slice(format!("\r\n--{BOUNDARY}--\r\n").as_bytes());
    Arc::new((Bytes::from(head), Bytes::from(tail)))
}

/// A multipart upload sent as head, a 16-byte counter, tail.
fn split_upload(target: &Target, n: u64, parts: &(Bytes, Bytes)) -> http::Request<ReqBody> {
    let mut counter = [0u8; 16];
    counter[..8].copy_from_slice(&n.to_le_bytes());
    let len = parts.0.len() + 16 + parts.1.len();
    let body = StreamBody::new(futures_util::stream::iter(
        [
            parts.0.clone(),
            Bytes::copy_from_slice(&counter),
            parts.1.clone(),
        ]
        .into_iter()
        .map(|b| Ok(Frame::data(b))),
    ))
    .boxed();
    multipart_post(target, len, body)
}

/// A large file of `shared.len() + 16` bytes, distinct by `n`: to fxgate as a File Service
/// upload (raw body, `/media/upload/file`), to the baselines as a CRM document (multipart,
/// `/media/upload?type=document`: the sink reads every byte of both and keeps none).
fn large_file(target: &Target, n: u64, shared: &Bytes) -> http::Request<ReqBody> {
    let mut first = [0u8; 16];
    first[..8].copy_from_slice(&n.to_le_bytes());
    let Some((token, corp)) = &target.fx else {
        let len = 16 + shared.len();
        let body = StreamBody::new(futures_util::stream::iter(
            [Bytes::copy_from_slice(&first), shared.clone()]
                .into_iter()
                .map(|b| Ok(Frame::data(b))),
        ))
        .boxed();
        return http::Request::post(format!(
            "{}/media/upload/file?filename=b{n}.pdf",
            target.base
        ))
        .header("authorization", format!("Bearer {}", procs::BENCH_KEY))
        .header("content-type", "application/pdf")
        .header("content-length", len)
        .body(body)
        .expect("file upload");
    };
    let head = format!(
        "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"media\"; filename=\"b.pdf\"\r\nContent-Type: application/pdf\r\n\r\n"
    );
    let tail = format!("\r\n--{BOUNDARY}--\r\n");
    let len = head.len() + 16 + shared.len() + tail.len();
    let body = StreamBody::new(futures_util::stream::iter(
        [
            Bytes::from(head),
            Bytes::copy_from_slice(&first),
            shared.clone(),
            Bytes::from(tail),
        ]
        .into_iter()
        .map(|b| Ok(Frame::data(b))),
    ))
    .boxed();
    http::Request::post(format!(
        "{}/media/upload?type=document&corpAccessToken={token}&corpId={corp}&thirdTraceId={}",
        target.base,
        uuid::Uuid::new_v4()
    ))
    .header(
        "content-type",
        format!("multipart/form-data; boundary={BOUNDARY}"),
    )
    .header("content-length", len)
    .body(body)
    .expect("document upload")
}

fn full(b: Bytes) -> ReqBody {
    Full::new(b).map_err(|never| match never {}).boxed()
}

/// One workload's measurements.
struct Row {
    target: &'static str,
    workload: String,
    requests: u64,
    errors: u64,
    elapsed: Duration,
    latencies: Vec<Duration>,
    bytes: u64,
    cpu: f64,
    /// CPU seconds of processes the proxy depends on (redis-server for fxgate-redis).
    side_cpu: f64,
    peak_rss_kib: u64,
    /// Busy and total CPU seconds of the whole machine during the row.
    machine_busy: f64,
    machine_total: f64,
}

impl Row {
    fn rps(&self) -> f64 {
        (self.requests - self.errors) as f64 / self.elapsed.as_secs_f64()
    }
    fn mib_s(&self) -> f64 {
        self.bytes as f64 / MIB as f64 / self.elapsed.as_secs_f64()
    }
    fn pct(&self, p: f64) -> Duration {
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        self.latencies[((self.latencies.len() - 1) as f64 * p).round() as usize]
    }
    fn cpu_per_gib(&self) -> f64 {
        if self.bytes == 0 {
            return 0.0;
        }
        self.cpu / (self.bytes as f64 / (1u64 << 30) as f64)
    }
    fn cpu_ms_per_req(&self) -> f64 {
        self.cpu * 1e3 / (self.requests - self.errors).max(1) as f64
    }
    fn side_us_per_req(&self) -> f64 {
        self.side_cpu * 1e6 / (self.requests - self.errors).max(1) as f64
    }
    /// Adds a later round of the same workload and target.
    fn merge(&mut self, other: Row) {
        self.requests += other.requests;
        self.errors += other.errors;
        self.elapsed += other.elapsed;
        self.latencies.extend(other.latencies);
        self.latencies.sort();
        self.bytes += other.bytes;
        self.cpu += other.cpu;
        self.side_cpu += other.side_cpu;
        self.peak_rss_kib = self.peak_rss_kib.max(other.peak_rss_kib);
        self.machine_busy += other.machine_busy;
        self.machine_total += other.machine_total;
    }
    /// Share of the machine's CPU in use during the row.
    fn busy(&self) -> f64 {
        self.machine_busy / self.machine_total.max(1e-9)
    }
}

/// Runs `make(i)` with `concurrency` workers for `secs` (at most `max` requests), measuring the
/// CPU and peak RSS of `pids`, and the CPU of `side` (a store the proxy uses).
// Each argument is one knob of a workload; a struct would only rename them.
#[allow(clippy::too_many_arguments)]
async fn drive(
    http: &Http,
    target: &'static str,
    workload: &str,
    concurrency: usize,
    secs: f64,
    max: u64,
    pids: &[u32],
    side: &[u32],
    make: Arc<dyn Fn(u64) -> (http::Request<ReqBody>, u64) + Send + Sync>,
) -> Row {
    let next = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let bytes = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let cpu0 = procs::cpu_secs(pids);
    let side0 = procs::cpu_secs(side);
    let machine0 = procs::machine_secs();
    let sampling = Arc::new(AtomicU64::new(1));
    let peak = Arc::new(AtomicU64::new(0));
    let sampler = {
        let (sampling, peak, pids) = (sampling.clone(), peak.clone(), pids.to_vec());
        tokio::spawn(async move {
            while sampling.load(Ordering::Relaxed) == 1 {
                peak.fetch_max(procs::rss_kib(&pids), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let started = Instant::now();
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let (http, next, errors, bytes, make) = (
                http.clone(),
                next.clone(),
                errors.clone(),
                bytes.clone(),
                make.clone(),
            );
            tokio::spawn(async move {
                let mut lat = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= max || Instant::now() >= deadline {
                        return lat;
                    }
                    let (req, size) = make(i);
                    let t = Instant::now();
                    let ok = match tokio::time::timeout(Duration::from_secs(60), http.request(req))
                        .await
                    {
                        Ok(Ok(resp)) => {
                            let status = resp.status();
                            let body = resp
                                .into_body()
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            status.is_success()
                                && serde_json::from_slice::<serde_json::Value>(&body)
                                    .is_ok_and(|v| v.get("errorCode").is_some_and(|c| c == 0))
                        }
                        _ => false,
                    };
                    lat.push(t.elapsed());
                    if ok {
                        bytes.fetch_add(size, Ordering::Relaxed);
                    } else {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for w in workers {
        latencies.extend(w.await.unwrap_or_default());
    }
    let elapsed = started.elapsed();
    sampling.store(0, Ordering::Relaxed);
    let _ = sampler.await;
    latencies.sort();
    Row {
        target,
        workload: workload.to_string(),
        requests: latencies.len() as u64,
        errors: errors.load(Ordering::Relaxed),
        elapsed,
        latencies,
        bytes: bytes.load(Ordering::Relaxed),
        cpu: procs::cpu_secs(pids) - cpu0,
        side_cpu: procs::cpu_secs(side) - side0,
        peak_rss_kib: peak.load(Ordering::Relaxed),
        machine_busy: procs::machine_secs().0 - machine0.0,
        machine_total: procs::machine_secs().1 - machine0.1,
    }
}

async fn fetch_token(http: &Http, sink: &str) -> (String, String) {
    let body = serde_json::json!({"appId": "sandbox-app", "appSecret": "sandbox-secret", "permanentCode": "sandbox-permanent-code"});
    let req = http::Request::post(format!(
        "{sink}/cgi/corpAccessToken/get/V2?thirdTraceId={}",
        uuid::Uuid::new_v4()
    ))
    .header("content-type", "application/json")
    .body(full(Bytes::from(body.to_string())))
    .expect("token request");
    let resp = http.request(req).await.expect("token call");
    let v: serde_json::Value = serde_json::from_slice(
        &resp
            .into_body()
            .collect()
            .await
            .expect("token body")
            .to_bytes(),
    )
    .expect("token json");
    (
        v["corpAccessToken"].as_str().expect("token").to_string(),
        v["corpId"].as_str().expect("corpId").to_string(),
    )
}

/// Single-core CPU seconds SHA-256 spends per GiB here (the floor fxgate adds over nginx).
fn sha256_secs_per_gib() -> f64 {
    let buf = vec![0x5Au8; 4 * MIB];
    let t = Instant::now();
    let mut h = sha2::Sha256::new();
    for _ in 0..64 {
        h.update(&buf);
    }
    std::hint::black_box(h.finalize());
    t.elapsed().as_secs_f64() * 4.0 // 256 MiB hashed → per GiB
}

/// A `/cgi/crm/v2/data/query` call of about 1 KiB, distinct by `n`. Direct and nginx carry the
/// Fxiaoke credentials in the body, as an SDK would; fxgate's caller leaves them out and
/// fxgate splices them in.
fn json_call(target: &Target, n: u64) -> (http::Request<ReqBody>, u64) {
    let mut body = serde_json::json!({
        "currentOpenUserId": "FSUID_BENCH",
        "data": {
            "dataObjectApiName": "AccountObj",
            "search_query_info": {
                "limit": 10,
                "offset": n,
                "filters": [{"field_name": "name", "operator": "LIKE", "field_values": ["x".repeat(800)]}],
            },
        },
    });
    let url = format!("{}/cgi/crm/v2/data/query", target.base);
    let b = match &target.fx {
        Some((token, corp)) => {
            body["corpAccessToken"] = token.as_str().into();
            body["corpId"] = corp.as_str().into();
            http::Request::post(format!("{url}?thirdTraceId={}", uuid::Uuid::new_v4()))
        }
        None => {
            http::Request::post(url).header("authorization", format!("Bearer {}", procs::BENCH_KEY))
        }
    };
    let body = Bytes::from(body.to_string());
    let len = body.len() as u64;
    let req = b
        .header("content-type", "application/json")
        .body(full(body))
        .expect("json call");
    (req, len)
}

/// `fxgate_store_calls_total` summed over its series (Redis round trips so far).
async fn store_calls(http: &Http, admin: &str) -> f64 {
    let req = http::Request::get(format!("{admin}/metrics"))
        .body(full(Bytes::new()))
        .expect("scrape");
    let Ok(resp) = http.request(req).await else {
        return 0.0;
    };
    let text = resp
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    String::from_utf8_lossy(&text)
        .lines()
        .filter(|l| l.starts_with("fxgate_store_calls_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// What a workload sends.
#[derive(Clone)]
enum Load {
    Upload(Bytes, u64),
    /// The same upload as three frames: the head (multipart head and the file's first half),
    /// a 16-byte counter, the tail (the second half and the closing delimiter), the shape of
    /// an independent harness's client (issue 31).
    Split(Arc<(Bytes, Bytes)>, u64),
    /// A File Service upload (fxgate) or a CRM document (the baselines).
    File(Bytes),
    Json,
}

impl Load {
    fn request(&self, target: &Target, n: u64) -> (http::Request<ReqBody>, u64) {
        match self {
            Load::Upload(body, size) => (upload(target, n, body, None), *size),
            Load::Split(parts, size) => (split_upload(target, n, parts), *size),
            Load::File(body) => (large_file(target, n, body), 16 + body.len() as u64),
            Load::Json => json_call(target, n),
        }
    }
}

/// A digest-only claim of a file fxgate already holds (headers only, no body).
fn claim(base: &str, digest: &str) -> http::Request<ReqBody> {
    http::Request::post(format!("{base}/media/upload/message"))
        .header("authorization", format!("Bearer {}", procs::BENCH_KEY))
        .header("repr-digest", digest)
        .body(full(Bytes::new()))
        .expect("claim")
}

/// Uploads one known 10 KiB file through `t` and returns its `Repr-Digest`.
async fn seed(http: &Http, t: &Target, small: &Bytes) -> String {
    let resp = http
        .request(upload(t, u64::MAX, small, None))
        .await
        .expect("seed upload");
    assert!(resp.status().is_success());
    let mut file = vec![0xFF, 0xD8, 0xFF, 0xE0];
    file.extend_from_slice(&u64::MAX.to_le_bytes());
    file.extend_from_slice(small);
    format!(
        "sha-256=:{}:",
        base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(&file))
    )
}

fn main() {
    let secs: f64 = std::env::var("FXGATE_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5.0);
    let rounds: usize = std::env::var("FXGATE_BENCH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(3);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        // FXGATE_BENCH_SINK=plain: a sink that reads each upload's frames and discards them
        // unparsed (an independent harness's sink) instead of parsing the multipart body.
        let plain = std::env::var("FXGATE_BENCH_SINK").is_ok_and(|s| s == "plain");
        let sink_args: &[&str] = if plain {
            &["--discard", "--plain", "--no-path-limit"]
        } else {
            &["--discard", "--no-path-limit"]
        };
        eprintln!("sink: {}", if plain { "plain (frames read and discarded)" } else { "multipart (parsed, bytes counted)" });
        let sink = procs::Sandbox::spawn(sink_args);
        let mut conn = HttpConnector::new();
        conn.set_nodelay(true);
        let http: Http = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(512)
            .build(conn);
        // First, before any gateway asks for one: the sink refuses concurrent token calls.
        let fx = fetch_token(&http, &sink.url).await;
        let gw = procs::Gateway::spawn(&sink.url);
        let nginx = procs::Nginx::spawn(&sink.url, false);
        let tuned = procs::Nginx::spawn(&sink.url, true);
        let redis = procs::RedisServer::spawn();
        let gw_redis = redis.as_ref().map(|r| {
            procs::Gateway::spawn_with(
                &sink.url,
                &format!("[store]\nbackend = \"redis\"\nredis_url = \"{}\"\n", r.url),
            )
        });
        // For profiling: `perf record -p <pid>` while a workload runs.
        eprintln!(
            "pids: sink {} fxgate {:?} nginx {:?} nginx-64k {:?}",
            sink.pid(),
            gw.pids(),
            nginx.as_ref().map(|n| n.pids()),
            tuned.as_ref().map(|n| n.pids())
        );
        let only = std::env::var("FXGATE_BENCH_ONLY").unwrap_or_default();
        // redis-server's CPU is counted beside fxgate-redis's own: it is the cost of that row.
        let redis_pids: Vec<u32> = redis.as_ref().map(|r| vec![r.pid()]).unwrap_or_default();
        let side = |name: &str| -> Vec<u32> {
            if name == "fxgate-redis" { redis_pids.clone() } else { Vec::new() }
        };
        let via = |name: &'static str, base: &str, fx: Option<(String, String)>| Target {
            name,
            base: base.to_string(),
            fx,
        };

        let mut targets = vec![(via("direct", &sink.url, Some(fx.clone())), vec![sink.pid()])];
        for (name, n) in [("nginx", &nginx), ("nginx-64k", &tuned)] {
            match n {
                Some(n) => targets.push((via(name, &n.url, Some(fx.clone())), n.pids())),
                None => eprintln!(
                    "nginx not found: {name} rows skipped (bash benches/run.sh installs nginx-light)"
                ),
            }
        }
        targets.push((via("fxgate", &gw.url, None), gw.pids()));
        // The Redis backend runs the small-request workloads only: what it changes is the
        // per-request store traffic, not the byte path.
        let redis_target = gw_redis.as_ref().map(|g| (via("fxgate-redis", &g.url, None), g.pids()));
        if redis_target.is_none() {
            eprintln!("redis-server not found: fxgate-redis rows skipped (apt-get install redis-server)");
        }

        let big = Bytes::from(vec![0x42u8; 5 * MIB - 12]);
        let split = split_parts(5 * MIB);
        let huge = Bytes::from(vec![0x42u8; 100 * MIB - 16]);
        let small = Bytes::from(vec![0x42u8; 10 * 1024 - 12]);
        let seed_n = Arc::new(AtomicU64::new(1));
        // Warm-up: fxgate's token, pooled connections everywhere.
        for (t, pids) in targets.iter().chain(&redis_target) {
            let (t2, s2, n2) = (t.clone(), small.clone(), seed_n.clone());
            drive(&http, t.name, "warm-up", 8, 1.0, 200, pids, &[],
                Arc::new(move |_| (upload(&t2, n2.fetch_add(1, Ordering::Relaxed), &s2, None), 10 * 1024)),
            )
            .await;
        }

        let mut rows: Vec<Row> = Vec::new();
        let mut round_trips: Vec<(&str, f64)> = Vec::new();
        for (label, load, conc) in [
            ("5 MiB upload, c=1", Load::Upload(big.clone(), 5 * MIB as u64), 1usize),
            ("5 MiB upload, c=16", Load::Upload(big.clone(), 5 * MIB as u64), 16),
            ("5 MiB upload, c=64", Load::Upload(big.clone(), 5 * MIB as u64), 64),
            ("5 MiB upload in 3 frames, c=1", Load::Split(split.clone(), 5 * MIB as u64), 1),
            ("5 MiB upload in 3 frames, c=16", Load::Split(split.clone(), 5 * MIB as u64), 16),
            ("5 MiB upload in 3 frames, c=64", Load::Split(split.clone(), 5 * MIB as u64), 64),
            ("10 KiB upload, c=64", Load::Upload(small.clone(), 10 * 1024), 64),
            ("1 KiB JSON call (/cgi/crm/v2/data/query), c=64", Load::Json, 64),
            ("100 MiB file (File Service), c=1", Load::File(huge.clone()), 1),
        ] {
            if !label.contains(only.as_str()) {
                continue;
            }
            let mut these: Vec<_> = targets.iter().collect();
            if label.starts_with("10 KiB") {
                these.extend(&redis_target);
            }
            let calls0 = match &gw_redis {
                Some(g) => store_calls(&http, &g.admin).await,
                None => 0.0,
            };
            // Targets take turns, `rounds` times, so a neighbour's load on this shared machine
            // falls on all of them alike rather than on whichever ran while it lasted.
            let first = rows.len();
            for round in 0..rounds {
                for (i, (t, pids)) in these.iter().enumerate() {
                    let (t2, l2, n2) = (t.clone(), load.clone(), seed_n.clone());
                    // The direct row measures the sink itself; the proxies' rows their own
                    // processes.
                    let row = drive(&http, t.name, label, conc, secs / rounds as f64, 1_000_000, pids, &side(t.name),
                        Arc::new(move |_| l2.request(&t2, n2.fetch_add(1, Ordering::Relaxed))),
                    )
                    .await;
                    if round == 0 {
                        rows.push(row);
                    } else {
                        rows[first + i].merge(row);
                    }
                }
            }
            if let (Some(g), true) = (&gw_redis, label.starts_with("10 KiB")) {
                let calls = store_calls(&http, &g.admin).await - calls0;
                if let Some(r) = find(&rows, "fxgate-redis", label) {
                    round_trips.push(("10 KiB upload (a miss)", calls / r.requests.max(1) as f64));
                }
            }
        }

        // Dedupe hits: one known 10 KiB file, then digest-only claims of it (headers only),
        // on each backend.
        let mut hit_targets = vec![(via("fxgate", &gw.url, None), gw.pids(), None)];
        if let (Some(t), Some(g)) = (&redis_target, &gw_redis) {
            hit_targets.push((t.0.clone(), t.1.clone(), Some(g.admin.clone())));
        }
        if "dedupe hit".contains(only.as_str()) || only.starts_with("10 KiB") {
            for (t, pids, admin) in &hit_targets {
                let known = seed(&http, t, &small).await;
                let (base, side) = (t.base.clone(), side(t.name));
                let row = drive(&http, t.name, "dedupe hit by digest (headers only), c=64", 64, secs,
                    1_000_000, pids, &side, Arc::new(move |_| (claim(&base, &known), 0)),
                );
                let row = counting_round_trips(&http, admin.as_deref(), "dedupe hit by digest", &mut round_trips, row).await;
                rows.push(row);
            }
        }

        // Dedupe hits by content: the known 10 KiB file sent whole again, against nginx
        // answering by itself after reading the same body (`return 200`): what a hit costs
        // beyond reading the request is the hash and the lookup.
        if CONTENT_HIT.contains(only.as_str()) || only.starts_with("10 KiB") {
            let nginx_return = tuned.as_ref().map(|n| {
                let base = format!("{}/return", n.url);
                (via("nginx-return", &base, Some(fx.clone())), n.pids(), None)
            });
            for (t, pids, admin) in nginx_return.iter().chain(&hit_targets) {
                if t.fx.is_none() {
                    seed(&http, t, &small).await;
                }
                let (t2, s2, side) = (t.clone(), small.clone(), side(t.name));
                let row = drive(&http, t.name, CONTENT_HIT, 64, secs, 1_000_000, pids, &side,
                    Arc::new(move |_| (upload(&t2, u64::MAX, &s2, None), 10 * 1024)),
                );
                let row = counting_round_trips(&http, admin.as_deref(), "dedupe hit by content", &mut round_trips, row).await;
                rows.push(row);
            }
        }

        // 256 concurrent slow uploads (5 MiB at ~1 MiB/s each): memory under many open streams,
        // on fresh proxy processes so earlier runs (fxgate's dedupe index, allocator arenas)
        // do not count.
        drop(targets);
        drop((gw, gw_redis, nginx, tuned, redis));
        let mut slow_rows = Vec::new();
        if only.is_empty() || "256 slow".contains(only.as_str()) {
            let gw = procs::Gateway::spawn(&sink.url);
            let nginx = procs::Nginx::spawn(&sink.url, true);
            let mut targets = Vec::new();
            if let Some(n) = &nginx {
                targets.push((via("nginx-64k", &n.url, Some(fx.clone())), n.pids()));
            }
            targets.push((via("fxgate", &gw.url, None), gw.pids()));
            for (t, pids) in &targets {
                let (t2, b2, n2) = (t.clone(), big.clone(), seed_n.clone());
                slow_rows.push(
                    drive(&http, t.name, "256 slow 5 MiB uploads (~1 MiB/s each)", 256, 0.5, 256, pids, &[],
                        Arc::new(move |_| {
                            let pace = Some(Duration::from_millis(62));
                            (upload(&t2, n2.fetch_add(1, Ordering::Relaxed), &b2, pace), 5 * MIB as u64)
                        }),
                    )
                    .await,
                );
            }
        }

        // The median of five: one measurement can land on a busy moment.
        let mut sha: Vec<f64> = (0..5).map(|_| sha256_secs_per_gib()).collect();
        sha.sort_by(f64::total_cmp);
        report(&rows, &slow_rows, sha[2], secs, rounds);
        report_redis(&rows, &round_trips);
    });
}

/// Runs `row` (a `drive` future) and, for a Redis-backed gateway (`admin`, its admin URL),
/// records the Redis round trips it made per request under `what`.
async fn counting_round_trips(
    http: &Http,
    admin: Option<&str>,
    what: &'static str,
    round_trips: &mut Vec<(&'static str, f64)>,
    row: impl std::future::Future<Output = Row>,
) -> Row {
    let calls0 = match admin {
        Some(a) => store_calls(http, a).await,
        None => 0.0,
    };
    let row = row.await;
    if let Some(a) = admin {
        let calls = store_calls(http, a).await - calls0;
        round_trips.push((what, calls / row.requests.max(1) as f64));
    }
    row
}

/// The known 10 KiB file sent whole again (a dedupe hit found by its content).
const CONTENT_HIT: &str = "dedupe hit by content (10 KiB body sent), c=64";

fn find<'a>(rows: &'a [Row], target: &str, workload: &str) -> Option<&'a Row> {
    rows.iter()
        .find(|r| r.target == target && r.workload == workload)
}

fn report(rows: &[Row], slow: &[Row], sha: f64, secs: f64, rounds: usize) {
    let commit = std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let date = std::process::Command::new("date")
        .arg("-u")
        .arg("+%Y-%m-%d")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!("### End-to-end benchmark — {date}, {cores} cores, commit {commit}, {secs} s per workload and target, in {rounds} interleaved rounds\n");
    println!("| workload | target | requests | errors | req/s | MiB/s | p50 | p99 | proxy CPU-s/GiB | proxy CPU ms/req | peak RSS | machine busy |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    for r in rows.iter().chain(slow) {
        let proxy = r.target != "direct";
        println!(
            "| {} | {} | {} | {} | {:.0} | {:.1} | {:.2} ms | {:.2} ms | {} | {} | {} | {:.0} % |",
            r.workload,
            r.target,
            r.requests,
            r.errors,
            r.rps(),
            r.mib_s(),
            r.pct(0.5).as_secs_f64() * 1e3,
            r.pct(0.99).as_secs_f64() * 1e3,
            if proxy && r.bytes > 0 {
                format!("{:.2}", r.cpu_per_gib())
            } else {
                "–".into()
            },
            if proxy {
                format!("{:.3}", r.cpu_ms_per_req())
            } else {
                "–".into()
            },
            if proxy {
                format!("{:.1} MiB", r.peak_rss_kib as f64 / 1024.0)
            } else {
                "–".into()
            },
            r.busy() * 100.0,
        );
    }
    println!("\nSHA-256 on this machine: {sha:.2} CPU-s/GiB (one core).\n");
    println!("Targets are against `nginx-64k` (64 KiB client body reads, as fxgate reads); `nginx` (its 16 KiB default) is shown for reference.\n");
    println!("| ratio | value | target | met |");
    println!("|---|---|---|---|");
    let line = |what: String, value: f64, goal: &str, ok: Option<bool>| {
        let met = match ok {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "–",
        };
        println!("| {what} | {value:.2} | {goal} | {met} |");
    };
    for w in [
        "5 MiB upload, c=1",
        "5 MiB upload, c=16",
        "5 MiB upload, c=64",
        "5 MiB upload in 3 frames, c=1",
        "5 MiB upload in 3 frames, c=16",
        "5 MiB upload in 3 frames, c=64",
        "100 MiB file (File Service), c=1",
    ] {
        let Some(f) = find(rows, "fxgate", w) else {
            continue;
        };
        for nginx in ["nginx-64k", "nginx"] {
            let Some(n) = find(rows, nginx, w) else {
                continue;
            };
            let target = nginx == "nginx-64k";
            let floor = n.cpu_per_gib() + sha;
            let c = f.cpu_per_gib() / floor;
            line(
                format!("{w}: fxgate CPU-s/GiB ÷ ({nginx} + SHA-256)"),
                c,
                if target { "≤ 1.1" } else { "–" },
                target.then_some(c <= 1.1),
            );
            // With client, sink and proxy sharing the cores, a saturated machine caps the rate
            // by the CPU per upload of all of them: had fxgate spent exactly nginx's CPU plus
            // SHA-256's, each upload would need the machine's CPU of the nginx row plus the
            // hash, at the same utilisation at best.
            let gib = n.bytes as f64 / (1u64 << 30) as f64;
            let machine_per_gib = n.machine_busy / gib.max(1e-9);
            let ceiling = (machine_per_gib / (n.busy() * (machine_per_gib + sha))).min(1.0);
            let r = f.mib_s() / n.mib_s();
            line(
                format!("{w}: fxgate/{nginx} MiB/s (ceiling at the CPU floor: {ceiling:.2})"),
                r,
                if target { "≥ ceiling" } else { "–" },
                target.then_some(r >= ceiling - 0.005),
            );
            if w.ends_with("c=64") {
                for (p, name) in [(0.5, "p50"), (0.99, "p99")] {
                    let l = f.pct(p).as_secs_f64() / n.pct(p).as_secs_f64().max(1e-9);
                    line(
                        format!("{w}: fxgate/{nginx} {name} latency"),
                        l,
                        if target { "≤ 1.5" } else { "–" },
                        target.then_some(l <= 1.5),
                    );
                }
            }
        }
        if let Some(d) = find(rows, "direct", w) {
            line(
                format!("{w}: fxgate/direct MiB/s"),
                f.mib_s() / d.mib_s(),
                "–",
                None,
            );
        }
    }
    for w in [
        "10 KiB upload, c=64",
        "1 KiB JSON call (/cgi/crm/v2/data/query), c=64",
    ] {
        let Some(f) = find(rows, "fxgate", w) else {
            continue;
        };
        let upload = w.starts_with("10 KiB");
        for nginx in ["nginx-64k", "nginx"] {
            let Some(n) = find(rows, nginx, w) else {
                continue;
            };
            let target = nginx == "nginx-64k";
            let c = f.cpu_ms_per_req() / n.cpu_ms_per_req();
            line(
                format!("{w}: fxgate/{nginx} CPU per request"),
                c,
                if target { "≤ 2.0" } else { "–" },
                target.then_some(c <= 2.0),
            );
            let r = f.rps() / n.rps();
            let goal = target && upload;
            line(
                format!("{w}: fxgate/{nginx} req/s"),
                r,
                if goal { "≥ 0.7" } else { "–" },
                goal.then_some(r >= 0.7),
            );
            if upload {
                if let Some(h) = rows.iter().find(|r| {
                    r.target == "fxgate" && r.workload.starts_with("dedupe hit by digest")
                }) {
                    let r = h.rps() / n.rps();
                    line(
                        format!("dedupe hits req/s ÷ {nginx} 10 KiB req/s"),
                        r,
                        if target { "≥ 1.5" } else { "–" },
                        target.then_some(r >= 1.5),
                    );
                }
            }
        }
    }
    if let (Some(f), Some(n)) = (
        find(rows, "fxgate", CONTENT_HIT),
        find(rows, "nginx-return", CONTENT_HIT),
    ) {
        let c = f.cpu_ms_per_req() / n.cpu_ms_per_req();
        line(
            "dedupe hit by content: fxgate CPU per request ÷ nginx answering by itself (`return 200`) after reading the same body".into(),
            c,
            "≤ 1.3",
            Some(c <= 1.3),
        );
        // Hashing every byte is a property, not overhead: the ratio cannot go below nginx's
        // cost plus the hash of the file, which this machine's SHA-256 speed sets.
        let sha_ms = sha * (10.0 * 1024.0) / (1u64 << 30) as f64 * 1e3;
        let floor = (n.cpu_ms_per_req() + sha_ms) / n.cpu_ms_per_req();
        line(
            "dedupe hit by content: the same ratio's floor, (nginx answering by itself + SHA-256 of the 10 KiB file) ÷ nginx".into(),
            floor,
            "–",
            None,
        );
        line(
            "dedupe hit by content: fxgate CPU per request ÷ that floor".into(),
            f.cpu_ms_per_req() / (n.cpu_ms_per_req() + sha_ms),
            "–",
            None,
        );
    }
    if let Some(s) = slow.iter().find(|r| r.target == "fxgate") {
        let mib = s.peak_rss_kib as f64 / 1024.0;
        line(
            "fxgate peak RSS, 256 slow 5 MiB uploads (MiB)".into(),
            mib,
            "≤ 48",
            Some(mib <= 48.0),
        );
    }
}

/// The Redis backend beside the memory one, and its round trips per request.
fn report_redis(rows: &[Row], round_trips: &[(&str, f64)]) {
    let pairs = [
        ("10 KiB upload, c=64", "10 KiB uploads"),
        (
            "dedupe hit by digest (headers only), c=64",
            "dedupe hits by digest",
        ),
        (CONTENT_HIT, "dedupe hits by content"),
    ];
    let mut any = false;
    for (w, what) in pairs {
        if let (Some(m), Some(r)) = (find(rows, "fxgate", w), find(rows, "fxgate-redis", w)) {
            if !any {
                println!("\n| Redis backend | value | target | met |");
                println!("|---|---|---|---|");
                any = true;
            }
            let ratio = r.rps() / m.rps();
            println!(
                "| {what}: redis/memory req/s | {ratio:.2} | ≥ 0.8 | {} |",
                if ratio >= 0.8 { "yes" } else { "**no**" }
            );
            let (mem_us, fx_us, redis_us) = (
                m.cpu_ms_per_req() * 1e3,
                r.cpu_ms_per_req() * 1e3,
                r.side_us_per_req(),
            );
            println!(
                "| {what}: CPU per request, µs: fxgate (memory) {mem_us:.1}; fxgate (redis) {fx_us:.1} + redis-server {redis_us:.1} = {:.1} | – | – | – |",
                fx_us + redis_us
            );
        }
    }
    for (what, n) in round_trips {
        println!("| {what}: Redis round trips per request (`fxgate_store_calls_total`) | {n:.2} | 1 | {} |", if *n <= 1.05 { "yes" } else { "**no**" });
    }
}
