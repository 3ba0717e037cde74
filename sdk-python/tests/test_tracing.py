"""OpenTelemetry: a `plugin.handle` span per invocation, a child of the
invocation's `traceparent`, and the parent of the handler's nested calls."""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

import pytest

from kernel_sdk import Client, Context, Plugin
from support import Node, serving

pytest.importorskip("opentelemetry.sdk")

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (  # noqa: E402
    InMemorySpanExporter,
)
from opentelemetry.trace import SpanKind  # noqa: E402

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"


def traced_pair(tracer: Any) -> tuple[Plugin, Plugin, dict[str, str]]:
    """`front.go` calls `back.see`; both record the traceparent they got."""
    seen: dict[str, str] = {}
    front, back = Plugin("front", tracer=tracer), Plugin("back", tracer=tracer)

    @front.service("front.go")
    async def go(ctx: Context, args: Any) -> Any:
        seen["front"] = ctx.traceparent or ""
        return await ctx.call_json("back.see")

    @back.service("back.see")
    async def see(ctx: Context, args: Any) -> Any:
        return ctx.traceparent

    return front, back, seen


def handle_spans(exporter: InMemorySpanExporter) -> dict[str, ReadableSpan]:
    spans = exporter.get_finished_spans()
    assert all(s.name == "plugin.handle" for s in spans)
    return {str(s.attributes["kernel.service"]): s for s in spans if s.attributes}


async def test_handler_spans_join_the_callers_trace(node: Node) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    front, back, seen = traced_pair(provider.get_tracer("test"))

    async with serving(front, node.url), serving(back, node.url), Client(node.url) as client:
        back_saw = await client.call_json(
            "front.go", headers={"traceparent": f"00-{TRACE}-{CALLER_SPAN}-01"})

    spans = handle_spans(exporter)
    outer, inner = spans["front.go"], spans["back.see"]
    assert outer.kind == SpanKind.SERVER and inner.kind == SpanKind.SERVER
    assert outer.context is not None and inner.context is not None
    assert outer.parent is not None and inner.parent is not None
    # Without trace export the node forwards the caller's traceparent, so
    # the first handler's parent is the caller's span.
    assert f"{outer.context.trace_id:032x}" == TRACE
    assert f"{outer.parent.span_id:016x}" == CALLER_SPAN
    # The nested call carried plugin.handle as its traceparent.
    assert inner.context.trace_id == outer.context.trace_id
    assert inner.parent.span_id == outer.context.span_id
    # A handler's ctx.traceparent is its own plugin.handle span.
    assert seen["front"] == f"00-{TRACE}-{outer.context.span_id:016x}-01"
    assert back_saw == f"00-{TRACE}-{inner.context.span_id:016x}-01"
    assert outer.attributes is not None and outer.attributes["kernel.plugin"] == "front"
    assert str(outer.attributes["kernel.context"]).endswith(".1")


async def test_with_trace_export_the_handler_is_a_child_of_the_dispatch_span(
        node_factory: Callable[..., Node]) -> None:
    # An OTLP endpoint nobody listens on: the node makes its spans (and
    # fails to export them, quietly), which is all this test needs.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    node = node_factory(env={"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}"})
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    front, back, _ = traced_pair(provider.get_tracer("test"))

    async with serving(front, node.url), serving(back, node.url), Client(node.url) as client:
        await client.call_json("front.go", headers={"traceparent": f"00-{TRACE}-{CALLER_SPAN}-01"})

    spans = handle_spans(exporter)
    outer, inner = spans["front.go"], spans["back.see"]
    assert outer.context is not None and inner.context is not None
    assert outer.parent is not None and inner.parent is not None
    assert f"{outer.context.trace_id:032x}" == TRACE
    assert inner.context.trace_id == outer.context.trace_id
    # The kernel's dispatch spans sit between the caller and each handler.
    assert f"{outer.parent.span_id:016x}" != CALLER_SPAN
    assert inner.parent.span_id != outer.context.span_id
