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

use crate::headers::{InvalidHeader, TRACEPARENT};

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

/// Length of a version-00 `traceparent`: `00-<32 hex>-<16 hex>-<2 hex>`.
pub const TRACEPARENT_LEN: usize = 55;

/// Parses a W3C `traceparent` (version 00); None when it is not one (a span
/// under it then starts a new trace, as W3C Trace Context requires).
pub fn parse_traceparent(tp: &str) -> Option<SpanContext> {
    check_traceparent(tp).ok()
}

/// Parses a W3C `traceparent` (version 00), saying what is wrong when it is
/// not one: exactly [`TRACEPARENT_LEN`] characters once surrounding white
/// space is trimmed, lowercase hex fields, neither id all zeros.
pub fn check_traceparent(tp: &str) -> Result<SpanContext, InvalidHeader> {
    let bad = |reason: String| InvalidHeader::new(TRACEPARENT, reason);
    let tp = tp.trim();
    if tp.len() != TRACEPARENT_LEN {
        return Err(bad(format!(
            "{} bytes, expected {TRACEPARENT_LEN}: `00-<32 hex>-<16 hex>-<2 hex>`",
            tp.len()
        )));
    }
    let mut parts = tp.split('-');
    let (Some(version), Some(trace), Some(span), Some(flags), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return Err(bad(format!(
            "expected 4 fields separated by `-`, found {}",
            tp.split('-').count()
        )));
    };
    for (field, what, len) in [
        (version, "version", 2),
        (trace, "trace id", 32),
        (span, "parent id", 16),
        (flags, "flags", 2),
    ] {
        if field.len() != len {
            return Err(bad(format!(
                "{what} is {} bytes, expected {len}",
                field.len()
            )));
        }
        // Lowercase only (W3C); `from_str_radix` alone would also take
        // uppercase and a leading `+`.
        let not_hex = |c: &char| !matches!(c, '0'..='9' | 'a'..='f');
        if let Some((i, c)) = field.chars().enumerate().find(|(_, c)| not_hex(c)) {
            return Err(bad(format!(
                "{what} has {c:?} at position {}, expected lowercase hex",
                i + 1
            )));
        }
    }
    if version != "00" {
        return Err(bad(format!(
            "version `{version}` is not supported (only 00)"
        )));
    }
    let hex_error = |e: std::num::ParseIntError| bad(e.to_string());
    let trace_id = TraceId::from_hex(trace).map_err(hex_error)?;
    let span_id = SpanId::from_hex(span).map_err(hex_error)?;
    let flags = u8::from_str_radix(flags, 16).map_err(hex_error)?;
    if trace_id == TraceId::INVALID {
        return Err(bad("trace id is all zeros".into()));
    }
    if span_id == SpanId::INVALID {
        return Err(bad("parent id is all zeros".into()));
    }
    Ok(SpanContext::new(
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
    use crate::headers::new_traceparent;
    use proptest::prelude::*;

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

    #[test]
    fn malformed_traceparents_say_what_is_wrong() {
        let good = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        assert!(check_traceparent(&format!("  {good}\t")).is_ok());
        for (bad, needle) in [
            ("garbage".to_owned(), "7 bytes, expected 55"),
            (format!("{good}-00"), "58 bytes"),
            (
                good.to_uppercase(),
                "trace id has 'A' at position 2, expected lowercase hex",
            ),
            (
                good.replace("00-0af7", "00-+af7"),
                "trace id has '+' at position 1",
            ),
            (good.replace("-01", "-+1"), "flags has '+' at position 1"),
            (
                good.replacen("00-", "ff-", 1),
                "version `ff` is not supported",
            ),
            (
                good.replacen('-', "_", 1),
                "expected 4 fields separated by `-`, found 3",
            ),
            (
                good.replacen("-b7", "b-7", 1),
                "trace id is 33 bytes, expected 32",
            ),
            (
                "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01".to_owned(),
                "parent id is all zeros",
            ),
            (
                "00-00000000000000000000000000000000-b7ad6b7169203331-01".to_owned(),
                "trace id is all zeros",
            ),
        ] {
            let e = check_traceparent(&bad).expect_err(&bad).to_string();
            assert!(
                e.contains("`traceparent`") && e.contains(needle),
                "{bad}: {e}"
            );
        }
    }

    /// Found by the `traceparent` fuzz target: a 55-byte value of control
    /// characters was echoed back escaped, six bytes for each.
    #[test]
    fn errors_about_hostile_values_stay_short() {
        let crash = b"\xde\xde\x17\x17\x17\x17\x17\x17\x17\x17\x17\x17\x17\x17\x17\x17\x17\x17\x17\x17\x17\x17\x17\x17\x17\x17\x17\x17\x17\x17\x17\x17\x17\x0a\x0a\x0a\x0a\x0a\x0a\x0a\xf5\x0a\x17\x17\x17\x17\xde";
        let e = check_traceparent(&String::from_utf8_lossy(crash)).expect_err("garbage");
        assert_eq!(e.reason, "expected 4 fields separated by `-`, found 1");
        let e = check_traceparent(&format!("00-{}-{}-01", "\u{17}".repeat(32), "1".repeat(16)))
            .expect_err("control characters");
        assert_eq!(
            e.reason,
            "trace id has '\\u{17}' at position 1, expected lowercase hex"
        );
    }

    proptest! {
        #[test]
        fn arbitrary_strings_never_panic(s in "\\PC{0,80}", bytes in any::<Vec<u8>>()) {
            let _ = check_traceparent(&s);
            let _ = check_traceparent(&String::from_utf8_lossy(&bytes));
        }

        #[test]
        fn generated_traceparents_parse_and_print_back(_n in 0..64u8) {
            let tp = new_traceparent();
            let sc = check_traceparent(&tp).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let cx = Context::new().with_remote_span_context(sc);
            prop_assert_eq!(traceparent(&cx), tp);
        }

        #[test]
        fn any_non_zero_ids_round_trip(trace in 1u128.., span in 1u64.., flags in any::<u8>()) {
            let tp = format!("00-{trace:032x}-{span:016x}-{flags:02x}");
            let sc = check_traceparent(&tp).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let cx = Context::new().with_remote_span_context(sc);
            prop_assert_eq!(traceparent(&cx), tp);
        }
    }
}
