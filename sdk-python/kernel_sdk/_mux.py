"""Many calls over one `CallStream` (PROTOCOL §4.2): call ids, a map of
pending replies, frames batched from a queue, and every pending call failed
when the stream dies.

grpc.aio allows one outstanding write per stream, so frames are produced by
one async generator that drains the queue: whatever piles up while a frame
is being written goes out together in the next one (at most 512 items, the
kernel's batch size).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import grpc.aio

from ._headers import PLUGIN
from ._proto import KernelStub, pb

#: Items per frame, as the kernel batches.
BATCH = 512


class StreamClosed(Exception):
    """The stream ended before the call's reply came: `code` and `details`
    are the stream's status (OK when the kernel ended it)."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(code, details)
        self.code = code
        self.details = details


class CallMux:
    """One CallStream and the calls in flight on it."""

    def __init__(self, stub: KernelStub, plugin: str | None) -> None:
        self._queue: asyncio.Queue[pb.CallFrame | int | None] = asyncio.Queue()
        self._pending: dict[int, asyncio.Future[pb.CallReply]] = {}
        self._next = 1
        self._loop = asyncio.get_running_loop()
        #: Set once the stream ended: no more calls are taken.
        self.dead = False
        metadata = ((PLUGIN, plugin),) if plugin else None
        self._call = stub.call_stream(self._frames(), metadata=metadata)
        self._reader = asyncio.create_task(self._read())

    def send(self, frame: pb.CallFrame) -> tuple[int, asyncio.Future[pb.CallReply]] | None:
        """Queues `frame` under a new id; None when the stream is dead (the
        frame was not sent, so it is safe to send on a new stream)."""
        if self.dead:
            return None
        call_id = self._next
        self._next += 1
        frame.id = call_id
        reply: asyncio.Future[pb.CallReply] = self._loop.create_future()
        self._pending[call_id] = reply
        self._queue.put_nowait(frame)
        return call_id, reply

    def cancel(self, call_id: int) -> None:
        """Abandons a call: the kernel cancels it downstream, no reply comes."""
        if self._pending.pop(call_id, None) is not None and not self.dead:
            self._queue.put_nowait(call_id)

    async def close(self, timeout: float = 5.0) -> None:
        """Half-closes: calls in flight finish, then the kernel ends the stream."""
        if not self.dead:
            self._queue.put_nowait(None)
        try:
            await asyncio.wait_for(asyncio.shield(self._reader), timeout)
        except asyncio.TimeoutError:
            self._call.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)

    async def _frames(self) -> AsyncIterator[pb.CallStreamUp]:
        queue = self._queue
        while True:
            item = await queue.get()
            calls: list[pb.CallFrame] = []
            cancels: list[int] = []
            closing = False
            while True:
                if item is None:
                    closing = True
                    break
                if isinstance(item, int):
                    cancels.append(item)
                else:
                    calls.append(item)
                if len(calls) + len(cancels) >= BATCH or queue.empty():
                    break
                item = queue.get_nowait()
            if calls or cancels:
                yield pb.CallStreamUp(calls=calls, cancels=cancels)
            if closing:
                return

    async def _read(self) -> None:
        closed = StreamClosed(grpc.StatusCode.OK, "the call stream to the kernel closed")
        try:
            while True:
                down = await self._call.read()
                if not isinstance(down, pb.CallStreamDown):  # EOF
                    break
                pending = self._pending
                for reply in down.replies:
                    waiter = pending.pop(reply.id, None)
                    if waiter is not None and not waiter.done():
                        waiter.set_result(reply)
        except grpc.aio.AioRpcError as err:
            closed = StreamClosed(err.code(), err.details() or "the call stream closed")
        except asyncio.CancelledError:
            closed = StreamClosed(grpc.StatusCode.CANCELLED, "the client closed the call stream")
        finally:
            self.dead = True
            self._queue.put_nowait(None)
            pending, self._pending = self._pending, {}
            for waiter in pending.values():
                if not waiter.done():
                    waiter.set_exception(closed)
