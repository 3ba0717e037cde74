//! The trace layer: one span per call (`kernel.call`, child of the caller's
//! `traceparent`) and the call metrics (count by status code, latency,
//! in-flight). Outermost, so it sees every outcome.

use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};

use kernel_proto::headers;
use kernel_proto::trace::{self, SpanKind, SpanParent, Telemetry};
use kernel_proto::v1::Failure;
use opentelemetry::trace::{Status, TraceContextExt};
use opentelemetry::KeyValue;
use tower::Layer;

use crate::call::Reply;
use crate::invocation::{Invocation, Stage};
use crate::metrics::{Metrics, Series};
use crate::registry::Registry;

/// Adds [`TraceStage`].
#[derive(Debug, Clone)]
pub(crate) struct TraceLayer {
    telemetry: Telemetry,
    metrics: Arc<Metrics>,
    registry: Arc<Registry>,
}

impl TraceLayer {
    /// A trace layer exporting through `telemetry` and counting in `metrics`.
    pub(crate) fn new(
        telemetry: Telemetry,
        metrics: Arc<Metrics>,
        registry: Arc<Registry>,
    ) -> Self {
        TraceLayer {
            telemetry,
            metrics,
            registry,
        }
    }
}

impl<S> Layer<S> for TraceLayer {
    type Service = TraceStage<S>;
    fn layer(&self, inner: S) -> TraceStage<S> {
        TraceStage {
            inner,
            layer: Arc::new(self.clone()),
        }
    }
}

/// Spans and metrics around the inner service.
#[derive(Debug, Clone)]
pub struct TraceStage<S> {
    inner: S,
    /// Shared, so cloning the service per call costs one reference count.
    layer: Arc<TraceLayer>,
}

impl<S: Stage> Stage for TraceStage<S>
where
    S::Future: Unpin,
{
    type Future = Traced<S::Future>;

    fn run(&self, inv: Box<Invocation>) -> Self::Future {
        traced(&self.layer, inv, |inv| self.inner.run(inv))
    }
}

/// Starts the span and the metrics, then runs `inner`.
#[inline]
fn traced<F>(
    layer: &TraceLayer,
    mut inv: Box<Invocation>,
    inner: impl FnOnce(Box<Invocation>) -> F,
) -> Traced<F> {
    // The pool lookup serves the layers below too (validate, dispatch).
    let series = match layer.registry.pool(&inv.req.service) {
        Some(pool) => {
            let s = pool.series(|| layer.metrics.series(&inv.req.service));
            inv.pool = Some(pool);
            s
        }
        None => layer.metrics.unknown(),
    };
    if layer.telemetry.enabled() {
        inv.trace = layer.telemetry.start(
            "kernel.call",
            SpanKind::Server,
            SpanParent::Header(
                inv.req
                    .headers
                    .get(headers::TRACEPARENT)
                    .map(String::as_str),
            ),
            || call_attributes(&inv.req),
        );
        // A call that came without a trace starts one here: its context
        // tree takes the same trace, so the id the caller is told (and
        // the events emitted under the call) match the exported spans.
        if let Some(cx) = &inv.trace {
            if !inv.req.headers.contains_key(headers::TRACEPARENT) {
                inv.req
                    .headers
                    .insert(headers::TRACEPARENT.to_owned(), trace::traceparent(cx));
            }
        }
    }
    let span = inv.trace.clone();
    Traced {
        series: Some(series),
        waited: false,
        started: inv.started,
        span,
        inner: inner(inv),
    }
}

/// A call span's attributes: the kernel's own and the OpenTelemetry RPC
/// conventions; one with no value is left out rather than sent empty.
#[cold]
fn call_attributes(req: &crate::call::Request) -> Vec<KeyValue> {
    let mut attrs = vec![
        KeyValue::new("rpc.system", "kernel"),
        KeyValue::new("rpc.service", req.service.clone()),
        KeyValue::new("kernel.service", req.service.clone()),
    ];
    if !req.method.is_empty() {
        attrs.push(KeyValue::new("rpc.method", req.method.clone()));
        attrs.push(KeyValue::new("kernel.method", req.method.clone()));
    }
    if let Some(caller) = &req.caller {
        attrs.push(KeyValue::new("kernel.caller", caller.to_string()));
    }
    attrs
}

/// The trace layer's future: the inner future, then the call counted in its
/// series and the span's end. A plain struct rather than a boxed `async`
/// block: this runs on every call.
pub struct Traced<F> {
    inner: F,
    /// Until the call is counted.
    series: Option<&'static Series>,
    /// The inner future was pending once (the call is counted in flight).
    waited: bool,
    started: quanta::Instant,
    span: Option<opentelemetry::Context>,
}

impl<F> Drop for Traced<F> {
    /// A call whose future is dropped unanswered (caller gone, stream
    /// cancel) counts as CANCELLED, so in-flight never leaks.
    fn drop(&mut self) {
        if let Some(series) = self.series.take() {
            let elapsed = self.started.elapsed();
            series.record(tonic::Code::Cancelled as i32, elapsed, self.waited);
        }
        if let Some(cx) = self.span.take() {
            let abandoned = Failure {
                code: tonic::Code::Cancelled as i32,
                message: "the caller went away before the call ended".into(),
                causality: Vec::new(),
            };
            end_span(&cx, abandoned.code, &Err(abandoned));
        }
    }
}

impl<F> std::fmt::Debug for Traced<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Traced").finish_non_exhaustive()
    }
}

impl<F> std::future::Future for Traced<F>
where
    F: std::future::Future<Output = Result<Reply, Failure>> + Unpin,
{
    type Output = Result<Reply, Failure>;

    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        let out = match std::pin::Pin::new(&mut self.inner).poll(cx) {
            Poll::Ready(out) => out,
            Poll::Pending => {
                if !self.waited {
                    self.waited = true;
                    if let Some(series) = self.series {
                        series.wait();
                    }
                }
                return Poll::Pending;
            }
        };
        let code = match &out {
            Ok(_) => 0,
            Err(f) => f.code,
        };
        if let Some(series) = self.series.take() {
            series.record(code, self.started.elapsed(), self.waited);
        }
        if let Some(cx) = self.span.take() {
            end_span(&cx, code, &out);
        }
        Poll::Ready(out)
    }
}

/// Ends the call's span with its outcome (off the path when tracing is off).
#[cold]
fn end_span(cx: &opentelemetry::Context, code: i32, out: &Result<Reply, Failure>) {
    let s = cx.span();
    s.set_attribute(KeyValue::new("rpc.grpc.status_code", i64::from(code)));
    match out {
        Ok(_) => s.set_status(Status::Ok),
        Err(f) => {
            if let Some(origin) = f.causality.first() {
                s.set_attribute(KeyValue::new("kernel.error.origin", origin.service.clone()));
            }
            s.set_status(Status::error(f.message.clone()));
        }
    }
    s.end();
}
