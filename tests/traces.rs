//! Traces (issue 15, part 4): a caller's W3C `traceparent` continues through fxgate. The same
//! trace id is in the access-log line, in the `traceparent` Fxiaoke receives (carrying fxgate's
//! `upstream` span), and in the spans exported over OTLP/HTTP to a collector on loopback, which
//! decodes them with the OpenTelemetry protobuf definitions. The spans are exported when the
//! gateway shuts down (SIGTERM flushes the queue), so nothing here waits on the export interval.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value::Value as Any, KeyValue};
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, Span};
use prost::Message as _;
use serde_json::Value;
use support::*;

/// A minimal OTLP/HTTP collector: accepts `POST /v1/traces` (protobuf) and keeps what came.
struct Collector {
    url: String,
    got: Arc<Mutex<Vec<ResourceSpans>>>,
}

impl Collector {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/v1/traces", listener.local_addr().unwrap());
        let got = Arc::new(Mutex::new(Vec::new()));
        let keep = got.clone();
        tokio::spawn(async move {
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                let keep = keep.clone();
                let svc =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let keep = keep.clone();
                        async move {
                            assert_eq!(req.uri().path(), "/v1/traces");
                            assert_eq!(req.headers()["content-type"], "application/x-protobuf");
                            let body = req.into_body().collect().await?.to_bytes();
                            let export = ExportTraceServiceRequest::decode(body).unwrap();
                            keep.lock().unwrap().extend(export.resource_spans);
                            Ok::<_, hyper::Error>(
                                http::Response::builder()
                                    .header("content-type", "application/x-protobuf")
                                    .body(Full::new(Bytes::new()))
                                    .unwrap(),
                            )
                        }
                    });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc),
                );
            }
        });
        Self { url, got }
    }

    fn spans(&self) -> Vec<Span> {
        let got = self.got.lock().unwrap();
        got.iter()
            .flat_map(|r| &r.scope_spans)
            .flat_map(|s| s.spans.clone())
            .collect()
    }

    fn service_names(&self) -> Vec<String> {
        let got = self.got.lock().unwrap();
        got.iter()
            .filter_map(|r| r.resource.as_ref())
            .filter_map(|r| string_attr(&r.attributes, "service.name"))
            .collect()
    }
}

fn attr<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a Any> {
    attrs
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| v.value.as_ref())
}

fn string_attr(attrs: &[KeyValue], key: &str) -> Option<String> {
    match attr(attrs, key) {
        Some(Any::StringValue(s)) => Some(s.clone()),
        _ => None,
    }
}

fn int_attr(attrs: &[KeyValue], key: &str) -> Option<i64> {
    match attr(attrs, key) {
        Some(Any::IntValue(i)) => Some(*i),
        _ => None,
    }
}

/// The one span of trace `trace_id` that is fxgate's `request` (the server span), `upstream`
/// (the client span) or has this name.
fn find<'a>(spans: &'a [Span], trace_id: &str, what: &str) -> &'a Span {
    let found: Vec<_> = spans
        .iter()
        .filter(|s| hex::encode(&s.trace_id) == trace_id)
        .filter(|s| match what {
            "request" => s.kind == SpanKind::Server as i32,
            "upstream" => s.kind == SpanKind::Client as i32,
            name => s.name == name,
        })
        .collect();
    assert_eq!(
        found.len(),
        1,
        "one {what} span in trace {trace_id}: {spans:#?}"
    );
    found[0]
}

/// The access-log line of the request to `route`.
fn access_line(logs: &str, route: &str) -> Value {
    logs.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["message"] == "request" && v["route"] == route)
        .unwrap_or_else(|| panic!("no access-log line for {route} in:\n{logs}"))
}

const CRM_KEY: &str = "crm-key-1c7e93b5d2";

/// A caller acting as one user, for the `/cgi` calls.
fn crm() -> ClientFile {
    ClientFile {
        act_as: Some(vec!["FSUID_A".into()]),
        ..caller("crm", CRM_KEY)
    }
}

// Two workers: the collector must answer while the test blocks waiting for the exit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callers_traceparent_reaches_the_access_log_fxiaoke_and_the_exported_spans() {
    let collector = Collector::start().await;
    let sandbox = Sandbox::spawn(&[]);
    let mut gw = Gateway::spawn(&standard(&sandbox.url).with(|c| {
        c.log.format = some("json");
        c.tracing.otlp_endpoint = some(&collector.url);
        c.add([crm()]);
    }));
    let http = client();
    let (upload_trace, caller_span) = ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7");

    // An upload large enough to stream (the upstream request opens before the hash is known).
    let resp = http
        .post(gw.upload_url())
        .bearer_auth(ALPHA_KEY)
        .header("traceparent", format!("00-{upload_trace}-{caller_span}-01"))
        .header("user-agent", "billing-svc/1.2")
        .header("content-type", "image/jpeg")
        .body(jpeg(200_000, 3))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);

    // A passthrough call in another trace, with a vendor's tracestate.
    let call_trace = "0af7651916cd43dd8448eb211c80319c";
    let resp = http
        .post(format!("{}/cgi/crm/v2/data/query", gw.url))
        .bearer_auth(CRM_KEY)
        .header(
            "traceparent",
            format!("00-{call_trace}-b7ad6b7169203331-01"),
        )
        .header("tracestate", "vendor=abc")
        .header("content-type", "application/json")
        .body(r#"{"data":{"dataObjectApiName":"AccountObj"}}"#)
        .send()
        .await
        .unwrap();
    let answer: Value = resp.json().await.unwrap();
    assert_eq!(answer["errorCode"], 0, "{answer}");
    let got = sandbox.received().await;
    let headers = &got.last().unwrap()["headers"];
    let header = |name: &str| {
        headers
            .as_array()
            .unwrap()
            .iter()
            .find(|h| h[0] == name)
            .and_then(|h| h[1].as_str())
            .map(str::to_owned)
    };
    let sent = header("traceparent").expect("Fxiaoke got a traceparent");
    let parts: Vec<&str> = sent.split('-').collect();
    assert_eq!(
        (parts[0], parts[1], parts[3]),
        ("00", call_trace, "01"),
        "{sent}"
    );
    assert_ne!(
        parts[2], "b7ad6b7169203331",
        "fxgate's own span, not the caller's"
    );
    assert_eq!(header("tracestate").as_deref(), Some("vendor=abc"));

    gw.terminate();
    assert!(gw.wait_exit(Duration::from_secs(15)).success());

    let logs = gw.logs();
    let line = access_line(&logs, "/media/upload/message");
    assert_eq!(line["trace_id"], upload_trace, "{line}");
    assert!(
        line["peer"].as_str().unwrap().starts_with("127.0.0.1:"),
        "{line}"
    );
    assert_eq!(line["user_agent"], "billing-svc/1.2");
    assert!(line["upstream_ms"].is_u64(), "{line}");
    assert_eq!(
        access_line(&logs, "/cgi/crm/v2/data/query")["trace_id"],
        call_trace
    );

    let spans = collector.spans();
    assert!(collector.service_names().iter().all(|n| n == "fxgate"));
    let request = find(&spans, upload_trace, "request");
    assert_eq!(request.name, "POST /media/upload/message");
    assert_eq!(hex::encode(&request.parent_span_id), caller_span);
    assert_eq!(
        string_attr(&request.attributes, "http.route").as_deref(),
        Some("/media/upload/message")
    );
    assert_eq!(
        int_attr(&request.attributes, "http.response.status_code"),
        Some(200),
        "{request:#?}"
    );
    for child in ["upstream", "dedupe_lookup"] {
        let span = find(&spans, upload_trace, child);
        assert_eq!(
            span.parent_span_id, request.span_id,
            "{child} is inside request"
        );
    }
    let upstream = find(&spans, upload_trace, "upstream");
    assert_eq!(
        int_attr(&upstream.attributes, "fxiaoke.error_code"),
        Some(0)
    );
    assert_eq!(
        string_attr(
            &find(&spans, upload_trace, "dedupe_lookup").attributes,
            "fxgate.dedupe.result"
        )
        .as_deref(),
        Some("miss")
    );
    // The span Fxiaoke was told about is the passthrough's upstream span.
    assert_eq!(
        hex::encode(&find(&spans, call_trace, "upstream").span_id),
        parts[2]
    );
    assert!(
        spans.iter().any(|s| s.name == "token_fetch"),
        "the token fetch has a span of its own"
    );
}

/// Without `[tracing]` no span is built (the OpenTelemetry layer is not installed), but a
/// request still gets a trace id (its own here, marked not sampled: nothing would see it) that
/// the log line and Fxiaoke's `traceparent` share.
#[tokio::test]
async fn without_an_exporter_the_trace_still_reaches_the_log_and_fxiaoke() {
    let sandbox = Sandbox::spawn(&[]);
    let gw = Gateway::spawn(&standard(&sandbox.url).with(|c| {
        c.log.format = some("json");
        c.add([crm()]);
    }));
    let http = client();
    // The traceparent Fxiaoke received for a call sent with `traceparent` (or none).
    let call = |traceparent: Option<&'static str>| {
        let (http, url, sandbox) = (
            http.clone(),
            format!("{}/cgi/crm/v2/data/query", gw.url),
            &sandbox,
        );
        async move {
            let mut req = http
                .post(url)
                .bearer_auth(CRM_KEY)
                .header("content-type", "application/json")
                .body(r#"{"data":{"dataObjectApiName":"AccountObj"}}"#);
            if let Some(t) = traceparent {
                req = req.header("traceparent", t);
            }
            assert_eq!(req.send().await.unwrap().status(), 200);
            let got = sandbox.received().await;
            let sent = got.last().unwrap()["headers"]
                .as_array()
                .unwrap()
                .iter()
                .find(|h| h[0] == "traceparent")
                .and_then(|h| h[1].as_str())
                .expect("a traceparent")
                .to_owned();
            sent.split('-').map(str::to_owned).collect::<Vec<_>>()
        }
    };
    let own = call(None).await;
    assert_eq!(own[3], "00", "not sampled: {own:?}");
    let line = access_line(&gw.logs(), "/cgi/crm/v2/data/query");
    assert_eq!(line["trace_id"], own[1], "{line}");

    let theirs = call(Some(
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    ))
    .await;
    assert_eq!(theirs[1], "0af7651916cd43dd8448eb211c80319c");
    assert_eq!(
        theirs[3], "01",
        "the caller's sampling decision is passed on"
    );
    assert_ne!(theirs[2], "b7ad6b7169203331", "a span id of fxgate's own");
    assert!(gw
        .logs()
        .contains(r#""trace_id":"0af7651916cd43dd8448eb211c80319c""#));
}

/// A collector that accepts the export and then says nothing: requests are not held up, and
/// the flush at shutdown gives up at `export_timeout` (1 s here; the SDK's own bound is 5 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_never_answers_delays_neither_requests_nor_shutdown() {
    let mute = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v1/traces", mute.local_addr().unwrap());
    let held = Arc::new(Mutex::new(Vec::new()));
    let keep = held.clone();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = mute.accept().await.unwrap();
            keep.lock().unwrap().push(tcp);
        }
    });
    let sandbox = Sandbox::spawn(&[]);
    let mut gw = Gateway::spawn(&standard(&sandbox.url).with(|c| {
        c.tracing.otlp_endpoint = some(&url);
        c.tracing.export_timeout = some("1s");
    }));
    let (status, _, body) = upload_multipart(
        &client(),
        &gw.upload_url(),
        ALPHA_KEY,
        jpeg(1000, 1),
        "a.jpg",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let asked = std::time::Instant::now();
    gw.terminate();
    let exit = tokio::task::spawn_blocking(move || gw.wait_exit(Duration::from_secs(30)))
        .await
        .unwrap();
    assert!(exit.success(), "{exit:?}");
    assert!(
        asked.elapsed() < Duration::from_secs(4),
        "shutdown took {:?}",
        asked.elapsed()
    );
    assert!(
        !held.lock().unwrap().is_empty(),
        "the export reached the collector"
    );
}
