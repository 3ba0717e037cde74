"""A handler's context: path and baggage nesting, causality through nested
calls, deadlines and cancellation reaching the handler, budgets and charges."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest

from kernel_sdk import Client, Context, KernelError, Plugin
from kernel_sdk._proto import admin_pb
from support import Node, eventually, serving, within

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def inspector(plugin: Plugin, name: str) -> None:
    @plugin.service(name)
    async def inspect(ctx: Context, args: Any) -> dict[str, Any]:
        return {"path": ctx.path, "baggage": ctx.baggage, "caller": ctx.caller,
                "trace_id": ctx.trace_id, "budget": ctx.budget, "remaining": ctx.remaining()}


async def test_nested_calls_carry_path_baggage_trace_and_budget(node: Node) -> None:
    outer, inner = Plugin("outer"), Plugin("inner")
    inspector(inner, "inner.inspect")

    @outer.service("outer.twice")
    async def twice(ctx: Context, args: Any) -> dict[str, Any]:
        first = await ctx.call_json("inner.inspect")
        second = await ctx.call_json("inner.inspect")
        return {"mine": ctx.path, "budget": ctx.budget, "first": first, "second": second}

    async with serving(outer, node.url), serving(inner, node.url), \
            Client(node.url, "edge") as client:
        out = await client.call_json("outer.twice", timeout=5, headers={
            "baggage": "tenant=acme", "traceparent": TRACEPARENT,
            "x-kernel-budget": "calls=50,depth=4"})
    root, _, n = out["mine"].partition(".")
    assert len(root) == 16 and n == "1"
    assert out["first"]["path"] == out["mine"] + ".1"
    assert out["second"]["path"] == out["mine"] + ".2"
    for nested in (out["first"], out["second"]):
        assert nested["baggage"] == "tenant=acme"
        assert nested["caller"] == "outer"
        assert nested["trace_id"] == "0af7651916cd43dd8448eb211c80319c"
        # The nested call's deadline is no later than the outer one's.
        assert 0 < nested["remaining"] < 5
    assert out["budget"]["depth"] == 3 and out["first"]["budget"]["depth"] == 2
    # calls: 50 from the root, one spent by each call made since.
    assert out["budget"]["calls"] == 49
    assert out["second"]["budget"]["calls"] == 47


async def test_a_failure_keeps_its_causality_chain_through_nested_calls(node: Node) -> None:
    pa, pb_, pc = Plugin("pa"), Plugin("pb"), Plugin("pc")

    @pa.service("cause.a")
    async def a(ctx: Context, args: Any) -> Any:
        return await ctx.call_json("cause.b")

    @pb_.service("cause.b")
    async def b(ctx: Context, args: Any) -> Any:
        try:
            return await ctx.call_json("cause.c")
        except KernelError:
            raise  # unchanged: the chain grows hop by hop

    @pc.service("cause.c")
    async def c(ctx: Context, args: Any) -> Any:
        raise KernelError(grpc.StatusCode.ABORTED, "boom: stock table locked")

    async with serving(pa, node.url), serving(pb_, node.url), serving(pc, node.url):
        for multiplex in (True, False):
            async with Client(node.url, multiplex=multiplex) as client:
                with pytest.raises(KernelError) as err:
                    await client.call_json("cause.a")
            e = err.value
            assert (e.code, e.message) == (grpc.StatusCode.ABORTED, "boom: stock table locked")
            assert [(h.service, h.plugin) for h in e.causality] == [
                ("cause.c", "pc"), ("cause.b", "pb"), ("cause.a", "pa")]
            root = e.causality[2].context
            assert e.causality[1].context == root + ".1"
            assert e.causality[0].context == root + ".1.1"


class Sleeper:
    """A provider whose `sleep.long` handler records how it ended."""

    def __init__(self) -> None:
        self.plugin = Plugin("sleeper")
        self.started = asyncio.Event()
        self.ended: list[str] = []
        self.remaining: list[float | None] = []
        self.path = ""
        self.plugin.provide_json("sleep.long", self.sleep)

    async def sleep(self, ctx: Context, args: Any) -> Any:
        self.remaining.append(ctx.remaining())
        self.path = ctx.path
        self.started.set()
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            self.ended.append("cancelled")
            raise
        self.ended.append("finished")
        return {}

    async def cancelled(self) -> None:
        assert self.ended == ["cancelled"]


async def test_a_deadline_cancels_the_handler(node: Node) -> None:
    s = Sleeper()
    async with serving(s.plugin, node.url), Client(node.url) as client:
        for multiplex in (True, False):
            s.ended.clear()
            client._multiplex = multiplex
            with pytest.raises(KernelError) as err:
                await within(client.call_json("sleep.long", timeout=0.3))
            assert err.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
            await eventually(s.cancelled, timeout=3)
        remaining = s.remaining[0]
        assert remaining is not None and 0 < remaining <= 0.3


async def test_a_caller_that_gives_up_cancels_the_handler(node: Node) -> None:
    s = Sleeper()
    async with serving(s.plugin, node.url), Client(node.url) as client:
        call = asyncio.create_task(client.call_json("sleep.long"))
        await within(s.started.wait())
        assert s.remaining == [None]
        call.cancel()
        await eventually(s.cancelled, timeout=3)


async def test_an_operator_cancel_reaches_the_handler_and_the_caller(node: Node) -> None:
    s = Sleeper()
    async with serving(s.plugin, node.url), Client(node.url) as client:
        call = asyncio.create_task(client.call_json("sleep.long"))
        await within(s.started.wait())
        done = await node.admin.cancel_context(admin_pb.CancelContextRequest(path=s.path))
        assert done.cancelled >= 1
        with pytest.raises(KernelError) as err:
            await within(call)
        assert err.value.code == grpc.StatusCode.CANCELLED
        await eventually(s.cancelled, timeout=3)


async def test_the_depth_budget_stops_a_recursion(node: Node) -> None:
    plugin = Plugin("diver")
    depths: list[int] = []

    @plugin.service("dive.down")
    async def down(ctx: Context, n: int) -> int:
        depths.append(ctx.budget["depth"])
        if n == 0:
            return 0
        return 1 + await ctx.call_json("dive.down", n - 1)

    async with serving(plugin, node.url), Client(node.url) as client:
        assert await client.call_json("dive.down", 2, headers={"x-kernel-budget": "depth=3"}) == 2
        assert depths == [2, 1, 0]
        with pytest.raises(KernelError) as err:
            await client.call_json("dive.down", 5, headers={"x-kernel-budget": "depth=3"})
    assert err.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "budget `depth` exhausted" in err.value.message


async def test_charge_spends_a_custom_budget_then_refuses_and_cancels(node: Node) -> None:
    plugin = Plugin("sql")
    ends: list[str] = []

    @plugin.service("sql.query")
    async def query(ctx: Context, args: dict[str, int]) -> dict[str, int]:
        left = await ctx.charge("sql", args["cost"])
        if args.get("then"):
            try:
                try:
                    await ctx.charge("sql", args["then"])
                except KernelError:
                    # Refused; the kernel cancels this branch too: wait for it.
                    await asyncio.sleep(5)
            except asyncio.CancelledError:
                # (The cancel may even overtake the charge's answer.)
                ends.append("cancelled")
                raise
        return {"left": left}

    async with serving(plugin, node.url), Client(node.url) as client:
        assert await client.call_json("sql.query", {"cost": 3},
                                      headers={"x-kernel-budget": "sql=5"}) == {"left": 2}
        # Without a limit the counter is unlimited: u64::MAX remains.
        assert await client.call_json("sql.query", {"cost": 3}) == {"left": 2**64 - 1}
        with pytest.raises(KernelError) as err:
            await within(client.call_json("sql.query", {"cost": 3, "then": 3},
                                          headers={"x-kernel-budget": "sql=5"}))
    assert err.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "budget `sql` exhausted" in err.value.message

    async def handler_cancelled() -> None:
        assert ends == ["cancelled"]

    await eventually(handler_cancelled, timeout=3)
