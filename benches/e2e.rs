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
    /// Adds a later round of the same workload and target.
    fn merge(&mut self, other: Row) {
        self.requests += other.requests;
        self.errors += other.errors;
        self.elapsed += other.elapsed;
        self.latencies.extend(other.latencies);
        self.latencies.sort();
        self.bytes += other.bytes;
        self.cpu += other.cpu;
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
/// CPU and peak RSS of `pids`.
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
    make: Arc<dyn Fn(u64) -> (http::Request<ReqBody>, u64) + Send + Sync>,
) -> Row {
    let next = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let bytes = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let cpu0 = procs::cpu_secs(pids);
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
        let sink = procs::Sandbox::spawn(&["--discard"]);
        let gw = procs::Gateway::spawn(&sink.url);
        let nginx = procs::Nginx::spawn(&sink.url);
        let mut conn = HttpConnector::new();
        conn.set_nodelay(true);
        let http: Http = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(512)
            .build(conn);
        let fx = fetch_token(&http, &sink.url).await;
        // For profiling: `perf record -p <pid>` while a workload runs.
        eprintln!(
            "pids: sink {} fxgate {:?} nginx {:?}",
            sink.pid(),
            gw.pids(),
            nginx.as_ref().map(|n| n.pids())
        );
        let only = std::env::var("FXGATE_BENCH_ONLY").unwrap_or_default();

        let mut targets = vec![(
            Target {
                name: "direct",
                base: sink.url.clone(),
                fx: Some(fx.clone()),
            },
            vec![sink.pid()],
        )];
        if let Some(n) = &nginx {
            targets.push((
                Target {
                    name: "nginx",
                    base: n.url.clone(),
                    fx: Some(fx.clone()),
                },
                n.pids(),
            ));
        } else {
            eprintln!(
                "nginx not found: nginx rows skipped (bash benches/run.sh installs nginx-light)"
            );
        }
        targets.push((
            Target {
                name: "fxgate",
                base: gw.url.clone(),
                fx: None,
            },
            gw.pids(),
        ));

        let big = Bytes::from(vec![0x42u8; 5 * MIB - 12]);
        let small = Bytes::from(vec![0x42u8; 10 * 1024 - 12]);
        let seed = Arc::new(AtomicU64::new(1));
        // Warm-up: fxgate's token, pooled connections everywhere.
        for (t, pids) in &targets {
            let (t2, s2, seed2) = (t.clone(), small.clone(), seed.clone());
            drive(
                &http,
                t.name,
                "warm-up",
                8,
                1.0,
                200,
                pids,
                Arc::new(move |_| {
                    (
                        upload(&t2, seed2.fetch_add(1, Ordering::Relaxed), &s2, None),
                        10 * 1024,
                    )
                }),
            )
            .await;
        }

        let mut rows: Vec<Row> = Vec::new();
        for (label, body, conc, size) in [
            ("5 MiB upload, c=1", big.clone(), 1usize, 5 * MIB as u64),
            ("5 MiB upload, c=16", big.clone(), 16, 5 * MIB as u64),
            ("5 MiB upload, c=64", big.clone(), 64, 5 * MIB as u64),
            ("10 KiB upload, c=64", small.clone(), 64, 10 * 1024),
        ] {
            if !label.contains(only.as_str()) {
                continue;
            }
            // Targets take turns, `rounds` times, so a neighbour's load on this shared machine
            // falls on all of them alike rather than on whichever ran while it lasted.
            let first = rows.len();
            for round in 0..rounds {
                for (i, (t, pids)) in targets.iter().enumerate() {
                    let (t2, b2, seed2) = (t.clone(), body.clone(), seed.clone());
                    // The direct row measures the sink itself; the proxies' rows their own
                    // processes.
                    let row = drive(
                        &http,
                        t.name,
                        label,
                        conc,
                        secs / rounds as f64,
                        1_000_000,
                        pids,
                        Arc::new(move |_| {
                            (
                                upload(&t2, seed2.fetch_add(1, Ordering::Relaxed), &b2, None),
                                size,
                            )
                        }),
                    )
                    .await;
                    if round == 0 {
                        rows.push(row);
                    } else {
                        rows[first + i].merge(row);
                    }
                }
            }
        }

        // Dedupe hits: one known 10 KiB file, then digest-only claims of it (headers only).
        let known = {
            let t = &targets.last().expect("fxgate").0;
            let req = upload(t, u64::MAX, &small, None);
            let resp = http.request(req).await.expect("seed upload");
            assert!(resp.status().is_success());
            let mut file = vec![0xFF, 0xD8, 0xFF, 0xE0];
            file.extend_from_slice(&u64::MAX.to_le_bytes());
            file.extend_from_slice(&small);
            format!(
                "sha-256=:{}:",
                base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(&file))
            )
        };
        let gw_url = format!("{}/media/upload/message", gw.url);
        rows.push(
            drive(
                &http,
                "fxgate",
                "dedupe hit by digest (headers only), c=64",
                64,
                secs,
                1_000_000,
                &gw.pids(),
                Arc::new(move |_| {
                    let req = http::Request::post(gw_url.as_str())
                        .header("authorization", format!("Bearer {}", procs::BENCH_KEY))
                        .header("repr-digest", known.as_str())
                        .body(full(Bytes::new()))
                        .expect("claim");
                    (req, 0)
                }),
            )
            .await,
        );

        // 256 concurrent slow uploads (5 MiB at ~1 MiB/s each): memory under many open streams,
        // on fresh proxy processes so earlier runs (fxgate's dedupe index, allocator arenas)
        // do not count.
        drop(targets);
        drop(gw);
        drop(nginx);
        let gw = procs::Gateway::spawn(&sink.url);
        let nginx = procs::Nginx::spawn(&sink.url);
        let mut targets = Vec::new();
        if let Some(n) = &nginx {
            targets.push((
                Target {
                    name: "nginx",
                    base: n.url.clone(),
                    fx: Some(fx.clone()),
                },
                n.pids(),
            ));
        }
        targets.push((
            Target {
                name: "fxgate",
                base: gw.url.clone(),
                fx: None,
            },
            gw.pids(),
        ));
        let mut slow_rows = Vec::new();
        for (t, pids) in &targets {
            let (t2, b2, seed2) = (t.clone(), big.clone(), seed.clone());
            slow_rows.push(
                drive(
                    &http,
                    t.name,
                    "256 slow 5 MiB uploads (~1 MiB/s each)",
                    256,
                    0.5,
                    256,
                    pids,
                    Arc::new(move |_| {
                        (
                            upload(
                                &t2,
                                seed2.fetch_add(1, Ordering::Relaxed),
                                &b2,
                                Some(Duration::from_millis(62)),
                            ),
                            5 * MIB as u64,
                        )
                    }),
                )
                .await,
            );
        }

        // The median of five: one measurement can land on a busy moment.
        let mut sha: Vec<f64> = (0..5).map(|_| sha256_secs_per_gib()).collect();
        sha.sort_by(f64::total_cmp);
        report(&rows, &slow_rows, sha[2], secs, rounds);
    });
}

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
    println!("| ratio | value | target | met |");
    println!("|---|---|---|---|");
    let line = |what: String, value: f64, goal: &str, ok: bool| {
        println!(
            "| {what} | {value:.2} | {goal} | {} |",
            if ok { "yes" } else { "**no**" }
        );
    };
    for (w, goal) in [
        ("5 MiB upload, c=1", 0.9),
        ("5 MiB upload, c=16", 0.6),
        ("5 MiB upload, c=64", 0.6),
    ] {
        if let (Some(f), Some(n), Some(d)) = (
            find(rows, "fxgate", w),
            find(rows, "nginx", w),
            find(rows, "direct", w),
        ) {
            let r = f.mib_s() / n.mib_s();
            line(
                format!("{w}: fxgate/nginx MiB/s"),
                r,
                &format!("≥ {goal}"),
                r >= goal,
            );
            println!(
                "| {w}: fxgate/direct MiB/s | {:.2} | – | – |",
                f.mib_s() / d.mib_s()
            );
            let floor = n.cpu_per_gib() + sha;
            let c = f.cpu_per_gib() / floor;
            line(
                format!("{w}: fxgate CPU-s/GiB ÷ (nginx + SHA-256)"),
                c,
                "≤ 1.1",
                c <= 1.1,
            );
            // With client, sink and proxy sharing the cores, a saturated machine caps the rate
            // by the CPU per upload of all of them: had fxgate spent exactly nginx's CPU plus
            // SHA-256's, each upload would need the machine's CPU of the nginx row plus the
            // hash, at the same utilisation at best.
            let gib = n.bytes as f64 / (1u64 << 30) as f64;
            let machine_per_gib = n.machine_busy / gib.max(1e-9);
            let ceiling = (machine_per_gib / (n.busy() * (machine_per_gib + sha))).min(1.0);
            println!(
                "| {w}: fxgate/nginx MiB/s ceiling at the CPU floor (machine {:.0} % busy under nginx) | {ceiling:.2} | – | – |",
                n.busy() * 100.0
            );
        }
    }
    let w = "10 KiB upload, c=64";
    if let (Some(f), Some(n), Some(d)) = (
        find(rows, "fxgate", w),
        find(rows, "nginx", w),
        find(rows, "direct", w),
    ) {
        let r = f.rps() / n.rps();
        line(format!("{w}: fxgate/nginx req/s"), r, "≥ 0.8", r >= 0.8);
        println!(
            "| {w}: fxgate/direct req/s | {:.2} | – | – |",
            f.rps() / d.rps()
        );
        let c = f.cpu_ms_per_req() / n.cpu_ms_per_req();
        line(
            format!("{w}: fxgate/nginx CPU per request"),
            c,
            "≤ 1.3",
            c <= 1.3,
        );
        if let Some(h) = rows.iter().find(|r| r.workload.starts_with("dedupe hit")) {
            let r = h.rps() / n.rps();
            line(
                "dedupe hits req/s ÷ nginx 10 KiB req/s".into(),
                r,
                "≥ 1.0",
                r >= 1.0,
            );
        }
    }
    if let Some(s) = slow.iter().find(|r| r.target == "fxgate") {
        let mib = s.peak_rss_kib as f64 / 1024.0;
        line(
            "fxgate peak RSS, 256 slow 5 MiB uploads (MiB)".into(),
            mib,
            "≤ 64",
            mib <= 64.0,
        );
    }
}
