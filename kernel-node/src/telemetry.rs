//! Telemetry: structured logs (`tracing`) and OpenTelemetry traces over OTLP.
//!
//! Traces are exported only when an OTLP endpoint is configured
//! (`OTEL_EXPORTER_OTLP_ENDPOINT`, `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, or
//! `[telemetry] otlp_endpoint`); otherwise no span is created at all, so the
//! hot path pays nothing. Export is batched on a background thread: a call
//! never waits on it. Sampling follows `OTEL_TRACES_SAMPLER(_ARG)`, the
//! service name `OTEL_SERVICE_NAME` (default `kernel-node`).
//!
//! The kernel uses the OpenTelemetry API directly, not a `tracing` bridge:
//! every span's parent comes from a `traceparent` header (or a parent span
//! the kernel holds), and each [`crate::Kernel`] owns its tracer provider, so
//! several nodes in one process (tests) export independently.

use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState, Tracer as _,
    TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};
use tracing_subscriber::EnvFilter;

use crate::config::TelemetryConfig;

/// Installs the global `tracing` subscriber for logs. Safe to call more
/// than once (later calls are ignored), which tests rely on.
pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .try_init();
}

/// The span kind of a kernel span.
pub use opentelemetry::trace::SpanKind;

/// A node's tracer: present only when export is configured.
#[derive(Debug, Clone, Default)]
pub struct Telemetry {
    tracer: Option<SdkTracer>,
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// No export: spans are not created.
    pub fn disabled() -> Telemetry {
        Telemetry::default()
    }

    /// Builds the OTLP exporter when an endpoint is configured. Must run
    /// inside a tokio runtime (the exporter's channel lives on it).
    pub fn from_config(config: &TelemetryConfig) -> Result<Telemetry, String> {
        let endpoint = config
            .otlp_endpoint
            .clone()
            .or_else(|| std::env::var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").ok())
            .or_else(|| std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").ok())
            .filter(|e| !e.is_empty());
        let Some(endpoint) = endpoint else {
            return Ok(Telemetry::disabled());
        };
        Telemetry::otlp(&endpoint, config.service_name.as_deref())
    }

    /// Exports to the OTLP/gRPC collector at `endpoint`.
    pub fn otlp(endpoint: &str, service_name: Option<&str>) -> Result<Telemetry, String> {
        use opentelemetry_otlp::WithExportConfig;
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint)
            .build()
            .map_err(|e| format!("OTLP exporter for {endpoint}: {e}"))?;
        let name = service_name
            .map(str::to_owned)
            .or_else(|| std::env::var("OTEL_SERVICE_NAME").ok())
            .unwrap_or_else(|| "kernel-node".into());
        let resource = opentelemetry_sdk::Resource::builder()
            .with_service_name(name)
            .build();
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource)
            .build();
        let tracer = provider.tracer("kernel-node");
        tracing::info!(endpoint, "exporting traces over OTLP");
        Ok(Telemetry {
            tracer: Some(tracer),
            provider: Some(provider),
        })
    }

    /// Whether spans are being made.
    #[inline]
    pub fn enabled(&self) -> bool {
        self.tracer.is_some()
    }

    /// Starts a span under `parent` (a `traceparent` value, or the current
    /// span of `parent_cx`). None when export is off; `attributes` is only
    /// evaluated when a span is made, so a disabled tracer costs nothing.
    pub fn start(
        &self,
        name: &'static str,
        kind: SpanKind,
        parent: Parent<'_>,
        attributes: impl FnOnce() -> Vec<KeyValue>,
    ) -> Option<Context> {
        let tracer = self.tracer.as_ref()?;
        let attributes = attributes();
        let parent_cx = match parent {
            Parent::Header(Some(tp)) => match parse_traceparent(tp) {
                Some(sc) => Context::new().with_remote_span_context(sc),
                None => Context::new(),
            },
            Parent::Header(None) => Context::new(),
            Parent::Span(cx) => cx.clone(),
        };
        let span = tracer
            .span_builder(name)
            .with_kind(kind)
            .with_attributes(attributes)
            .start_with_context(tracer, &parent_cx);
        Some(parent_cx.with_span(span))
    }

    /// Flushes and stops the exporter.
    pub fn shutdown(&self) {
        if let Some(p) = &self.provider {
            let _ = p.force_flush();
            let _ = p.shutdown();
        }
    }

    /// Flushes pending spans (tests use this before reading the receiver).
    pub fn flush(&self) {
        if let Some(p) = &self.provider {
            let _ = p.force_flush();
        }
    }
}

/// Where a new span hangs.
#[derive(Debug)]
pub enum Parent<'a> {
    /// A `traceparent` header value (None: start a new trace).
    Header(Option<&'a str>),
    /// A span the kernel holds.
    Span(&'a Context),
}

/// The `traceparent` of the span in `cx`.
pub fn traceparent(cx: &Context) -> String {
    let sc = cx.span().span_context().clone();
    format!(
        "00-{}-{}-{:02x}",
        sc.trace_id(),
        sc.span_id(),
        sc.trace_flags().to_u8()
    )
}

/// Parses a W3C `traceparent` (version 00).
pub fn parse_traceparent(tp: &str) -> Option<SpanContext> {
    let mut parts = tp.trim().split('-');
    let version = parts.next()?;
    let trace = parts.next()?;
    let span = parts.next()?;
    let flags = parts.next()?;
    if version != "00" || trace.len() != 32 || span.len() != 16 || flags.len() != 2 {
        return None;
    }
    let trace_id = TraceId::from_hex(trace).ok()?;
    let span_id = SpanId::from_hex(span).ok()?;
    if trace_id == TraceId::INVALID || span_id == SpanId::INVALID {
        return None;
    }
    let flags = u8::from_str_radix(flags, 16).ok()?;
    Some(SpanContext::new(
        trace_id,
        span_id,
        TraceFlags::new(flags),
        true,
        TraceState::default(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_round_trip() {
        let tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let sc = parse_traceparent(tp).expect("valid");
        let cx = Context::new().with_remote_span_context(sc);
        assert_eq!(traceparent(&cx), tp);
        assert!(
            parse_traceparent("00-00000000000000000000000000000000-b7ad6b7169203331-01").is_none()
        );
        assert!(parse_traceparent("garbage").is_none());
    }
}
