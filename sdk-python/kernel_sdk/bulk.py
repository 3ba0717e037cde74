"""Bulk publishing over one `PublishStream` with compact acks (PROTOCOL §6.4).

The kernel answers accepted events with one `accepted_through` per frame and
sends a `PublishAck` only for a refused event, so many events stay in flight
without a per-event answer, and still none is fire-and-forget: `flush()`
waits until every event is answered and returns the refused ones. At most
`window` events are unconfirmed at once, so a slow subscriber slows the
publisher down instead of filling its memory.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass

import grpc
import grpc.aio

from ._headers import PLUGIN
from ._proto import KernelStub, pb
from .errors import KernelError

__all__ = ["BulkPublisher", "Refused", "DEFAULT_WINDOW"]

#: Unconfirmed events a bulk publisher allows by default.
DEFAULT_WINDOW = 16_384


@dataclass(frozen=True)
class Refused:
    """An event the kernel refused (invalid topic, payload too large, a
    subscriber's buffer full past the timeout, a schema violation)."""

    #: The sequence number `publish` returned for it.
    seq: int
    error: KernelError


class BulkPublisher:
    """Publishes many events with bulk confirmation; events of one publisher
    are accepted in `publish` order. Open one with `Client.bulk_publisher`."""

    def __init__(self, stub: KernelStub, plugin: str | None, window: int,
                 timeout: float | None) -> None:
        self._queue: asyncio.Queue[pb.PublishItem | None] = asyncio.Queue()
        self._window = max(1, window)
        self._timeout_ms = 0 if timeout is None else max(1, round(timeout * 1000))
        self._seq = 0
        self._through = 0
        self._refused: list[Refused] = []
        self._ended: KernelError | None = None
        self._changed = asyncio.Event()
        metadata = ((PLUGIN, plugin),) if plugin else None
        self._call = stub.publish_stream(self._frames(), metadata=metadata)
        self._reader = asyncio.create_task(self._read())

    @property
    def confirmed_through(self) -> int:
        """The highest seq answered so far (accepted or refused)."""
        return self._through

    async def publish(self, topic: str, payload: bytes | str = b"", *,
                      headers: Mapping[str, str] | None = None, content_type: str = "") -> int:
        """Queues an event and returns its sequence number. Waits only while
        `window` events are unconfirmed; a refusal is reported by `flush`.
        Raises `KernelError` (UNAVAILABLE) once the stream is gone."""
        self._seq += 1
        seq = self._seq
        if seq - self._through > self._window:
            await self._wait_through(seq - self._window)
        if self._ended is not None:
            raise self._ended
        body = payload.encode() if isinstance(payload, str) else payload
        self._queue.put_nowait(pb.PublishItem(
            seq=seq,
            event=pb.PublishRequest(topic=topic, payload=body, content_type=content_type,
                                    headers=dict(headers) if headers else None),
            timeout_ms=self._timeout_ms,
        ))
        return seq

    async def flush(self) -> list[Refused]:
        """Waits until every event published so far is answered; returns the
        ones refused since the last flush. Raises `KernelError` when the
        stream ended first: events after `confirmed_through` are unknown."""
        await self._wait_through(self._seq)
        refused, self._refused = self._refused, []
        return refused

    async def close(self) -> list[Refused]:
        """Flushes, then ends the stream; returns what `flush` returned."""
        try:
            return await self.flush()
        finally:
            self._queue.put_nowait(None)
            try:
                await asyncio.wait_for(asyncio.shield(self._reader), 5.0)
            except asyncio.TimeoutError:
                self._call.cancel()

    async def _wait_through(self, seq: int) -> None:
        while self._through < seq:
            if self._ended is not None:
                raise self._ended
            changed = self._changed
            await changed.wait()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def _frames(self) -> AsyncIterator[pb.PublishStreamUp]:
        queue = self._queue
        while True:
            item = await queue.get()
            items: list[pb.PublishItem] = []
            while item is not None:
                items.append(item)
                if len(items) >= 512 or queue.empty():
                    break
                item = queue.get_nowait()
            if items:
                # Sticky on the kernel's side; a flag costs two bytes a frame.
                yield pb.PublishStreamUp(items=items, compact_acks=True)
            if item is None:
                return

    async def _read(self) -> None:
        ended = KernelError(grpc.StatusCode.UNAVAILABLE,
                            "the publish stream closed before every event was confirmed")
        try:
            while True:
                down = await self._call.read()
                if not isinstance(down, pb.PublishStreamDown):  # EOF
                    break
                for ack in down.acks:
                    if ack.HasField("error"):
                        self._refused.append(Refused(ack.seq, KernelError.from_failure(ack.error)))
                if down.accepted_through > self._through:
                    self._through = down.accepted_through
                self._notify()
        except grpc.aio.AioRpcError as err:
            if err.code() != grpc.StatusCode.CANCELLED:
                cause = KernelError.from_rpc_error(err)
                ended = KernelError(cause.code, f"the publish stream failed: {cause.message}")
        finally:
            self._ended = ended
            self._notify()
