"""Providing services: the [`Plugin`] builder (services, schemas, mode,
concurrency, tracing), how one invocation runs (its `Context`, its span,
what its outcome becomes), and `serve`: one `Register` session after
another (_session.py), reconnecting with backoff (100 ms doubling to 5 s)
when the node goes away.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import json
import logging
import os
import signal
import time
import typing
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import grpc
import grpc.aio

from . import tracing
from ._proto import MAX_MESSAGE, pb
from ._session import Session, SessionEnd
from .client import Client
from .context import Context
from .errors import KernelError

if TYPE_CHECKING:
    from opentelemetry.trace import Span, Tracer

__all__ = ["Plugin", "SessionEnd", "Handler", "JsonHandler"]

log = logging.getLogger("kernel_sdk")

#: A raw handler: the invocation's context and payload in, the reply out.
Handler = Callable[[Context, bytes], Awaitable[bytes | bytearray | memoryview | str]]
#: A JSON handler: arguments parsed from JSON in, anything JSON-serializable
#: (or a dataclass) out.
JsonHandler = Callable[[Context, Any], Awaitable[Any]]
F = TypeVar("F", bound=Callable[..., Awaitable[Any]])
Schema = str | Mapping[str, Any]

#: The largest reply the SDK sends (a reply too big for one gRPC message
#: would break the session, PROTOCOL §10).
MAX_REPLY = MAX_MESSAGE - 64 * 1024
#: Backoff between sessions.
BACKOFF_FIRST, BACKOFF_MAX = 0.1, 5.0
#: A session that lasted this long resets the backoff.
BACKOFF_RESET_AFTER = 10.0
#: Codes with which the kernel refuses a hello that retrying cannot fix.
FATAL = (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.PERMISSION_DENIED)


class Plugin:
    """A plugin: a name and the services it provides.

    ```python
    plugin = Plugin("greeter")

    @plugin.service("greet.hello", schema={"type": "object"})
    async def hello(ctx: Context, args: dict) -> dict:
        return {"greeting": f"hello, {args.get('name', 'world')}"}

    await plugin.serve("http://127.0.0.1:50051")
    ```

    `mode="replace"` hot-swaps the current providers of the same names
    instead of joining their pool. `max_concurrency` caps the invocations
    the kernel sends at once (0: the node's default). `instance_id` defaults
    to `$KERNEL_INSTANCE_ID` (set for plugins a node supervises). `tracer`
    (an OpenTelemetry tracer, or True for the global one) turns on a
    `plugin.handle` span per invocation.
    """

    def __init__(self, name: str, *, mode: Literal["pool", "replace"] = "pool",
                 max_concurrency: int = 0, instance_id: str | None = None,
                 tracer: Tracer | bool | None = None, token: str | None = None) -> None:
        if mode not in ("pool", "replace"):
            raise ValueError(f"mode must be 'pool' or 'replace', not {mode!r}")
        self.name = name
        #: The bearer token presented to the node (None: `$KERNEL_TOKEN`).
        self.token = token
        self.mode = mode
        self.max_concurrency = max_concurrency
        # What hello asks for: empty lets the kernel make one up per session.
        self._hello_id = (instance_id if instance_id is not None
                          else os.environ.get("KERNEL_INSTANCE_ID", ""))
        #: The id the kernel knows the current (or last) session by.
        self.instance_id = self._hello_id
        self._services: dict[str, pb.ServiceDecl] = {}
        self._handlers: dict[str, Handler] = {}
        self._topic_schemas: dict[str, str] = {}
        self._tracing: tracing.Tracing | None = None
        if tracer is True:
            tracer = tracing.default_tracer()
        if tracer is not None and tracer is not False:
            self._tracing = tracing.Tracing(tracer, name)
        self._stop: asyncio.Event | None = None
        self._stop_grace = 0.0
        self._registered: asyncio.Event | None = None
        self._client: Client | None = None
        #: Sessions the kernel welcomed so far (reconnects count).
        self.sessions = 0

    # ------------------------------------------------------------- building

    def provide(self, service: str, handler: Handler, schema: Schema | None = None, *,
                method_schemas: Mapping[str, Schema] | None = None,
                idempotent: Iterable[str] = ()) -> Plugin:
        """Provides `service` with `handler(ctx, payload: bytes) -> bytes`.

        `schema` is the JSON Schema of the arguments of calls without a
        method, `method_schemas` those of named methods: the kernel
        validates arguments against them and answers INVALID_ARGUMENT
        without invoking the handler. `idempotent` lists methods (`""` for
        calls without one) the kernel may retry after an instance failure."""
        decl = pb.ServiceDecl(name=service, idempotent_methods=list(idempotent))
        schemas = dict(method_schemas or {})
        if schema is not None:
            schemas[""] = schema
        for method, s in schemas.items():
            decl.method_schemas[method] = s if isinstance(s, str) else json.dumps(s)
        self._services[service] = decl
        self._handlers[service] = handler
        return self

    def provide_json(self, service: str, handler: JsonHandler, schema: Schema | None = None, *,
                     method_schemas: Mapping[str, Schema] | None = None,
                     idempotent: Iterable[str] = ()) -> Plugin:
        """Provides `service` with `handler(ctx, args) -> result` over JSON.

        Arguments that are not JSON fail the call with INVALID_ARGUMENT. When
        the handler's `args` parameter is annotated with a dataclass, the
        JSON object is turned into one (unknown or missing fields:
        INVALID_ARGUMENT); a dataclass result is sent as its fields."""
        convert = _args_converter(handler)

        async def raw(ctx: Context, payload: bytes) -> bytes:
            try:
                args = json.loads(payload) if payload else None
            except ValueError as err:
                raise KernelError(grpc.StatusCode.INVALID_ARGUMENT,
                                  f"arguments are not the expected JSON: {err}") from None
            result = await handler(ctx, convert(args))
            if dataclasses.is_dataclass(result) and not isinstance(result, type):
                result = dataclasses.asdict(result)
            return json.dumps(result, separators=(",", ":")).encode()

        return self.provide(service, raw, schema, method_schemas=method_schemas,
                            idempotent=idempotent)

    def service(self, name: str, *, schema: Schema | None = None, raw: bool = False,
                idempotent: Iterable[str] = ()) -> Callable[[F], F]:
        """Decorator form of `provide_json` (or `provide` with `raw=True`)."""

        def register(fn: F) -> F:
            if raw:
                self.provide(name, fn, schema, idempotent=idempotent)
            else:
                self.provide_json(name, fn, schema, idempotent=idempotent)
            return fn

        return register

    def topic_schema(self, pattern: str, schema: Schema) -> Plugin:
        """Declares a JSON Schema for events on topics matching `pattern`:
        while this plugin is registered the kernel refuses (INVALID_ARGUMENT)
        any publish on a matching topic whose payload does not validate."""
        self._topic_schemas[pattern] = schema if isinstance(schema, str) else json.dumps(schema)
        return self

    # -------------------------------------------------------------- serving

    @property
    def client(self) -> Client:
        """The plugin's client (identity = the plugin name); available once
        `serve` started."""
        if self._client is None:
            raise RuntimeError("the plugin is not serving")
        return self._client

    async def wait_registered(self, timeout: float | None = None) -> str:
        """Waits until the kernel welcomed a session; returns the instance id."""
        await asyncio.wait_for(self._registered_event().wait(), timeout)
        return self.instance_id

    def _registered_event(self) -> asyncio.Event:
        if self._registered is None:
            self._registered = asyncio.Event()
        return self._registered

    def stop(self, grace: float = 0.0) -> None:
        """Ends `serve`: in-flight handlers get up to `grace` seconds to
        finish (their results are sent), then are cancelled, and the session
        closes. Call it from the event loop's thread (a handler installed with
        `loop.add_signal_handler` qualifies; `run()` installs one)."""
        self._stop_grace = grace
        if self._stop is None:
            self._stop = asyncio.Event()
        self._stop.set()

    def run(self, url: str | None = None) -> SessionEnd:
        """`asyncio.run(serve(url))`, stopping on SIGTERM or SIGINT (the way
        a supervised plugin is asked to stop)."""

        async def main() -> SessionEnd:
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self.stop)
            return await self.serve(url)

        return asyncio.run(main())

    async def serve(self, url: str | None = None) -> SessionEnd:
        """Registers and serves until drained or stopped, reconnecting with
        backoff (100 ms doubling to 5 s) whenever the session is lost.
        `url` defaults to `$KERNEL_URL`, then `http://127.0.0.1:50051`.
        Raises `KernelError` when the kernel refuses the hello for a reason
        retrying cannot fix (INVALID_ARGUMENT, PERMISSION_DENIED)."""
        if not self._services:
            raise ValueError(f"plugin `{self.name}` provides no service")
        url = url or os.environ.get("KERNEL_URL") or "http://127.0.0.1:50051"
        if self._stop is None:
            self._stop = asyncio.Event()
        stop = self._stop
        loop = asyncio.get_running_loop()
        client = self._client = Client(url, plugin=self.name, token=self.token)
        backoff = BACKOFF_FIRST
        try:
            while not stop.is_set():
                started = loop.time()
                try:
                    session = Session(self, client, self._hello())
                    return await session.run(stop, lambda: self._stop_grace)
                except KernelError as err:
                    if stop.is_set():
                        break
                    if err.code in FATAL:
                        raise
                    if loop.time() - started > BACKOFF_RESET_AFTER:
                        backoff = BACKOFF_FIRST
                    log.warning("plugin %s: kernel session lost (%s); reconnecting in %.1fs",
                                self.name, err, backoff)
                    try:
                        await asyncio.wait_for(stop.wait(), backoff)
                    except asyncio.TimeoutError:
                        pass
                    backoff = min(backoff * 2, BACKOFF_MAX)
            return SessionEnd(drained=False)
        finally:
            self._client = None
            self._stop = None
            await client.close()

    def _hello(self) -> pb.Hello:
        return pb.Hello(
            plugin=self.name,
            instance_id=self._hello_id,
            services=list(self._services.values()),
            max_concurrency=self.max_concurrency,
            mode=pb.REGISTER_MODE_REPLACE if self.mode == "replace" else pb.REGISTER_MODE_POOL,
            topic_schemas=self._topic_schemas,
        )

    def _welcomed(self, instance_id: str) -> None:
        """A session was registered (called by the session)."""
        self.instance_id = instance_id
        self.sessions += 1
        self._registered_event().set()

    # -------------------------------------------------------- invocations

    def _invocation(self, inv: pb.Invocation,
                    client: Client) -> Coroutine[Any, Any, pb.CallResult]:
        """The handler run of one invocation, with its context built now (the
        deadline counts from receipt)."""
        headers = dict(inv.headers)
        deadline = time.monotonic() + inv.timeout_us / 1e6 if inv.timeout_us else None
        span = self._tracing.start(inv.service, headers) if self._tracing else None
        ctx = Context(client, inv.service, inv.method, headers, deadline)
        return self._invoke(self._handlers.get(inv.service), ctx, inv.payload, span)

    async def _invoke(self, handler: Handler | None, ctx: Context, payload: bytes,
                      span: Span | None) -> pb.CallResult:
        """Runs one handler; its outcome as a CallResult (without the id).
        CancelledError (the kernel's cancel) propagates."""
        error: pb.Failure | None = None
        try:
            if handler is None:
                raise KernelError(grpc.StatusCode.UNIMPLEMENTED,
                                  f"this plugin does not provide `{ctx.service}`")
            if span is None:
                out = await handler(ctx, payload)
            else:
                with tracing.current(span):
                    out = await handler(ctx, payload)
            body = _reply_bytes(out, ctx.service)
            if len(body) > MAX_REPLY:
                raise KernelError(grpc.StatusCode.OUT_OF_RANGE,
                                  f"reply of {len(body)} bytes exceeds the limit of "
                                  f"{MAX_REPLY} bytes")
            tracing.end(span, None)
            return pb.CallResult(payload=body)
        except KernelError as err:
            error = err.to_failure()
        except asyncio.CancelledError:
            tracing.end(span, "cancelled", cancelled=True)
            raise
        except Exception as exc:  # a handler's bug fails its own call only
            log.exception("plugin %s: handler of `%s` raised", self.name, ctx.service)
            error = KernelError(grpc.StatusCode.INTERNAL,
                                f"handler of `{ctx.service}` raised "
                                f"{type(exc).__name__}: {exc}").to_failure()
        tracing.end(span, error.message)
        return pb.CallResult(error=error)


def _reply_bytes(out: object, service: str) -> bytes:
    if isinstance(out, bytes):
        return out
    if isinstance(out, (bytearray, memoryview)):
        return bytes(out)
    if isinstance(out, str):
        return out.encode()
    raise TypeError(f"the handler of `{service}` returned {type(out).__name__}, not bytes")


def _args_converter(handler: JsonHandler) -> Callable[[Any], Any]:
    """Builds the dataclass of the handler's `args` annotation from a JSON
    object, when there is one; else passes the JSON value through."""
    try:
        hints = typing.get_type_hints(handler)
        params = list(inspect.signature(handler).parameters)
    except Exception:  # unresolvable annotations, a builtin: no conversion
        return lambda value: value
    target = hints.get(params[1]) if len(params) >= 2 else None
    if not (isinstance(target, type) and dataclasses.is_dataclass(target)):
        return lambda value: value
    cls = target

    def convert(value: Any) -> Any:
        if not isinstance(value, dict):
            raise KernelError(grpc.StatusCode.INVALID_ARGUMENT,
                              f"arguments must be a JSON object for {cls.__name__}")
        try:
            return cls(**value)
        except TypeError as err:
            raise KernelError(grpc.StatusCode.INVALID_ARGUMENT,
                              f"arguments do not fit {cls.__name__}: {err}") from None

    return convert
