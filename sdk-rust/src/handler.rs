//! A provided service's handler as the SDK runs it, out of process and in
//! process alike: one boxed future per call with the user's panic caught,
//! its error made a failure and its reply size held to the limit; the
//! handler span around it when tracing is on.

use std::collections::HashMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use futures::FutureExt;
use kernel_proto::trace::{SpanKind, SpanParent, Telemetry};
use kernel_proto::v1::Failure;
use opentelemetry::KeyValue;

use crate::context::Context;
use crate::error::Error;

/// What a handler returns.
pub type HandlerResult = Result<Bytes, Error>;

/// A provided service: the user's handler with its panics caught, its
/// errors made failures and its reply size checked (the argument is the
/// largest reply allowed), all in one boxed future per call.
pub(crate) type Handler = Arc<
    dyn Fn(Context, Bytes, usize) -> Pin<Box<dyn Future<Output = Result<Bytes, Failure>> + Send>>
        + Send
        + Sync,
>;

/// The call's future: its handler's, or an answer that there is none.
pub(crate) fn run_handler(
    handler: Option<&Handler>,
    ctx: Context,
    payload: Bytes,
    max_reply: usize,
) -> Pin<Box<dyn Future<Output = Result<Bytes, Failure>> + Send>> {
    match handler {
        Some(handler) => handler(ctx, payload, max_reply),
        None => {
            let f = Error::new(
                tonic::Code::Unimplemented,
                format!("this plugin does not provide `{}`", ctx.service()),
            )
            .into_failure();
            Box::pin(std::future::ready(Err(f)))
        }
    }
}

/// A handler's future (or the panic that stopped the handler before it
/// returned one) with its panic caught, its error made a failure and its
/// reply held to `max_reply` bytes. `ctx` names the service for the
/// messages.
pub(crate) async fn guarded(
    started: std::thread::Result<impl Future<Output = HandlerResult>>,
    ctx: Context,
    max_reply: usize,
) -> Result<Bytes, Failure> {
    let service = ctx.service();
    let outcome = match started {
        Ok(fut) => AssertUnwindSafe(fut).catch_unwind().await,
        Err(panic) => Err(panic),
    };
    match outcome {
        Ok(Ok(bytes)) if bytes.len() > max_reply => Err(Error::new(
            tonic::Code::OutOfRange,
            format!(
                "reply of {} bytes exceeds the limit of {max_reply} bytes",
                bytes.len()
            ),
        )
        .into_failure()),
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(e)) => Err(e.into_failure()),
        Err(panic) => {
            let msg = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            tracing::error!(service, cause = %msg, "handler panicked");
            Err(Error::internal(format!("handler of `{service}` panicked: {msg}")).into_failure())
        }
    }
}

/// Starts the handler span under the invocation's `traceparent` and points
/// the context's `traceparent` at it, so nested calls are its children.
pub(crate) fn handler_span(
    telemetry: &Telemetry,
    plugin: &str,
    service: &str,
    headers: &mut HashMap<String, String>,
) -> Option<opentelemetry::Context> {
    if !telemetry.enabled() {
        return None;
    }
    let tp = headers.get(kernel_proto::headers::TRACEPARENT).cloned();
    let path = headers
        .get(kernel_proto::headers::CONTEXT)
        .cloned()
        .unwrap_or_default();
    let cx = telemetry.start(
        "plugin.handle",
        SpanKind::Server,
        SpanParent::Header(tp.as_deref()),
        || {
            vec![
                KeyValue::new("kernel.service", service.to_owned()),
                KeyValue::new("kernel.plugin", plugin.to_owned()),
                KeyValue::new("kernel.context", path),
            ]
        },
    )?;
    headers.insert(
        kernel_proto::headers::TRACEPARENT.to_owned(),
        kernel_proto::trace::traceparent(&cx),
    );
    Some(cx)
}

/// Runs `fut` with the handler span as the current OpenTelemetry context,
/// so spans the handler opens itself (`tracing` through
/// [`crate::telemetry::tracing_layer`]) hang under it.
pub(crate) async fn in_span<F: std::future::Future>(
    span: &Option<opentelemetry::Context>,
    fut: F,
) -> F::Output {
    use opentelemetry::context::FutureExt as _;
    match span {
        Some(cx) => fut.with_context(cx.clone()).await,
        None => fut.await,
    }
}

/// Ends a handler's span, with an error status when `error` is set.
pub(crate) fn end_span(span: Option<opentelemetry::Context>, error: Option<String>) {
    use opentelemetry::trace::TraceContextExt;
    if let Some(cx) = span {
        if let Some(message) = error {
            cx.span()
                .set_status(opentelemetry::trace::Status::error(message));
        }
        cx.span().end();
    }
}
