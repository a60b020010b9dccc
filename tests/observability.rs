//! Metrics as ops see them: after driving a known mix of requests through a running gateway,
//! the scraped counters moved by exactly the right amounts; and every metric the Grafana
//! dashboard and the alert rules name exists in a real scrape.

mod support;

use support::*;

#[tokio::test]
async fn counters_move_by_the_right_amounts() {
    let (sandbox, gw) = pair(&[], |_| {});
    let http = client();
    let url = gw.upload_url();
    let file = jpeg(40_000, 1);
    let claim = repr_digest(&file);

    // 1 success (miss), 1 dedupe hit by claim, 1 too large, 1 unauthenticated, 1 token rejection.
    let ok = http
        .post(&url)
        .bearer_auth(ALPHA_KEY)
        .header("content-type", "image/jpeg")
        .header("repr-digest", &claim)
        .body(file.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    let hit = http
        .post(&url)
        .bearer_auth(ALPHA_KEY)
        .header("repr-digest", &claim)
        .send()
        .await
        .unwrap();
    assert_eq!(
        hit.json::<serde_json::Value>().await.unwrap()["deduplicated"],
        true
    );
    // Too large by Content-Length, with `Expect: 100-continue` so no body is sent (raw TCP:
    // reqwest cannot wait for 100 Continue).
    let addr = gw.url.trim_start_matches("http://").to_string();
    let mut tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "POST /media/upload/message HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {ALPHA_KEY}\r\n\
         Content-Type: image/jpeg\r\nContent-Length: {}\r\nExpect: 100-continue\r\n\r\n",
        6 << 20
    );
    tokio::io::AsyncWriteExt::write_all(&mut tcp, head.as_bytes())
        .await
        .unwrap();
    let mut buf = vec![0u8; 1024];
    let n = tokio::io::AsyncReadExt::read(&mut tcp, &mut buf)
        .await
        .unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 413"));
    let anon = http.post(&url).body(jpeg(100, 1)).send().await.unwrap();
    assert_eq!(anon.status(), 401);
    sandbox
        .faults(Faults {
            revoke_tokens: true,
            ..Faults::default()
        })
        .await;
    let rejected = http
        .post(&url)
        .bearer_auth(ALPHA_KEY)
        .header("content-type", "image/jpeg")
        .body(jpeg(10_000, 2))
        .send()
        .await
        .unwrap();
    assert_eq!(rejected.status(), 503);
    // A successful upload after the refresh proves the new token is in place.
    let after = http
        .post(&url)
        .bearer_auth(ALPHA_KEY)
        .header("content-type", "image/jpeg")
        .body(jpeg(10_000, 3))
        .send()
        .await
        .unwrap();
    assert_eq!(after.status(), 200);

    // Series print with their labels in alphabetical order.
    let m = gw.metrics().await;
    let r = "route=\"/media/upload/message\"";
    assert_eq!(
        metric(
            &m,
            &format!("fxgate_requests_total{{client=\"alpha\",{r},status=\"200\"}}")
        ),
        3.0
    );
    assert_eq!(
        metric(
            &m,
            &format!("fxgate_requests_total{{client=\"alpha\",{r},status=\"413\"}}")
        ),
        1.0
    );
    assert_eq!(
        metric(
            &m,
            &format!("fxgate_requests_total{{client=\"alpha\",{r},status=\"503\"}}")
        ),
        1.0
    );
    assert_eq!(
        metric(
            &m,
            &format!("fxgate_requests_total{{client=\"unknown\",{r},status=\"401\"}}")
        ),
        1.0
    );
    assert_eq!(
        metric(&m, &format!("fxgate_request_duration_seconds_count{{{r}}}")),
        6.0
    );
    assert_eq!(metric(&m, "fxgate_dedupe_total{result=\"hit_claim\"}"), 1.0);
    assert_eq!(metric(&m, "fxgate_dedupe_total{result=\"miss\"}"), 2.0);
    assert_eq!(metric(&m, "fxgate_dedupe_saved_bytes_total"), 40_000.0);
    // The old name counts the same for one release.
    assert_eq!(metric(&m, "fxgate_dedupe_bytes_saved_total"), 40_000.0);
    // The caller's own latency view, by status class: alpha's three 200s, its 413, its 503.
    for (class, n) in [("2xx", 3.0), ("4xx", 1.0), ("5xx", 1.0)] {
        let series = format!(
            "fxgate_client_request_duration_seconds_count{{class=\"{class}\",client=\"alpha\"}}"
        );
        assert_eq!(metric(&m, &series), n, "{series}");
    }
    // The 20016 upload streamed all its bytes before Fxiaoke refused it.
    assert_eq!(
        metric(
            &m,
            &format!("fxgate_upload_bytes_total{{client=\"alpha\",{r}}}")
        ),
        60_000.0
    );
    assert_eq!(
        metric(
            &m,
            &format!("fxgate_upstream_requests_total{{corp=\"default\",error_code=\"0\",{r}}}")
        ),
        2.0
    );
    assert_eq!(
        metric(
            &m,
            &format!("fxgate_upstream_requests_total{{corp=\"default\",error_code=\"20016\",{r}}}")
        ),
        1.0
    );
    assert_eq!(
        metric(
            &m,
            "fxgate_token_refresh_total{corp=\"default\",flow=\"legacy\",result=\"ok\"}"
        ),
        2.0
    );
    assert_eq!(
        metric(&m, "fxgate_token_valid{corp=\"default\",flow=\"legacy\"}"),
        1.0
    );
    assert_eq!(metric(&m, "fxgate_inflight_uploads"), 0.0);
    assert_eq!(metric(&m, "fxgate_build_info{version=\"0.1.0\"}"), 1.0);
    assert!(metric(&m, "process_resident_memory_bytes") > 1e6);
    // Label values stay bounded: no request id, path or key ever becomes a label.
    assert!(!m.contains(ALPHA_KEY) && !m.contains("x-request-id"));
}

/// Every `fxgate_*` / `process_*` metric name in a text.
fn metric_names(text: &str) -> std::collections::BTreeSet<String> {
    let mut out = std::collections::BTreeSet::new();
    for prefix in ["fxgate_", "process_"] {
        let mut rest = text;
        while let Some(i) = rest.find(prefix) {
            let name: String = rest[i..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            let base = ["_bucket", "_count", "_sum"]
                .iter()
                .fold(name.clone(), |n, s| {
                    n.strip_suffix(s).map_or(n.clone(), str::to_string)
                });
            out.insert(base);
            rest = &rest[i + name.len()..];
        }
    }
    out
}

#[tokio::test]
async fn every_metric_in_the_dashboard_and_alerts_exists_in_a_scrape() {
    // With the Redis store, whose metrics the alerts name too.
    let redis = RedisServer::start();
    let (_sandbox, gw) = pair(&[], |c| {
        c.corp().daily_call_budget = Some(1000);
        c.store = redis_store(&redis, "open");
    });
    let (status, _, _) = upload_multipart(
        &client(),
        &gw.upload_url(),
        ALPHA_KEY,
        jpeg(1000, 1),
        "a.jpg",
    )
    .await;
    assert_eq!(status, 200);
    let scrape = gw.metrics().await;
    let families: std::collections::BTreeSet<String> = scrape
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .map(str::to_string)
        .collect();
    let root = env!("CARGO_MANIFEST_DIR");
    for file in ["deploy/grafana/fxgate.json", "deploy/prometheus/alerts.yml"] {
        let text = std::fs::read_to_string(format!("{root}/{file}")).unwrap();
        let names = metric_names(&text);
        assert!(names.len() >= 5, "{file} names too few metrics: {names:?}");
        for name in names {
            assert!(
                families.contains(&name),
                "{file} uses {name}, which a scrape of fxgate does not have"
            );
        }
    }
}
