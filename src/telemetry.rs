//! Where a piece of work came from, carried along with it: the request id of the call that
//! caused it, and, with `KEEL_OTLP_ENDPOINT` set, its OpenTelemetry trace.
//!
//! Keel opens `tracing` spans of target `keel::trace` (one per RPC, database statement and
//! cache call) and `keel::jobs` (one per job); with an endpoint they are exported over OTLP
//! (gRPC) as OpenTelemetry spans, and a W3C `traceparent` a caller sends becomes the RPC
//! span's parent. A job is queued with the request id and `traceparent` of the call that
//! queued it, and runs in a span under them. Without an endpoint the trace spans are off (the
//! logs never show them) and cost a disabled callsite each.

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanExporter};
use std::collections::HashMap;
use std::future::Future;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The targets of the spans that become OpenTelemetry spans.
pub const TRACE_TARGET: &str = "keel::trace";
pub const JOBS_TARGET: &str = "keel::jobs";

tokio::task_local! {
    static REQUEST_ID: String;
}

/// Runs `work` as the handling of request `request_id`: jobs it queues carry the id.
pub async fn with_request_id<F: Future>(request_id: String, work: F) -> F::Output {
    REQUEST_ID.scope(request_id, work).await
}

/// The request id of the call being handled, if any.
pub fn request_id() -> Option<String> {
    REQUEST_ID.try_with(Clone::clone).ok()
}

/// The current span's trace as a W3C `traceparent`, when it is being traced.
pub fn traceparent() -> Option<String> {
    let mut carrier: HashMap<String, String> = HashMap::new();
    TraceContextPropagator::new().inject_context(&tracing::Span::current().context(), &mut carrier);
    carrier.remove("traceparent")
}

/// Makes `span` a child of the trace a W3C `traceparent` names (a caller's, or the request's
/// that queued a job). A malformed one is ignored: the span starts its own trace.
pub fn adopt_traceparent(span: &tracing::Span, traceparent: Option<&str>) {
    let Some(traceparent) = traceparent else {
        return;
    };
    let carrier = HashMap::from([("traceparent".to_owned(), traceparent.to_owned())]);
    let parent = TraceContextPropagator::new().extract(&carrier);
    // Refused only when the span is off (no exporter): nothing to adopt then.
    let _ = span.set_parent(parent);
}

/// A span of `name` for a call inside a traced piece of work (an RPC, a job): database
/// statements and cache calls of background loops, under no such work, start no traces of
/// their own.
#[macro_export]
macro_rules! child_span {
    ($name:literal, $($field:tt)*) => {
        if $crate::telemetry::in_traced_work() {
            tracing::debug_span!(target: $crate::telemetry::TRACE_TARGET, $name, otel.kind = "client", $($field)*)
        } else {
            tracing::Span::none()
        }
    };
}

/// Whether the current span is one of Keel's traced ones.
pub fn in_traced_work() -> bool {
    tracing::Span::current()
        .metadata()
        .is_some_and(|metadata| matches!(metadata.target(), TRACE_TARGET | JOBS_TARGET))
}

/// A tracer provider exporting over OTLP/gRPC to `endpoint` in batches.
pub fn tracer_provider(endpoint: &str) -> anyhow::Result<SdkTracerProvider> {
    use opentelemetry_otlp::WithExportConfig;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .with_timeout(std::time::Duration::from_secs(10))
        .build()?;
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name("keel")
        .with_attribute(opentelemetry::KeyValue::new(
            "service.version",
            env!("CARGO_PKG_VERSION"),
        ))
        .build();
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(OnRuntime {
            inner: exporter,
            runtime: tokio::runtime::Handle::current(),
        })
        .with_resource(resource)
        .build())
}

/// The `tracing` layer that turns Keel's trace and job spans into OpenTelemetry spans.
pub fn layer<S>(provider: &SdkTracerProvider) -> impl tracing_subscriber::Layer<S>
where
    S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
{
    use tracing_subscriber::Layer;
    // Parents from tracing's span tree, not OpenTelemetry's thread-local context: a task
    // polled on many threads enters and leaves its span on each, and Keel uses no other
    // OpenTelemetry instrumentation that would need the context activated.
    tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("keel"))
        .with_context_activation(false)
        .with_filter(PerUse(|metadata: &tracing::Metadata<'_>| {
            match metadata.target() {
                TRACE_TARGET => *metadata.level() <= tracing::Level::DEBUG,
                JOBS_TARGET => *metadata.level() <= tracing::Level::INFO,
                _ => false,
            }
        }))
}

/// For the log layer: everything but the trace spans (which only say what the log lines
/// already do).
pub fn logged() -> impl Fn(&tracing::Metadata<'_>) -> bool {
    |metadata| metadata.target() != TRACE_TARGET
}

/// A per-layer filter asked at every use. A filter that accepts a callsite once and for all
/// (`Interest::always`) is not asked again, and the layer then reads whatever decision another
/// check left on the thread: sqlx's query logger checks dynamically after each statement, and
/// spans went missing from a layer (tokio-rs/tracing#2519). Asking every time costs a target
/// comparison.
#[derive(Clone, Copy)]
pub struct PerUse<F>(pub F);

impl<S, F: Fn(&tracing::Metadata<'_>) -> bool> tracing_subscriber::layer::Filter<S> for PerUse<F> {
    fn enabled(
        &self,
        metadata: &tracing::Metadata<'_>,
        _: &tracing_subscriber::layer::Context<'_, S>,
    ) -> bool {
        (self.0)(metadata)
    }

    fn callsite_enabled(
        &self,
        metadata: &'static tracing::Metadata<'static>,
    ) -> tracing::subscriber::Interest {
        if (self.0)(metadata) {
            tracing::subscriber::Interest::sometimes()
        } else {
            tracing::subscriber::Interest::never()
        }
    }
}

/// Runs the exporter's calls on Keel's runtime. The SDK's batch processor exports from a
/// thread of its own, where tonic finds no Tokio reactor (opentelemetry-rust #2673): the
/// export is driven on the runtime the provider was built on, from that thread.
#[derive(Debug)]
struct OnRuntime<E> {
    inner: E,
    runtime: tokio::runtime::Handle,
}

impl<E: SpanExporter> SpanExporter for OnRuntime<E> {
    fn export(
        &self,
        batch: Vec<SpanData>,
    ) -> impl Future<Output = opentelemetry_sdk::error::OTelSdkResult> + Send {
        let exported = self.runtime.block_on(self.inner.export(batch));
        std::future::ready(exported)
    }

    fn shutdown_with_timeout(
        &self,
        timeout: std::time::Duration,
    ) -> opentelemetry_sdk::error::OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> opentelemetry_sdk::error::OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        self.inner.set_resource(resource);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_request_id_is_known_inside_its_scope_only() {
        assert_eq!(request_id(), None);
        let inside = with_request_id("req-1".to_owned(), async { request_id() }).await;
        assert_eq!(inside, Some("req-1".to_owned()));
        assert_eq!(request_id(), None);
    }

    #[test]
    fn untraced_work_has_no_traceparent() {
        assert_eq!(traceparent(), None);
        adopt_traceparent(&tracing::Span::none(), Some("not a traceparent"));
    }
}
