//! W3C trace context on fxgate's spans: a caller's `traceparent`/`tracestate` continue its trace
//! in fxgate's `request` span, and every upstream call carries its own span's context on to
//! Fxiaoke. The spans are `tracing` spans; the OpenTelemetry layer installed by `telemetry`
//! gives them trace and span ids (without that layer, as in in-process tests, these functions
//! do nothing and `trace_id` is `None`).

use http::HeaderMap;
use opentelemetry::propagation::TextMapPropagator as _;
use opentelemetry::trace::{TraceContextExt as _, TraceId};
use opentelemetry_http::{HeaderExtractor, HeaderInjector};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// Makes `span` a child of the caller's span when `headers` carry a valid `traceparent`; else
/// `span` starts a trace of its own. A malformed header is ignored, as the W3C spec asks.
pub fn continue_from(span: &tracing::Span, headers: &HeaderMap) {
    if !headers.contains_key("traceparent") {
        return;
    }
    let parent = TraceContextPropagator::new().extract(&HeaderExtractor(headers));
    if parent.span().span_context().is_valid() {
        let _ = span.set_parent(parent);
    }
}

/// Adds `span`'s `traceparent` (and the caller's `tracestate`, carried along) to `headers`.
pub fn inject(span: &tracing::Span, headers: &mut HeaderMap) {
    TraceContextPropagator::new().inject_context(&span.context(), &mut HeaderInjector(headers));
}

/// The trace `span` belongs to.
pub fn trace_id(span: &tracing::Span) -> Option<TraceId> {
    let id = span.context().span().span_context().trace_id();
    (id != TraceId::INVALID).then_some(id)
}
