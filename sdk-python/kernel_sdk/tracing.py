"""Optional OpenTelemetry: a `plugin.handle` span (SERVER kind) per
invocation, a child of the span the kernel sent as the invocation's
`traceparent` (its dispatch span when the node exports traces, else the
caller's), and made the `traceparent` of the handler's nested calls and
emits, so every hop lands in one trace.

Nothing here imports OpenTelemetry until a tracer is actually given: the
SDK runs without it (`pip install kernel-sdk[otel]` adds it).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from ._headers import CONTEXT, TRACEPARENT, TRACESTATE

if TYPE_CHECKING:
    from opentelemetry.trace import Span, Tracer

__all__ = ["Tracing", "default_tracer", "current", "end"]


def default_tracer() -> Tracer:
    """The tracer of the global provider (`opentelemetry.trace`), named
    `kernel_sdk`; raises ImportError without opentelemetry-api."""
    from opentelemetry import trace

    return trace.get_tracer("kernel_sdk")


class Tracing:
    """Starts and ends the `plugin.handle` spans of one plugin."""

    def __init__(self, tracer: Tracer, plugin: str) -> None:
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self._tracer = tracer
        self._plugin = plugin
        self._propagator = TraceContextTextMapPropagator()

    def start(self, service: str, headers: dict[str, str]) -> Span:
        """Starts the span of an invocation under its `traceparent`, and points
        `headers["traceparent"]` (what nested calls carry) at it."""
        from opentelemetry import trace

        carrier = {k: headers[k] for k in (TRACEPARENT, TRACESTATE) if k in headers}
        parent = self._propagator.extract(carrier)
        span = self._tracer.start_span(
            "plugin.handle",
            context=parent,
            kind=trace.SpanKind.SERVER,
            attributes={
                "kernel.service": service,
                "kernel.plugin": self._plugin,
                "kernel.context": headers.get(CONTEXT, ""),
            },
        )
        out: dict[str, str] = {}
        self._propagator.inject(out, context=trace.set_span_in_context(span))
        if TRACEPARENT in out:
            headers[TRACEPARENT] = out[TRACEPARENT]
        return span


@contextmanager
def current(span: Span | None) -> Iterator[None]:
    """Makes `span` the current span for the handler's own instrumentation;
    the SDK ends it, with an error status when the handler failed."""
    if span is None:
        yield
        return
    from opentelemetry import trace

    with trace.use_span(span, end_on_exit=False, record_exception=False,
                        set_status_on_exception=False):
        yield


def end(span: Span | None, error: str | None, cancelled: bool = False) -> None:
    """Ends a handler's span, with an error status when `error` is set."""
    if span is None:
        return
    from opentelemetry.trace import Status, StatusCode

    if error is not None:
        span.set_status(Status(StatusCode.ERROR, error))
    if cancelled:
        span.set_attribute("kernel.cancelled", True)
    span.end()
