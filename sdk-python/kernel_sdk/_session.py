"""One `Register` session (PROTOCOL §5.1): hello and welcome, invocations
run as asyncio tasks, results and heartbeats batched up by one writer,
cancels that cancel the handler's task, and the drain: finish in-flight
calls, half-close, and wait for the kernel to end the stream.

`Plugin` (plugin.py) owns the services and the reconnect loop; it runs one
`Session` per connection and gives it what it needs through `Provider`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Protocol

import grpc
import grpc.aio

from ._proto import pb
from .client import Client
from .errors import KernelError

__all__ = ["Provider", "Session", "SessionEnd"]

log = logging.getLogger("kernel_sdk")

#: How long a drained session waits for the kernel to end the stream.
DRAIN_FLUSH = 5.0
#: How long a stopping session waits for its last results to go out.
STOP_FLUSH = 1.0
#: Items per upstream frame, as the kernel batches.
BATCH = 512

_CLOSE = object()
_HEARTBEAT = object()


@dataclass(frozen=True)
class SessionEnd:
    """How `Plugin.serve` ended."""

    #: True when the kernel told this instance to drain (it was replaced)
    #: and it did; False when `stop()` was called.
    drained: bool
    #: The kernel's drain reason, e.g. `replaced by instance greeter-9f8e7d6c`.
    reason: str = ""


class Provider(Protocol):
    """What a session needs from its plugin."""

    @property
    def name(self) -> str: ...

    def _welcomed(self, instance_id: str) -> None:
        """The kernel registered this session as `instance_id`."""

    def _invocation(self, inv: pb.Invocation,
                    client: Client) -> Coroutine[Any, Any, pb.CallResult]:
        """The coroutine that runs one invocation and gives its result."""


class Session:
    """One Register stream and the invocations running on it."""

    def __init__(self, provider: Provider, client: Client, hello: pb.Hello) -> None:
        self.provider = provider
        self.client = client
        self.up: asyncio.Queue[object] = asyncio.Queue()
        self.call = client.stub.register(_up_frames(pb.ProviderUp(hello=hello), self.up))
        self.running: dict[int, asyncio.Task[pb.CallResult]] = {}
        self.draining: str | None = None
        self.closed_up = False
        self.heartbeat: asyncio.Task[None] | None = None
        self.idle = asyncio.Event()

    async def run(self, stop: asyncio.Event, grace: Callable[[], float]) -> SessionEnd:
        """Serves until the kernel ends the session (drained: returns; lost:
        raises `KernelError`) or `stop` is set (returns once closed, after
        giving in-flight handlers `grace()` seconds, asked when stopping)."""
        try:
            first = await self.call.read()
            if not isinstance(first, pb.ProviderDown) or not first.HasField("welcome"):
                raise KernelError(grpc.StatusCode.UNAVAILABLE, "the kernel did not answer hello")
            self.welcomed(first.welcome)
            reader = asyncio.create_task(self.read())
            stopper = asyncio.create_task(stop.wait())
            try:
                await asyncio.wait((reader, stopper), return_when=asyncio.FIRST_COMPLETED)
            finally:
                stopper.cancel()
            if reader.done():
                return reader.result()
            await self.stop(reader, grace())
            return SessionEnd(drained=False)
        except grpc.aio.AioRpcError as err:
            raise KernelError.from_rpc_error(err) from None
        finally:
            self.close()

    def welcomed(self, welcome: pb.Welcome) -> None:
        self.provider._welcomed(welcome.instance_id)
        log.info("plugin %s: registered as %s", self.provider.name, welcome.instance_id)
        interval = max(welcome.heartbeat_interval_ms, 100) / 1000
        self.heartbeat = asyncio.create_task(self.beat(interval))

    async def beat(self, interval: float) -> None:
        """Any frame resets the kernel's silence timer; this one is for idle
        sessions."""
        while True:
            await asyncio.sleep(interval)
            self.up.put_nowait(_HEARTBEAT)

    async def read(self) -> SessionEnd:
        """Handles frames until the kernel ends the stream."""
        call = self.call
        while True:
            frame = await call.read()
            if not isinstance(frame, pb.ProviderDown):  # EOF
                break
            # Invocations first: a cancel batched with its invocation must
            # find it running.
            for inv in frame.invocations:
                self.start(inv)
            for call_id in frame.cancels:
                task = self.running.pop(call_id, None)
                if task is not None:
                    task.cancel()
            if frame.HasField("drain"):
                log.info("plugin %s: draining (%s)", self.provider.name, frame.drain.reason)
                self.draining = frame.drain.reason
                self.maybe_close_up()
        if self.draining is not None:
            return SessionEnd(drained=True, reason=self.draining)
        raise KernelError(grpc.StatusCode.UNAVAILABLE, "the kernel closed the session")

    def start(self, inv: pb.Invocation) -> None:
        task = asyncio.create_task(self.provider._invocation(inv, self.client))
        call_id = inv.call_id
        self.running[call_id] = task
        task.add_done_callback(lambda t: self.finished(call_id, t))

    def finished(self, call_id: int, task: asyncio.Task[pb.CallResult]) -> None:
        # Not in `running` any more: cancelled by the kernel (no result is
        # wanted) or by the session's end.
        if self.running.pop(call_id, None) is not None and not task.cancelled():
            result = task.result()
            result.call_id = call_id
            self.up.put_nowait(result)
        if not self.running:
            self.idle.set()
            self.maybe_close_up()

    def maybe_close_up(self) -> None:
        """Once drained and idle: half-close (the last results are queued
        ahead of it) and give the kernel a while to end the stream."""
        if self.draining is None or self.running or self.closed_up:
            return
        self.closed_up = True
        self.up.put_nowait(_CLOSE)
        asyncio.get_running_loop().call_later(DRAIN_FLUSH, self.call.cancel)

    async def stop(self, reader: asyncio.Task[SessionEnd], grace: float) -> None:
        """Gives in-flight handlers `grace` seconds; then half-closes, so the
        results already queued go out first, and waits a moment for the
        kernel to end the stream."""
        if grace > 0 and self.running:
            self.idle.clear()
            try:
                await asyncio.wait_for(self.idle.wait(), grace)
            except asyncio.TimeoutError:
                pass
        if not self.closed_up:
            self.closed_up = True
            self.up.put_nowait(_CLOSE)
        await asyncio.wait((reader,), timeout=STOP_FLUSH)
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)

    def close(self) -> None:
        if self.heartbeat is not None:
            self.heartbeat.cancel()
        running, self.running = self.running, {}
        for task in running.values():
            task.cancel()
        self.up.put_nowait(_CLOSE)
        self.call.cancel()


async def _up_frames(hello: pb.ProviderUp,
                     up: asyncio.Queue[object]) -> AsyncIterator[pb.ProviderUp]:
    yield hello
    while True:
        item = await up.get()
        results: list[pb.CallResult] = []
        heartbeat = False
        while True:
            if item is _CLOSE:
                if results or heartbeat:
                    yield pb.ProviderUp(results=results, heartbeat=heartbeat)
                return
            if item is _HEARTBEAT:
                heartbeat = True
            else:
                assert isinstance(item, pb.CallResult)
                results.append(item)
            if up.empty() or len(results) >= BATCH:
                break
            item = up.get_nowait()
        yield pb.ProviderUp(results=results, heartbeat=heartbeat and not results)
