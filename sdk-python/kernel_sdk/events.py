"""Events: the delivered [`Event`], the [`Subscriber`] you iterate, and
[`Published`], what a publish returns (PROTOCOL §6).

A subscriber is one `Subscribe` stream. In explicit-ack mode every delivery
must be acked or nacked (`ack`, `nack`); the kernel redelivers what is not
acked within `ack_wait` and dead-letters an event to `$dlq.<topic>` after
`max_deliver` attempts. Acks, nacks and credit are batched into frames by
one writer, like the calls of a `CallStream`.
"""

from __future__ import annotations

import asyncio
import json
from collections import deque
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
import grpc.aio

from ._headers import CALLER, CONTEXT, PLUGIN
from ._proto import KernelStub, pb
from .errors import KernelError

__all__ = ["Event", "Published", "Subscriber", "DLQ_PREFIX"]

#: Dead letters are published on `$dlq.<original topic>`.
DLQ_PREFIX = "$dlq."


@dataclass(frozen=True)
class Published:
    """The kernel accepted an event."""

    #: The event id the kernel assigned (16 hex digits).
    event_id: str
    #: Subscriptions it went to, each queue group counted once.
    matched: int


@dataclass(frozen=True)
class Event:
    """One delivery of an event."""

    #: The event id assigned at publish; redeliveries keep it.
    id: str
    topic: str
    payload: bytes
    content_type: str
    #: The publisher's headers plus `x-kernel-context` (this delivery's
    #: path), `x-kernel-caller`, and the dead-letter headers on `$dlq.` topics.
    headers: Mapping[str, str] = field(default_factory=dict)
    #: 1 for the first delivery, 2 for the first redelivery, …
    attempt: int = 1
    #: Ack or nack with this (new for every delivery, redeliveries included).
    delivery_id: int = 0
    #: Publish time, Unix nanoseconds.
    publish_time_ns: int = 0

    @property
    def path(self) -> str | None:
        """This delivery's context path: pass it as `x-kernel-context` to make
        calls "under" the event."""
        return self.headers.get(CONTEXT)

    @property
    def caller(self) -> str | None:
        """The publisher's claimed plugin identity."""
        return self.headers.get(CALLER)

    def json(self) -> Any:
        """The payload parsed as JSON (`None` for an empty payload)."""
        return json.loads(self.payload) if self.payload else None

    @classmethod
    def _from_wire(cls, ev: pb.Event) -> Event:
        return cls(
            id=ev.id,
            topic=ev.topic,
            payload=ev.payload,
            content_type=ev.content_type,
            headers=dict(ev.headers),
            attempt=ev.attempt,
            delivery_id=ev.delivery_id,
            publish_time_ns=ev.publish_time_unix_ns,
        )


# What the writer of a subscription takes: an ack (int), a nack
# ((delivery id, delay ms)), credit ([n]) or the end (None).
_Up = int | tuple[int, int] | list[int] | None


class Subscriber:
    """A subscription: iterate it for events (`async for event in sub`).

    Iteration ends when the subscription is closed (by `close()`) or the
    kernel ended it cleanly; a stream that failed (for example the node
    shutting down, `UNAVAILABLE`) raises `KernelError` from the iteration.
    Open one with `Client.subscribe`.
    """

    def __init__(self, call: grpc.aio.StreamStreamCall[pb.SubscribeUp, pb.SubscribeDown],
                 queue: asyncio.Queue[_Up], subscription_id: str, explicit: bool) -> None:
        self._call = call
        self._queue = queue
        self._ready: deque[pb.Event] = deque()
        self._closed = False
        #: The kernel's id for this subscription.
        self.subscription_id = subscription_id
        #: Whether deliveries must be acked.
        self.explicit = explicit

    @classmethod
    async def _open(cls, stub: KernelStub, plugin: str | None, patterns: Sequence[str], *,
                    queue_group: str, explicit_ack: bool, window: int, ack_wait: float | None,
                    max_deliver: int, name: str, durable: str = "") -> Subscriber:
        queue: asyncio.Queue[_Up] = asyncio.Queue()
        opening = pb.SubscribeOpen(
            patterns=list(patterns),
            queue_group=queue_group,
            ack_mode=pb.ACK_MODE_EXPLICIT if explicit_ack else pb.ACK_MODE_AUTO,
            window=window,
            ack_wait_ms=0 if ack_wait is None else max(1, round(ack_wait * 1000)),
            max_deliver=max_deliver,
            name=name,
            durable=durable,
        )
        metadata = ((PLUGIN, plugin),) if plugin else None
        call = stub.subscribe(_frames(pb.SubscribeUp(open=opening), queue), metadata=metadata)
        try:
            first = await call.read()
        except grpc.aio.AioRpcError as err:
            raise KernelError.from_rpc_error(err) from None
        if not isinstance(first, pb.SubscribeDown) or not first.HasField("ready"):
            call.cancel()
            raise KernelError(grpc.StatusCode.UNAVAILABLE,
                              "the kernel did not confirm the subscription")
        sub = cls(call, queue, first.ready.subscription_id, explicit_ack)
        sub._ready.extend(first.events)
        return sub

    def __aiter__(self) -> AsyncIterator[Event]:
        return self

    async def __anext__(self) -> Event:
        event = await self.next()
        if event is None:
            raise StopAsyncIteration
        return event

    async def next(self) -> Event | None:
        """The next event; None once the subscription is closed."""
        while not self._ready:
            if self._closed:
                return None
            try:
                down = await self._call.read()
            except grpc.aio.AioRpcError as err:
                if self._closed or err.code() == grpc.StatusCode.CANCELLED:
                    self._closed = True
                    return None
                self._closed = True
                raise KernelError.from_rpc_error(err) from None
            except asyncio.CancelledError:
                # grpc raises this from a read of a call `close()` cancelled.
                if self.closed:
                    return None
                raise
            if not isinstance(down, pb.SubscribeDown):  # EOF
                self._closed = True
                return None
            self._ready.extend(down.events)
        return Event._from_wire(self._ready.popleft())

    @property
    def closed(self) -> bool:
        """True once the subscription ended."""
        return self._closed

    def ack(self, event: Event | int) -> None:
        """Acknowledges a delivery (explicit mode): the kernel forgets it."""
        self._send(event if isinstance(event, int) else event.delivery_id)

    def nack(self, event: Event | int, delay: float = 0.0) -> None:
        """Asks for redelivery after `delay` seconds. A delivery that was
        already attempt `max_deliver` is dead-lettered instead."""
        delivery = event if isinstance(event, int) else event.delivery_id
        self._send((delivery, max(0, round(delay * 1000))))

    def credit(self, n: int) -> None:
        """Permanently widens the explicit-ack window by `n` deliveries."""
        if n > 0:
            self._send([n])

    async def close(self) -> None:
        """Ends the subscription: acks and nacks already given are sent
        first (waiting up to a second for them to go out), then the stream
        is cancelled. A queue-group member hands what it held to the rest of
        its group; a lone subscription drops it (a durable one keeps what
        was not acked)."""
        if self._closed:
            return
        self._closed = True
        self._queue.put_nowait(None)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 1.0
        while not self._queue.empty() and loop.time() < deadline:
            await asyncio.sleep(0.005)
        # The last frame was taken; give the transport a moment to write it.
        await asyncio.sleep(0.05)
        self._call.cancel()

    async def __aenter__(self) -> Subscriber:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _send(self, item: _Up) -> None:
        if not self._closed:
            self._queue.put_nowait(item)


async def _frames(opening: pb.SubscribeUp,
                  queue: asyncio.Queue[_Up]) -> AsyncIterator[pb.SubscribeUp]:
    yield opening
    while True:
        item = await queue.get()
        frame = pb.SubscribeUp()
        while True:
            if item is None:
                if frame.acks or frame.nacks or frame.credit:
                    yield frame
                return
            if isinstance(item, int):
                frame.acks.append(item)
            elif isinstance(item, tuple):
                frame.nacks.add(delivery_id=item[0], delay_ms=item[1])
            else:
                frame.credit += item[0]
            if queue.empty() or len(frame.acks) + len(frame.nacks) >= 512:
                break
            item = queue.get_nowait()
        yield frame
