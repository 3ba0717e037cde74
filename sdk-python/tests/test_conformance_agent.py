"""The conformance agent (conformance/agent.py), driven the way the Rust
driver drives it: as a child process, over raw `kernel.v1` gRPC (unary
`Call`, `Publish`; never the SDK's Client), reading its READY line."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest

from kernel_sdk._proto import KernelStub, open_channel, pb
from kernel_sdk.errors import KernelError
from support import Node, eventually

AGENT = Path(__file__).resolve().parents[1] / "conformance" / "agent.py"


class Agent:
    def __init__(self, node: Node, prefix: str, tag: str, replace: bool = False) -> None:
        env = dict(os.environ, KERNEL_URL=node.url, CONFORMANCE_PREFIX=prefix,
                   CONFORMANCE_TAG=tag, CONFORMANCE_REPLACE="1" if replace else "0")
        self.proc = subprocess.Popen([sys.executable, str(AGENT)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     env=env, text=True)
        assert self.proc.stdout is not None
        self.ready_line = self.proc.stdout.readline().strip()

    def close_stdin(self) -> int:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        return self.proc.wait(10)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None and not pipe.closed:
                pipe.close()


@pytest.fixture
async def raw(node: Node) -> AsyncIterator[Callable[..., Any]]:
    """`await raw(service, json_value, **metadata)`: a raw unary Call."""
    channel = open_channel(node.url)
    stub = KernelStub(channel)

    async def call(service: str, value: Any = None, timeout: float | None = 5.0,
                   **metadata: str) -> Any:
        request = pb.CallRequest(service=service, payload=json.dumps(value).encode())
        md = [(k.replace("_", "-"), v) for k, v in metadata.items()]
        try:
            response = await stub.call(request, timeout=timeout, metadata=md)
        except grpc.aio.AioRpcError as err:
            raise KernelError.from_rpc_error(err) from None
        return json.loads(response.payload) if response.payload else None

    yield call
    await channel.close(None)


async def test_the_agent_serves_the_conformance_services(node: Node, raw: Any) -> None:
    agent = Agent(node, "conf.py", "first")
    try:
        assert agent.ready_line == "READY"
        assert await raw("conf.py.whoami", {}) == {"tag": "first"}
        assert await raw("conf.py.echo", {"any": [1, "x"]}) == {"any": [1, "x"]}

        with pytest.raises(KernelError) as err:
            await raw("conf.py.fail", {"code": "NOT_FOUND", "message": "gone"})
        assert (err.value.code, err.value.message) == (grpc.StatusCode.NOT_FOUND, "gone")

        seen = await raw("conf.py.inspect", {}, x_kernel_plugin="driver", baggage="k=v",
                         traceparent="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
        assert seen["service"] == "conf.py.inspect" and seen["caller"] == "driver"
        assert seen["baggage"] == "k=v" and seen["trace_id"] == "0af7651916cd43dd8448eb211c80319c"
        assert isinstance(seen["remaining_ms"], int) and 0 < seen["remaining_ms"] <= 5000
        assert (await raw("conf.py.inspect", {}, timeout=None))["remaining_ms"] is None

        relayed = await raw("conf.py.relay", {"service": "conf.py.inspect", "payload": {}})
        assert relayed["reply"]["path"] == relayed["path"] + ".1"
        assert relayed["reply"]["caller"] == "conf.py"
        with pytest.raises(KernelError) as err:
            await raw("conf.py.relay", {"service": "conf.py.fail",
                                        "payload": {"code": "ABORTED", "message": "deep"}})
        assert err.value.message == "deep"
        assert err.value.chain == ["conf.py.fail", "conf.py.relay"]

        with pytest.raises(KernelError) as err:
            await raw("conf.py.sleep", {"ms": 3000, "key": "k1"}, timeout=0.3)
        assert err.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
        assert await raw("conf.py.sleep", {"ms": 10, "key": "k2"}) == {"slept": 10}

        async def cancelled() -> None:
            assert await raw("conf.py.observed", {"key": "k1"}) == {"state": "cancelled"}

        await eventually(cancelled, timeout=3)
        assert await raw("conf.py.observed", {"key": "k2"}) == {"state": "finished"}
        assert await raw("conf.py.observed", {"key": "k3"}) == {"state": None}

        assert await raw("conf.py.charge", {"counter": "sql", "amount": 2},
                         x_kernel_budget="sql=5") == {"remaining": 3}
        with pytest.raises(KernelError) as err:
            await raw("conf.py.charge", {"counter": "sql", "amount": 9}, x_kernel_budget="sql=5")
        assert err.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED

        assert await raw("conf.py.subscribe", {"key": "s", "patterns": ["conf.*"], "group": None,
                                               "explicit": True, "max_deliver": 2}) == {}
        assert await raw("conf.py.subscribe", {"key": "d", "patterns": ["$dlq.>"],
                                               "group": None, "explicit": False,
                                               "max_deliver": None}) == {}
        emitted = await raw("conf.py.relay", {"service": "conf.py.emit",
                                              "payload": {"topic": "conf.a", "payload": {"n": 1}}})
        published = await raw("conf.py.publish", {"topic": "conf.b", "payload": {"nack": True}})
        assert len(published["id"]) == 16

        async def received() -> None:
            got = await raw("conf.py.received", {"key": "s"})
            assert [(e["topic"], e["payload"]) for e in got] == [
                ("conf.a", {"n": 1}), ("conf.b", {"nack": True}), ("conf.b", {"nack": True})]
            # The emit's delivery is a child of the emitting handler's call.
            assert got[0]["path"] == emitted["path"] + ".1.1"
            dead = await raw("conf.py.received", {"key": "d"})
            assert [e["topic"] for e in dead] == ["$dlq.conf.b"]

        await eventually(received, timeout=5)

        assert await raw("conf.py.call", {"service": "conf.py.whoami", "payload": {},
                                          "timeout_ms": 1000}) == {"ok": {"tag": "first"}}
        failed = await raw("conf.py.call", {"service": "conf.py.relay", "timeout_ms": None,
                                            "payload": {"service": "nobody.home", "payload": {}}})
        assert failed == {"error": {"code": "NOT_FOUND",
                                    "message": "no provider for service `nobody.home`",
                                    "chain": ["nobody.home", "conf.py.relay"]}}
        assert agent.close_stdin() == 0
    finally:
        agent.kill()


async def test_a_replacing_agent_takes_over(node: Node, raw: Any) -> None:
    first = Agent(node, "conf.swap", "one")
    second = None
    try:
        assert first.ready_line == "READY"
        assert await raw("conf.swap.whoami", {}) == {"tag": "one"}
        second = Agent(node, "conf.swap", "two", replace=True)
        assert second.ready_line == "READY"
        assert [(await raw("conf.swap.whoami", {}))["tag"] for _ in range(3)] == ["two"] * 3
        first.proc.terminate()
        assert await asyncio.to_thread(first.proc.wait, 10) == 0
    finally:
        first.kill()
        if second is not None:
            second.kill()
