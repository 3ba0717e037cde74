"""A plugin's session over time: heartbeats, replace-mode hot swap and
drain, reconnecting after the node restarts, supervised instance ids, stop."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable
from typing import Any

import grpc
import pytest

from kernel_sdk import Client, Context, KernelError, Plugin, SessionEnd
from kernel_sdk._proto import admin_pb
from support import Node, eventually, serving, within


def answering(name: str, answer: str, mode: str = "pool", delay: float = 0.0) -> Plugin:
    plugin = Plugin(name, mode=mode)  # type: ignore[arg-type]

    @plugin.service("swap.who")
    async def who(ctx: Context, args: Any) -> str:
        await asyncio.sleep(args or delay)
        return answer

    return plugin


async def test_heartbeats_keep_an_idle_session_registered(
        node_factory: Callable[..., Node]) -> None:
    node = node_factory(env={"KERNEL_ROUTER__HEARTBEAT_INTERVAL_MS": "100",
                             "KERNEL_ROUTER__HEARTBEAT_TIMEOUT_MS": "500"})
    plugin = answering("idle", "still here")
    async with serving(plugin, node.url), Client(node.url) as client:
        await asyncio.sleep(1.5)  # three heartbeat timeouts of silence, but for heartbeats
        assert await client.call_json("swap.who") == "still here"
        assert plugin.sessions == 1
    await node.close_admin()


async def test_replace_mode_hot_swaps_and_the_old_instance_drains(node: Node) -> None:
    old = answering("swap", "old")
    old_task = asyncio.create_task(old.serve(node.url))
    await within(old.wait_registered())
    async with Client(node.url) as client:
        assert await client.call_json("swap.who") == "old"
        in_flight = asyncio.create_task(client.call_json("swap.who", 0.5))
        await asyncio.sleep(0.1)
        new = answering("swap", "new", mode="replace")
        async with serving(new, node.url):
            # Every call routed after the switch goes to the new instance.
            assert [await client.call_json("swap.who") for _ in range(5)] == ["new"] * 5
            # The old instance finished its call, then ended its session.
            assert await within(in_flight) == "old"
            end = await within(old_task)
            assert end == SessionEnd(drained=True, reason=f"replaced by instance {new.instance_id}")
            plugins = await node.admin.list_plugins(admin_pb.ListPluginsRequest())
            assert [p.instance_id for p in plugins.plugins] == [new.instance_id]


async def test_a_plugin_reconnects_after_the_node_restarts(
        node_factory: Callable[..., Node]) -> None:
    node = node_factory()
    plugin = answering("phoenix", "back")
    async with serving(plugin, node.url), Client(node.url) as client:
        assert await client.call_json("swap.who") == "back"
        first_instance = plugin.instance_id
        node.stop(signal.SIGKILL)
        with pytest.raises(KernelError) as err:
            await client.call_json("swap.who", timeout=1)
        assert err.value.code == grpc.StatusCode.UNAVAILABLE
        await asyncio.sleep(0.5)  # the plugin backs off meanwhile
        node.start(node.port)  # the same port: a restarted node

        async def answers() -> None:
            assert await client.call_json("swap.who", timeout=1) == "back"

        await eventually(answers, timeout=10)
        assert plugin.sessions == 2
        assert plugin.instance_id != first_instance  # the kernel made a new one


async def test_a_supervised_plugin_registers_with_its_instance_id(
        node: Node, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KERNEL_INSTANCE_ID", "supervised-7")
    plugin = answering("supervised", "ok")
    async with serving(plugin, node.url):
        assert plugin.instance_id == "supervised-7"
        plugins = await node.admin.list_plugins(admin_pb.ListPluginsRequest())
        assert [(p.plugin, p.instance_id) for p in plugins.plugins] == [
            ("supervised", "supervised-7")]


async def test_stop_with_grace_lets_in_flight_calls_finish(node: Node) -> None:
    plugin = answering("graceful", "done")
    task = asyncio.create_task(plugin.serve(node.url))
    await within(plugin.wait_registered())
    async with Client(node.url) as client:
        call = asyncio.create_task(client.call_json("swap.who", 0.3))
        await asyncio.sleep(0.1)
        plugin.stop(grace=2)
        assert await within(call) == "done"
        assert await within(task) == SessionEnd(drained=False)

        async def gone() -> None:
            with pytest.raises(KernelError) as err:
                await client.call_json("swap.who")
            assert err.value.code == grpc.StatusCode.NOT_FOUND

        await eventually(gone, timeout=3)
