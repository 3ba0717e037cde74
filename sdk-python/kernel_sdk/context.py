"""A handler's view of its invocation: its place in the context tree,
deadline, budget, caller and trace, and the nested calls, emits and charges
that inherit all of it (PROTOCOL §3, §5.4).

Cancellation needs no API here: when the kernel cancels an invocation the
SDK cancels the handler's asyncio task, so the handler sees
`asyncio.CancelledError` at its next `await` (and a nested call it was
awaiting is cancelled downstream in turn).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import grpc

from . import _headers as h
from .client import Client, Published, Reply, _bytes, _json_bytes, _lower, _parse_json
from .errors import KernelError

__all__ = ["Context"]


class Context:
    """The context of one invocation, given to every handler."""

    __slots__ = ("_client", "_service", "_method", "_path", "_caller", "_headers", "_deadline")

    def __init__(self, client: Client, service: str, method: str, headers: dict[str, str],
                 deadline: float | None) -> None:
        self._client = client
        self._service = service
        self._method = method
        self._path = headers.pop(h.CONTEXT, "")
        self._caller = headers.pop(h.CALLER, None)
        self._headers = headers
        self._deadline = deadline

    # ------------------------------------------------------------- identity

    @property
    def service(self) -> str:
        """The service that was called."""
        return self._service

    @property
    def method(self) -> str:
        """The method within the service (may be empty)."""
        return self._method

    @property
    def path(self) -> str:
        """This call's context path, e.g. `5f0c9a1e2b3d4c6f.1.2`."""
        return self._path

    @property
    def caller(self) -> str | None:
        """The calling plugin as the kernel identified it (a claim, not verified)."""
        return self._caller

    def header(self, name: str) -> str | None:
        """A context header: `traceparent`, `tracestate`, `baggage`, `x-kernel-budget`."""
        return self._headers.get(name)

    @property
    def headers(self) -> Mapping[str, str]:
        """The invocation's context headers (path and caller excluded)."""
        return self._headers

    @property
    def baggage(self) -> str | None:
        """The W3C baggage that flowed down to this call."""
        return self._headers.get(h.BAGGAGE)

    @property
    def traceparent(self) -> str | None:
        """The `traceparent` nested calls carry: the SDK's `plugin.handle`
        span when tracing is on, else the one the kernel sent."""
        return self._headers.get(h.TRACEPARENT)

    @property
    def trace_id(self) -> str | None:
        """The 32-hex trace id this call belongs to."""
        return h.trace_id(self._headers.get(h.TRACEPARENT))

    @property
    def budget(self) -> dict[str, int]:
        """What the tree may still spend, as the kernel sent it:
        `{"calls": …, "depth": …, "events": …, <custom counters>…}`."""
        return h.parse_budget(self._headers.get(h.BUDGET))

    # -------------------------------------------------------------- deadline

    @property
    def deadline(self) -> float | None:
        """The deadline on the `time.monotonic()` clock; None without one."""
        return self._deadline

    def remaining(self) -> float | None:
        """Seconds left before the deadline (0 once passed); None without one."""
        if self._deadline is None:
            return None
        return max(0.0, self._deadline - time.monotonic())

    # ------------------------------------------------------- nested actions

    @property
    def client(self) -> Client:
        """The plugin's client, for calls that should not be part of this tree."""
        return self._client

    def _nested_headers(self, extra: Mapping[str, str] | None) -> dict[str, str]:
        out = h.forwarded(self._headers, self._path)
        if extra:
            out.update(_lower(extra))
        return out

    def _deadline_with(self, timeout: float | None) -> float | None:
        if timeout is None:
            return self._deadline
        mine = time.monotonic() + timeout
        return mine if self._deadline is None else min(mine, self._deadline)

    async def call(self, service: str, payload: bytes | str = b"", *, method: str = "",
                   content_type: str = "", timeout: float | None = None,
                   headers: Mapping[str, str] | None = None) -> bytes:
        """A nested call: a child of this context in the tree, with the same
        trace, baggage and budget, and at most the remaining time (or
        `timeout`, if shorter). Raises `KernelError`; raise it on unchanged
        to pass the failure up with its causality chain."""
        reply = await self.call_with(service, payload, method=method, content_type=content_type,
                                     timeout=timeout, headers=headers)
        return reply.payload

    async def call_with(self, service: str, payload: bytes | str = b"", *, method: str = "",
                        content_type: str = "", timeout: float | None = None,
                        headers: Mapping[str, str] | None = None) -> Reply:
        """Like `call`, returning the reply's content type too."""
        return await self._client._call(service, _bytes(payload), method, content_type,
                                        self._nested_headers(headers),
                                        self._deadline_with(timeout))

    async def call_json(self, service: str, args: Any = None, *, method: str = "",
                        timeout: float | None = None,
                        headers: Mapping[str, str] | None = None) -> Any:
        """A nested call with JSON in and out."""
        reply = await self.call(service, _json_bytes(args), method=method,
                                content_type="application/json", timeout=timeout,
                                headers=headers)
        return _parse_json(reply, f"the reply of `{service}`")

    async def emit(self, topic: str, payload: bytes | str = b"", *, content_type: str = "",
                   headers: Mapping[str, str] | None = None) -> Published:
        """Publishes an event from this context: charged to the tree's
        `events` budget, its deliveries children of this call. Waits for
        subscriber buffer space at most the remaining time."""
        return await self._client._publish(topic, _bytes(payload), content_type,
                                           self._nested_headers(headers), self.remaining())

    async def emit_json(self, topic: str, value: Any, *,
                        headers: Mapping[str, str] | None = None) -> Published:
        """Emits `value` as JSON."""
        return await self.emit(topic, _json_bytes(value), content_type="application/json",
                               headers=headers)

    async def charge(self, counter: str, amount: int = 1) -> int:
        """Charges a custom budget counter (e.g. `sql`) of this tree and
        returns what remains (2**64-1 when the counter has no limit). When
        the budget is spent: `KernelError` RESOURCE_EXHAUSTED, and the kernel
        cancels this call's branch (this handler is cancelled next)."""
        if not self._path:
            raise KernelError(grpc.StatusCode.INVALID_ARGUMENT, "no context to charge")
        return await self._client._charge(self._path, counter, amount)

    def __repr__(self) -> str:
        return f"Context(service={self._service!r}, path={self._path!r}, caller={self._caller!r})"
