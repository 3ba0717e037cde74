"""The [`Client`]: calls (multiplexed over one `CallStream`, or unary `Call`),
publishes (unary, or bulk over a `PublishStream`), subscriptions and, for
handler contexts, budget charges.

One client is one gRPC channel, i.e. one HTTP/2 connection, made on first
use and re-made by grpc when the node comes back after a restart. A call
in flight when the connection breaks fails with `UNAVAILABLE`; the next call
opens a new stream.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import grpc.aio

from ._headers import CONTEXT, CONTEXT_HEADERS, PLUGIN
from ._mux import CallMux, StreamClosed
from ._proto import KernelStub, open_channel, pb
from .bulk import DEFAULT_WINDOW, BulkPublisher
from .errors import KernelError
from .events import Published, Subscriber

__all__ = ["Client", "Reply", "Published"]

#: How long past its deadline a call waits for the kernel's own
#: DEADLINE_EXCEEDED before giving up locally (the kernel answers first).
_DEADLINE_SLACK = 1.0


@dataclass(frozen=True)
class Reply:
    """A call's reply."""

    payload: bytes
    #: Content type the provider gave (JSON by convention when empty).
    content_type: str


def _bytes(payload: bytes | bytearray | memoryview | str) -> bytes:
    if isinstance(payload, str):
        return payload.encode()
    return bytes(payload)


def _lower(headers: Mapping[str, str] | None) -> dict[str, str]:
    """Header names as the kernel reads them: lower case."""
    return {k.lower(): v for k, v in headers.items()} if headers else {}


def _json_bytes(value: Any) -> bytes:
    try:
        return json.dumps(value, separators=(",", ":")).encode()
    except (TypeError, ValueError) as err:
        raise KernelError(grpc.StatusCode.INVALID_ARGUMENT,
                          f"not JSON-serializable: {err}") from None


def _parse_json(data: bytes, what: str) -> Any:
    if not data:
        return None
    try:
        return json.loads(data)
    except ValueError as err:
        raise KernelError(grpc.StatusCode.INVALID_ARGUMENT, f"{what} is not JSON: {err}") from None


class Client:
    """A handle on the node at `url` (`http://127.0.0.1:50051`) for calling
    services, publishing and subscribing.

    `plugin` is the identity the client claims (`x-kernel-plugin`; providers
    see it as `x-kernel-caller`). With `multiplex=False` every call is a unary
    `Call` RPC; otherwise calls share one `CallStream`, falling back to
    unary calls if the node does not serve `CallStream`. `token` (else
    `$KERNEL_TOKEN`) is presented as `authorization: Bearer …` on every RPC:
    with auth on, the node knows the plugin by it.
    Use it as `async with Client(url) as client:` or call `close()`.
    """

    def __init__(self, url: str, plugin: str | None = None, *, multiplex: bool = True,
                 token: str | None = None) -> None:
        self.url = url
        self.plugin = plugin
        self._token = token
        self._multiplex = multiplex
        self._channel: grpc.aio.Channel | None = None
        self._kernel: KernelStub | None = None
        self._mux: CallMux | None = None

    # -------------------------------------------------------------- plumbing

    @property
    def channel(self) -> grpc.aio.Channel:
        """The gRPC channel (created on first use, inside the event loop)."""
        if self._channel is None:
            self._channel = open_channel(self.url, self._token)
        return self._channel

    @property
    def stub(self) -> KernelStub:
        """Typed multi-callables of `kernel.v1.Kernel` on this channel."""
        if self._kernel is None:
            self._kernel = KernelStub(self.channel)
        return self._kernel

    def _metadata(self, headers: Mapping[str, str] | None) -> list[tuple[str, str]]:
        md = [(k.lower(), v) for k, v in (headers or {}).items() if v]
        if self.plugin:
            md.append((PLUGIN, self.plugin))
        return md

    async def close(self) -> None:
        """Lets calls in flight finish (a few seconds at most), then closes
        the connection."""
        mux, self._mux = self._mux, None
        if mux is not None:
            await mux.close()
        if self._channel is not None:
            channel, self._channel, self._kernel = self._channel, None, None
            await channel.close(None)

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ----------------------------------------------------------------- calls

    async def call(self, service: str, payload: bytes | str = b"", *, method: str = "",
                   content_type: str = "", timeout: float | None = None,
                   headers: Mapping[str, str] | None = None) -> bytes:
        """Calls `service` and returns the reply payload; raises `KernelError`.

        `timeout` (seconds) becomes the call's deadline; without one the
        kernel sets none. `headers` are context headers the kernel honours:
        `traceparent`, `tracestate`, `baggage`, `x-kernel-context` (the parent),
        `x-kernel-budget` (which may only lower the tree's limits)."""
        reply = await self.call_with(service, payload, method=method, content_type=content_type,
                                     timeout=timeout, headers=headers)
        return reply.payload

    async def call_with(self, service: str, payload: bytes | str = b"", *, method: str = "",
                        content_type: str = "", timeout: float | None = None,
                        headers: Mapping[str, str] | None = None) -> Reply:
        """Like `call`, returning the reply's content type too."""
        deadline = None if timeout is None else time.monotonic() + timeout
        return await self._call(service, _bytes(payload), method, content_type,
                                _lower(headers), deadline)

    async def call_json(self, service: str, args: Any = None, *, method: str = "",
                        timeout: float | None = None,
                        headers: Mapping[str, str] | None = None) -> Any:
        """Calls with `args` as JSON and returns the reply parsed as JSON."""
        reply = await self.call(service, _json_bytes(args), method=method,
                                content_type="application/json", timeout=timeout,
                                headers=headers)
        return _parse_json(reply, f"the reply of `{service}`")

    async def _call(self, service: str, payload: bytes, method: str, content_type: str,
                    headers: dict[str, str], deadline: float | None) -> Reply:
        timeout: float | None = None
        if deadline is not None:
            timeout = deadline - time.monotonic()
            if timeout <= 0:
                raise KernelError(grpc.StatusCode.DEADLINE_EXCEEDED,
                                  f"deadline passed before calling `{service}`")
        if self._multiplex:
            frame = pb.CallFrame(service=service, method=method, payload=payload,
                                 content_type=content_type, headers=headers,
                                 timeout_us=0 if timeout is None else max(1, int(timeout * 1e6)))
            try:
                return await self._call_stream(frame, timeout)
            except StreamClosed as closed:
                if closed.code != grpc.StatusCode.UNIMPLEMENTED:
                    raise KernelError(grpc.StatusCode.UNAVAILABLE,
                                      f"the call stream to the kernel closed: {closed.details}"
                                      ) from None
                # No CallStream here (an old node or a proxy): nothing ran.
                self._multiplex = False
        return await self._call_unary(service, payload, method, content_type, headers, deadline)

    async def _call_stream(self, frame: pb.CallFrame, timeout: float | None) -> Reply:
        for _ in range(2):
            mux = self._mux
            if mux is None or mux.dead:
                mux = self._mux = CallMux(self.stub, self.plugin)
            sent = mux.send(frame)
            if sent is None:
                # Died between lookup and send: the frame did not go out.
                continue
            call_id, waiter = sent
            try:
                if timeout is None:
                    reply = await waiter
                else:
                    reply = await asyncio.wait_for(waiter, timeout + _DEADLINE_SLACK)
            except asyncio.TimeoutError:
                mux.cancel(call_id)
                raise KernelError(grpc.StatusCode.DEADLINE_EXCEEDED,
                                  f"no reply from `{frame.service}` within its deadline") from None
            except asyncio.CancelledError:
                mux.cancel(call_id)
                raise
            if reply.HasField("error"):
                raise KernelError.from_failure(reply.error)
            return Reply(reply.payload, reply.content_type)
        raise KernelError(grpc.StatusCode.UNAVAILABLE, f"cannot reach the kernel at {self.url}")

    async def _call_unary(self, service: str, payload: bytes, method: str, content_type: str,
                          headers: dict[str, str], deadline: float | None) -> Reply:
        timeout = None if deadline is None else max(deadline - time.monotonic(), 1e-6)
        request = pb.CallRequest(service=service, method=method, payload=payload,
                                 content_type=content_type)
        try:
            response = await self.stub.call(request, timeout=timeout,
                                            metadata=self._metadata(headers))
        except grpc.aio.AioRpcError as err:
            raise KernelError.from_rpc_error(err) from None
        return Reply(response.payload, response.content_type)

    # ---------------------------------------------------------------- events

    async def publish(self, topic: str, payload: bytes | str = b"", *, content_type: str = "",
                      headers: Mapping[str, str] | None = None,
                      timeout: float | None = None) -> Published:
        """Publishes one event and returns once every matching subscription
        buffered it. `timeout` bounds the wait for buffer space (default: the
        kernel's `broker.publish_timeout_ms`). `headers` travel with the event;
        context headers among them (`x-kernel-context`, `traceparent`,
        `baggage`, …) are read by the kernel as the publisher's context."""
        return await self._publish(topic, _bytes(payload), content_type, dict(headers or {}),
                                   timeout)

    async def publish_json(self, topic: str, value: Any, *,
                           headers: Mapping[str, str] | None = None,
                           timeout: float | None = None) -> Published:
        """Publishes `value` as JSON."""
        return await self.publish(topic, _json_bytes(value), content_type="application/json",
                                  headers=headers, timeout=timeout)

    async def _publish(self, topic: str, payload: bytes, content_type: str,
                       headers: dict[str, str], timeout: float | None) -> Published:
        # Context headers are read from metadata on a unary Publish; the
        # kernel copies them into the event's headers itself.
        context = {k: v for k, v in headers.items() if k in CONTEXT_HEADERS}
        request = pb.PublishRequest(topic=topic, payload=payload, content_type=content_type,
                                    headers=headers)
        try:
            response = await self.stub.publish(request, timeout=timeout,
                                               metadata=self._metadata(context))
        except grpc.aio.AioRpcError as err:
            raise KernelError.from_rpc_error(err) from None
        return Published(response.event_id, response.matched)

    async def bulk_publisher(self, *, window: int = DEFAULT_WINDOW,
                             timeout: float | None = None) -> BulkPublisher:
        """A publisher for many events in flight, confirmed in bulk (compact
        acks). `timeout` bounds each event's wait for subscriber buffer
        space; at most `window` events are unconfirmed at once."""
        return BulkPublisher(self.stub, self.plugin, window, timeout)

    async def subscribe(self, *patterns: str, queue_group: str = "", explicit_ack: bool = False,
                        window: int = 0, ack_wait: float | None = None, max_deliver: int = 0,
                        name: str = "", durable: str = "") -> Subscriber:
        """Opens a subscription to `patterns` (`order.*`, `audit.>`) and returns
        once the kernel confirmed it: events published after this returns are
        delivered.

        `queue_group`: members of a group compete, one gets each event.
        `explicit_ack`: every delivery must be acked or nacked; `window` caps
        unacked deliveries, `ack_wait` (seconds) redelivers what stays
        unacked, and after `max_deliver` attempts the event goes to
        `$dlq.<topic>`. Zero / None take the kernel's defaults.
        `durable`: a durable subscription's name (a node with a database,
        PROTOCOL §6.9): events published while it is away are kept for it;
        acks are then explicit."""
        if not patterns:
            raise KernelError(grpc.StatusCode.INVALID_ARGUMENT, "subscribe needs a pattern")
        return await Subscriber._open(
            self.stub, self.plugin, _flatten(patterns), queue_group=queue_group,
            explicit_ack=explicit_ack or bool(durable), window=window, ack_wait=ack_wait,
            max_deliver=max_deliver, name=name, durable=durable)

    # --------------------------------------------------------------- budgets

    async def _charge(self, path: str, counter: str, amount: int) -> int:
        request = pb.ChargeRequest(counter=counter, amount=amount)
        try:
            response = await self.stub.charge(request, metadata=((CONTEXT, path),))
        except grpc.aio.AioRpcError as err:
            raise KernelError.from_rpc_error(err) from None
        return response.remaining


def _flatten(patterns: Sequence[str]) -> list[str]:
    return [p for p in patterns if p]
