//! Trace spans on both sides of the wire: the tracer handle the kernel and
//! the SDK make their spans with, and the W3C `traceparent` form a span's
//! place travels in (headers and frame header maps).
//!
//! Both sides use the OpenTelemetry API directly, not a `tracing` bridge:
//! every span's parent comes from a `traceparent` header (or a parent span
//! held in hand), and each node or plugin owns its tracer provider, so
//! several in one process (tests) export independently. How spans are
//! exported (OTLP, sampling) is set up by whoever builds the provider.

use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState, Tracer as _,
    TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};

/// The span kind of a kernel or plugin span.
pub use opentelemetry::trace::SpanKind;

/// A tracer: present only when export is configured.
#[derive(Debug, Clone, Default)]
pub struct Telemetry {
    tracer: Option<SdkTracer>,
    provider: Option<SdkTracerProvider>,
    /// How long [`Telemetry::shutdown`] waits for the last export.
    shutdown_timeout: Option<std::time::Duration>,
}

impl Telemetry {
    /// No export: spans are not created.
    pub fn disabled() -> Telemetry {
        Telemetry::default()
    }

    /// Spans from `provider`'s tracer named `scope`; [`Telemetry::shutdown`]
    /// flushes and stops it.
    pub fn from_provider(provider: SdkTracerProvider, scope: &'static str) -> Telemetry {
        Telemetry {
            tracer: Some(provider.tracer(scope)),
            provider: Some(provider),
            shutdown_timeout: None,
        }
    }

    /// Bounds how long [`Telemetry::shutdown`] waits for the exporter (by
    /// default the SDK's own bound, 5 s per step).
    pub fn with_shutdown_timeout(mut self, timeout: std::time::Duration) -> Telemetry {
        self.shutdown_timeout = Some(timeout);
        self
    }

    /// The tracer, when export is on (for a `tracing` bridge).
    pub fn tracer(&self) -> Option<&SdkTracer> {
        self.tracer.as_ref()
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
        parent: SpanParent<'_>,
        attributes: impl FnOnce() -> Vec<KeyValue>,
    ) -> Option<Context> {
        let tracer = self.tracer.as_ref()?;
        let attributes = attributes();
        let parent_cx = match parent {
            SpanParent::Header(Some(tp)) => match parse_traceparent(tp) {
                Some(sc) => Context::new().with_remote_span_context(sc),
                None => Context::new(),
            },
            SpanParent::Header(None) => Context::new(),
            SpanParent::Span(cx) => cx.clone(),
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
            // Shutting down exports what is still buffered.
            let _ = match self.shutdown_timeout {
                Some(t) => p.shutdown_with_timeout(t),
                None => {
                    let _ = p.force_flush();
                    p.shutdown()
                }
            };
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
pub enum SpanParent<'a> {
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
