//! End-to-end load benchmark: real processes on loopback, one run, ratios against baselines
//! measured in the same run.
//!
//! `cargo bench --bench e2e` starts `fxgate sandbox --discard` (a sink that reads, hashes and
//! drops every byte) and `fxgate serve` in front of it, then drives them with a hyper-based
//! load generator (bounded in time and count) and prints a Markdown table:
//!
//! * `small upload, fxgate` — 10 KiB raw uploads of distinct content (dedupe misses), c=64;
//! * `dedupe hit, fxgate` — the same size, claimed by `Repr-Digest` with an empty body, c=64:
//!   the caller sends headers only and gets the mediaId back;
//! * bytes on the wire saved per hit, for 10 KiB and 5 MiB files.
//!
//! Environment: `FXGATE_BENCH_SECS` (default 5) per workload.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use sha2::Digest as _;

#[path = "support/procs.rs"]
mod procs;

type Http = Client<HttpConnector, Full<Bytes>>;

/// One workload's results.
struct Outcome {
    name: String,
    requests: u64,
    errors: u64,
    elapsed: Duration,
    latencies: Vec<Duration>,
    body_bytes: u64,
}

impl Outcome {
    fn rps(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }
    fn pct(&self, p: f64) -> Duration {
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        let i = ((self.latencies.len() as f64 - 1.0) * p).round() as usize;
        self.latencies[i]
    }
    fn mib_s(&self) -> f64 {
        self.body_bytes as f64 / (1024.0 * 1024.0) / self.elapsed.as_secs_f64()
    }
}

/// Runs `make(i)` requests with `concurrency` workers for `secs` (and at most `max` requests).
async fn drive(
    http: &Http,
    name: &str,
    concurrency: usize,
    secs: u64,
    max: u64,
    make: Arc<dyn Fn(u64) -> http::Request<Full<Bytes>> + Send + Sync>,
) -> Outcome {
    let next = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let body_bytes = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(secs);
    let started = Instant::now();
    let workers = (0..concurrency).map(|_| {
        let (http, next, errors, body_bytes, make) = (
            http.clone(),
            next.clone(),
            errors.clone(),
            body_bytes.clone(),
            make.clone(),
        );
        tokio::spawn(async move {
            let mut lat = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= max || Instant::now() >= deadline {
                    return lat;
                }
                let req = make(i);
                let sent = http_body::Body::size_hint(req.body()).exact().unwrap_or(0);
                let t = Instant::now();
                let ok = match http.request(req).await {
                    Ok(resp) => {
                        let status = resp.status();
                        let body = resp
                            .into_body()
                            .collect()
                            .await
                            .map(|b| b.to_bytes())
                            .unwrap_or_default();
                        // Fxiaoke-style answers say success in the body, plain sinks in the status.
                        status.is_success()
                            && serde_json::from_slice::<serde_json::Value>(&body)
                                .map_or(true, |v| v.get("errorCode").is_none_or(|c| c == 0))
                    }
                    Err(_) => false,
                };
                lat.push(t.elapsed());
                if ok {
                    body_bytes.fetch_add(sent, Ordering::Relaxed);
                } else {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    });
    let mut latencies: Vec<Duration> = Vec::new();
    for w in futures_util::future::join_all(workers).await {
        latencies.extend(w.unwrap_or_default());
    }
    let elapsed = started.elapsed();
    latencies.sort();
    Outcome {
        name: name.to_string(),
        requests: latencies.len() as u64,
        errors: errors.load(Ordering::Relaxed),
        elapsed,
        latencies,
        body_bytes: body_bytes.load(Ordering::Relaxed),
    }
}

fn jpeg(len: usize, seed: u64) -> Bytes {
    let mut v = vec![0xFF, 0xD8, 0xFF, 0xE0];
    v.extend_from_slice(&seed.to_le_bytes());
    v.resize(len, 0x5A);
    Bytes::from(v)
}

fn repr_digest(b: &[u8]) -> String {
    format!(
        "sha-256=:{}:",
        base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(b))
    )
}

fn upload_req(url: &str, body: Bytes, claim: Option<&str>) -> http::Request<Full<Bytes>> {
    let mut b = http::Request::post(url)
        .header("authorization", format!("Bearer {}", procs::BENCH_KEY))
        .header("content-type", "image/jpeg");
    if let Some(c) = claim {
        b = b.header("repr-digest", c);
    }
    b.body(Full::new(body)).expect("request")
}

fn print(rows: &[Outcome]) {
    println!("| workload | requests | errors | req/s | MiB/s | p50 | p99 |");
    println!("|---|---|---|---|---|---|---|");
    for o in rows {
        println!(
            "| {} | {} | {} | {:.0} | {:.1} | {:.2} ms | {:.2} ms |",
            o.name,
            o.requests,
            o.errors,
            o.rps(),
            o.mib_s(),
            o.pct(0.50).as_secs_f64() * 1e3,
            o.pct(0.99).as_secs_f64() * 1e3
        );
    }
}

fn main() {
    // `cargo bench` passes `--bench`; a filter argument would be ignored, not misread.
    let secs: u64 = std::env::var("FXGATE_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let sandbox = procs::Sandbox::spawn(&["--discard"]);
        let gw = procs::Gateway::spawn(&sandbox.url);
        let mut http_conn = HttpConnector::new();
        http_conn.set_nodelay(true);
        let http: Http = Client::builder(TokioExecutor::new()).pool_max_idle_per_host(256).build(http_conn);
        let upload_url = format!("{}/media/upload/message?filename=b.jpg", gw.url);
        let mut rows = Vec::new();

        // Warm-up: token fetched, connections pooled.
        let warm_url = upload_url.clone();
        rows.push(drive(&http, "warm-up", 8, 1, 200, Arc::new(move |i| upload_req(&warm_url, jpeg(10 * 1024, u64::MAX - i), None))).await);
        rows.clear();

        let url = upload_url.clone();
        rows.push(
            drive(&http, "small upload 10 KiB, fxgate (dedupe miss), c=64", 64, secs, 200_000, Arc::new(move |i| upload_req(&url, jpeg(10 * 1024, i), None)))
                .await,
        );

        // One known file, then digest-only claims of it (empty body: headers only).
        let known = jpeg(10 * 1024, 1 << 40);
        let claim = repr_digest(&known);
        let seed = http.request(upload_req(&upload_url, known.clone(), Some(&claim))).await.expect("seed upload");
        assert!(seed.status().is_success());
        let url = upload_url.clone();
        let c = claim.clone();
        rows.push(
            drive(&http, "dedupe hit by digest (headers only), fxgate, c=64", 64, secs, 500_000, Arc::new(move |_| upload_req(&url, Bytes::new(), Some(&c))))
                .await,
        );
        print(&rows);
        let ratio = rows[1].rps() / rows[0].rps();
        println!();
        println!("dedupe hits vs plain small uploads: {ratio:.2}x the requests per second");
        let hits = rows[1].requests - rows[1].errors;
        println!(
            "bytes on the wire saved by {hits} hits: {:.1} MiB of 10 KiB files (a 5 MiB file saves 5 MiB per hit: {:.1} GiB at this rate)",
            hits as f64 * 10.0 / 1024.0,
            hits as f64 * 5.0 / 1024.0
        );
        println!("fxgate peak RSS: {} KiB", gw.peak_rss_kib());
    });
}
