//! W3C trace context: a caller's `traceparent`/`tracestate` continue its trace through fxgate,
//! and every upstream call carries a `traceparent` of its own in that trace.
//!
//! Two ways, one contract. With span export on (`telemetry` installed the OpenTelemetry layer),
//! the trace lives in fxgate's `tracing` spans: the `request` span is the caller's child, and an
//! upstream call's `traceparent` names its `upstream` span. With export off, that layer is not
//! installed (it cost 20 µs of CPU a request, about 40 % of a 10 KiB upload, measured with
//! `benches/e2e`), and the request's trace context rides in a task-local instead: the same
//! trace id reaches the access log and Fxiaoke, with a fresh span id per upstream call.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};

use http::{HeaderMap, HeaderValue};
use opentelemetry::propagation::TextMapPropagator as _;
use opentelemetry::trace::{SpanContext, TraceContextExt as _, TraceFlags, TraceId};
use opentelemetry::Context;
use opentelemetry_http::{HeaderExtractor, HeaderInjector};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{IdGenerator as _, RandomIdGenerator};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

static SPANS: AtomicBool = AtomicBool::new(false);

tokio::task_local! {
    /// The request's trace when spans are not exported (its span id: the caller's).
    static REQUEST: SpanContext;
}

/// Called by `telemetry` once the OpenTelemetry layer is installed.
pub fn use_spans() {
    SPANS.store(true, Ordering::Relaxed);
}

/// A request's trace, as `start` found or began it.
#[derive(Debug, Clone)]
pub struct Started {
    /// Its trace id (the caller's, when it sent a valid `traceparent`).
    pub trace_id: Option<TraceId>,
    local: Option<SpanContext>,
}

/// Joins the caller's trace (a valid `traceparent` in `headers`; a malformed one is ignored,
/// as the W3C spec asks) or begins one, for the request running in `span`.
pub fn start(span: &tracing::Span, headers: &HeaderMap) -> Started {
    let parent = headers
        .contains_key(TRACEPARENT)
        .then(|| TraceContextPropagator::new().extract(&HeaderExtractor(headers)))
        .map(|cx| cx.span().span_context().clone())
        .filter(SpanContext::is_valid);
    if SPANS.load(Ordering::Relaxed) {
        if let Some(p) = parent {
            let _ = span.set_parent(Context::new().with_remote_span_context(p));
        }
        let id = span.context().span().span_context().trace_id();
        return Started {
            trace_id: (id != TraceId::INVALID).then_some(id),
            local: None,
        };
    }
    // Not sampled when fxgate begins it: nothing would see the spans.
    let local = parent.unwrap_or_else(|| {
        let ids = RandomIdGenerator::default();
        SpanContext::new(
            ids.new_trace_id(),
            ids.new_span_id(),
            TraceFlags::default(),
            false,
            Default::default(),
        )
    });
    Started {
        trace_id: Some(local.trace_id()),
        local: Some(local),
    }
}

/// Runs `fut` (the request) with its trace where `inject` finds it.
pub async fn within<F: Future>(started: Started, fut: F) -> F::Output {
    match started.local {
        Some(cx) => REQUEST.scope(cx, fut).await,
        None => fut.await,
    }
}

/// Adds a `traceparent` for a call made now (and the caller's `tracestate`) to `headers`: the
/// current span's with export on, else a fresh span id in the request's trace.
pub fn inject(headers: &mut HeaderMap) {
    if SPANS.load(Ordering::Relaxed) {
        let cx = tracing::Span::current().context();
        TraceContextPropagator::new().inject_context(&cx, &mut HeaderInjector(headers));
        return;
    }
    // Written directly, in the propagator's format: building an OpenTelemetry `Context` for
    // it cost 2 % of a passthrough call's CPU (benches/e2e, perf).
    let _ = REQUEST.try_with(|request| {
        if request.trace_id() == TraceId::INVALID {
            return;
        }
        let traceparent = format!(
            "00-{}-{}-{:02x}",
            request.trace_id(),
            RandomIdGenerator::default().new_span_id(),
            request.trace_flags().to_u8()
        );
        if let Ok(v) = HeaderValue::from_str(&traceparent) {
            headers.insert(TRACEPARENT, v);
        }
        let state = request.trace_state().header();
        if !state.is_empty() {
            if let Ok(v) = HeaderValue::from_str(&state) {
                headers.insert(TRACESTATE, v);
            }
        }
    });
}

const TRACEPARENT: http::HeaderName = http::HeaderName::from_static("traceparent");
const TRACESTATE: http::HeaderName = http::HeaderName::from_static("tracestate");
