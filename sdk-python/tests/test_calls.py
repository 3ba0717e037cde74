"""Register and call: raw and JSON handlers, schemas, multiplexing, the
unary fallback, and what a handler's failures become."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

import grpc
import pytest

from kernel_sdk import Client, Context, KernelError, Plugin
from kernel_sdk._proto import admin_pb
from support import Node, serving


async def test_register_and_call_raw_and_json(node: Node) -> None:
    plugin = Plugin("greeter")

    async def shout(ctx: Context, payload: bytes) -> bytes:
        return payload.upper()

    plugin.provide("greet.shout", shout)

    @plugin.service("greet.hello")
    async def hello(ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
        return {"greeting": f"hello, {args['name']}", "caller": ctx.caller,
                "service": ctx.service, "method": ctx.method}

    async with serving(plugin, node.url), Client(node.url, plugin="tester") as client:
        assert plugin.instance_id.startswith("greeter-")
        assert await client.call("greet.shout", b"quiet") == b"QUIET"
        reply = await client.call_json("greet.hello", {"name": "ada"}, method="formal")
        assert reply == {"greeting": "hello, ada", "caller": "tester",
                         "service": "greet.hello", "method": "formal"}
        listed = await node.admin.list_services(admin_pb.ListServicesRequest())
        assert [s.name for s in listed.services] == ["greet.hello", "greet.shout"]


async def test_calls_are_multiplexed_and_replies_matched_by_id(node: Node) -> None:
    plugin = Plugin("mux")

    @plugin.service("mux.delay")
    async def delay(ctx: Context, args: dict[str, Any]) -> int:
        # Later requests finish first: replies come back out of order.
        await asyncio.sleep(args["ms"] / 1000)
        return int(args["n"])

    async with serving(plugin, node.url), Client(node.url) as client:
        calls = [client.call_json("mux.delay", {"n": n, "ms": 200 - 4 * n}) for n in range(40)]
        assert await asyncio.gather(*calls) == list(range(40))
        # All forty went over one CallStream.
        mux = client._mux
        assert mux is not None and not mux.dead


async def test_the_unary_call_path_gives_the_same_answers(node: Node) -> None:
    plugin = Plugin("unary")

    @plugin.service("unary.echo")
    async def echo(ctx: Context, args: Any) -> Any:
        return {"args": args, "caller": ctx.caller, "remaining": ctx.remaining() is not None}

    async with serving(plugin, node.url), Client(node.url, "uni", multiplex=False) as client:
        assert await client.call_json("unary.echo", [1, 2], timeout=2) == {
            "args": [1, 2], "caller": "uni", "remaining": True}
        with pytest.raises(KernelError) as err:
            await client.call("unary.nobody")
        assert err.value.code == grpc.StatusCode.NOT_FOUND
        # The status message carries " (origin: …)"; the decoded Failure does not.
        assert err.value.message == "no provider for service `unary.nobody`"
        assert client._mux is None


async def test_arguments_failing_the_json_schema_never_reach_the_handler(node: Node) -> None:
    plugin = Plugin("orders")
    seen: list[Any] = []
    schema = {"type": "object", "required": ["qty"],
              "properties": {"qty": {"type": "integer", "minimum": 1}}}

    @plugin.service("orders.place", schema=schema)
    async def place(ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
        seen.append(args)
        return {"placed": args["qty"]}

    async with serving(plugin, node.url), Client(node.url) as client:
        assert await client.call_json("orders.place", {"qty": 2}) == {"placed": 2}
        with pytest.raises(KernelError) as err:
            await client.call_json("orders.place", {"qty": "two"})
        assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert "/qty" in err.value.message and "integer" in err.value.message
        with pytest.raises(KernelError) as err:
            await client.call("orders.place", b"not json")
        assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert seen == [{"qty": 2}]


@dataclass
class Order:
    sku: str
    qty: int


@dataclass
class Placed:
    sku: str
    total: int


async def test_typed_json_handlers_take_and_return_dataclasses(node: Node) -> None:
    plugin = Plugin("typed")

    async def place(ctx: Context, order: Order) -> Placed:
        assert isinstance(order, Order)
        return Placed(order.sku, order.qty * 3)

    plugin.provide_json("typed.place", place)
    async with serving(plugin, node.url), Client(node.url) as client:
        assert await client.call_json("typed.place", {"sku": "a1", "qty": 2}) == {
            "sku": "a1", "total": 6}
        with pytest.raises(KernelError) as err:
            await client.call_json("typed.place", {"sku": "a1", "colour": "red"})
        assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert "Order" in err.value.message


async def test_handler_failures_become_codes(node: Node) -> None:
    plugin = Plugin("faulty")

    @plugin.service("faulty.refuse")
    async def refuse(ctx: Context, args: Any) -> Any:
        raise KernelError(grpc.StatusCode.FAILED_PRECONDITION, "out of stock")

    @plugin.service("faulty.crash")
    async def crash(ctx: Context, args: Any) -> Any:
        return {"x": 1} / 0  # type: ignore[operator]

    async def wrong_type(ctx: Context, payload: bytes) -> Any:
        return 42

    plugin.provide("faulty.wrong", wrong_type)

    async with serving(plugin, node.url), Client(node.url) as client:
        with pytest.raises(KernelError) as err:
            await client.call("faulty.refuse")
        assert (err.value.code, err.value.message) == (
            grpc.StatusCode.FAILED_PRECONDITION, "out of stock")
        assert [(h.service, h.plugin) for h in err.value.causality] == [("faulty.refuse", "faulty")]

        with pytest.raises(KernelError) as err:
            await client.call("faulty.crash")
        assert err.value.code == grpc.StatusCode.INTERNAL
        assert "TypeError" in err.value.message

        with pytest.raises(KernelError) as err:
            await client.call("faulty.wrong")
        assert err.value.code == grpc.StatusCode.INTERNAL
        assert "returned int" in err.value.message

        # The plugin survives its handlers' failures.
        with pytest.raises(KernelError) as err:
            await client.call("faulty.refuse")
        assert err.value.code == grpc.StatusCode.FAILED_PRECONDITION


async def test_a_bad_hello_is_refused_without_retrying(node: Node) -> None:
    plugin = Plugin("badname")

    async def noop(ctx: Context, payload: bytes) -> bytes:
        return b""

    plugin.provide("bad..name", noop)
    with pytest.raises(KernelError) as err:
        await asyncio.wait_for(plugin.serve(node.url), 5)
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "bad..name" in err.value.message


def test_errors_render_their_chain() -> None:
    from kernel_sdk import Hop

    err = KernelError(grpc.StatusCode.ABORTED, "boom",
                      [Hop("r.1.1", "c.b", "pb"), Hop("r.1", "c.a", "")])
    assert str(err) == "ABORTED: boom [causality: c.b (pb) @ r.1.1 <- c.a @ r.1]"
    assert err.chain == ["c.b", "c.a"]
    back = KernelError.from_failure(err.to_failure())
    assert (back.code, back.message, back.causality) == (err.code, err.message, err.causality)
    assert json.loads(json.dumps(err.chain)) == ["c.b", "c.a"]
