//! The OTLP/HTTP span exporter, sending through fxgate's own hyper + rustls client.
//!
//! The SDK's batch processor exports from a thread of its own, outside tokio, and waits on the
//! export future there; a hyper request needs tokio's reactor. So the request is spawned on
//! fxgate's runtime and the export waits on its `JoinHandle`, which any executor can await.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Limited};
use opentelemetry_http::{HttpClient, HttpError, Request, Response};
use opentelemetry_otlp::{Protocol, WithExportConfig as _, WithHttpConfig as _};

use crate::upstream::timing::Timing;
use crate::upstream::transport;

/// A collector's answer is a few bytes; anything much larger is not one.
const MAX_ANSWER: usize = 64 * 1024;

/// The exporter for `url` (protobuf over HTTP, each export within `timeout`).
pub(super) fn exporter(
    url: &http::Uri,
    timeout: Duration,
) -> Result<opentelemetry_otlp::SpanExporter, crate::BoxError> {
    let client = Client {
        http: transport::unpooled(
            Arc::new(Timing::connect_within(timeout)),
            &transport::Egress::direct(),
        ),
        runtime: tokio::runtime::Handle::try_current()?,
        timeout,
    };
    Ok(opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_http_client(client)
        .with_endpoint(url.to_string())
        .with_protocol(Protocol::HttpBinary)
        .with_timeout(timeout)
        .build()?)
}

#[derive(Debug)]
struct Client {
    http: transport::HttpClient,
    runtime: tokio::runtime::Handle,
    timeout: Duration,
}

#[async_trait::async_trait]
impl HttpClient for Client {
    async fn send_bytes(&self, req: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let (http, timeout) = (self.http.clone(), self.timeout);
        let call = async move {
            let resp = http.request(req.map(crate::body::full)).await?;
            let (head, body) = resp.into_parts();
            let body = Limited::new(body, MAX_ANSWER).collect().await?.to_bytes();
            Ok::<_, HttpError>(Response::from_parts(head, body))
        };
        let answered = self
            .runtime
            .spawn(async move { tokio::time::timeout(timeout, call).await });
        match answered.await? {
            Ok(r) => r,
            Err(_) => Err(format!("the collector did not answer within {timeout:?}").into()),
        }
    }
}
