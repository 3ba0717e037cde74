//! Your own `tracing` spans and logs in the kernel's trace.
//!
//! A handler runs with its `plugin.handle` span as the current OpenTelemetry
//! context. Install [`tracing_layer`] in your `tracing` subscriber and every
//! span you open inside a handler (`#[tracing::instrument]` included) is
//! exported as a child of `plugin.handle`, in the same trace as the kernel's
//! spans; wrap your log format in [`TraceIds`] and each log line written
//! inside a handler starts with `trace_id=… span_id=…`.
//!
//! ```no_run
//! use kernel_sdk::telemetry::{tracing_layer, TraceIds};
//! use kernel_sdk::Telemetry;
//! use tracing_subscriber::layer::SubscriberExt as _;
//! use tracing_subscriber::util::SubscriberInitExt as _;
//! # fn demo(telemetry: Telemetry) {
//! tracing_subscriber::registry()
//!     .with(tracing_layer(&telemetry))
//!     .with(tracing_subscriber::fmt::layer().event_format(TraceIds::new()))
//!     .init();
//! # }
//! ```

use std::fmt;

use kernel_proto::trace::Telemetry;
use opentelemetry::trace::TraceContextExt;
use opentelemetry_sdk::trace::SdkTracer;
use tracing::Subscriber;
use tracing_subscriber::fmt::format::{Format, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// A `tracing` layer exporting spans through `telemetry`'s tracer (None,
/// which is a no-op layer, when export is off).
pub fn tracing_layer<S>(
    telemetry: &Telemetry,
) -> Option<tracing_opentelemetry::OpenTelemetryLayer<S, SdkTracer>>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    let tracer = telemetry.tracer()?.clone();
    Some(tracing_opentelemetry::layer().with_tracer(tracer))
}

/// A log line format that starts with the current span's `trace_id=…
/// span_id=…` (inside a handler, or a span of yours under it), then writes
/// the line as the wrapped format does.
#[derive(Debug)]
pub struct TraceIds<F = Format> {
    inner: F,
}

impl TraceIds {
    /// The ids, then `tracing_subscriber`'s default line.
    pub fn new() -> TraceIds {
        TraceIds {
            inner: Format::default(),
        }
    }
}

impl Default for TraceIds {
    fn default() -> Self {
        TraceIds::new()
    }
}

impl<F> TraceIds<F> {
    /// The ids, then the line as `inner` writes it.
    pub fn wrapping(inner: F) -> Self {
        TraceIds { inner }
    }
}

impl<S, N, F> FormatEvent<S, N> for TraceIds<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> fmt::Result {
        let cx = opentelemetry::Context::current();
        let span = cx.span();
        let sc = span.span_context();
        if sc.is_valid() {
            write!(
                writer,
                "trace_id={} span_id={} ",
                sc.trace_id(),
                sc.span_id()
            )?;
        }
        self.inner.format_event(ctx, writer, event)
    }
}
