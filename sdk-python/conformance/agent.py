"""The Python SDK's conformance agent (tests/conformance/README.md).

A plugin process that exposes what `kernel_sdk` can do as services named
`<CONFORMANCE_PREFIX>.*`; the driver talks to the node with raw `kernel.v1`
gRPC and checks what the SDK put on the wire. It prints `READY` on stdout
once its first registration is acknowledged and exits when stdin closes or
on SIGTERM.

Environment: KERNEL_URL, CONFORMANCE_PREFIX (also the plugin name),
CONFORMANCE_TAG (the answer of `P.whoami`), CONFORMANCE_REPLACE (`1`:
register in replace mode).
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import grpc

# Run from a checkout (after `python sdk-python/gen_proto.py`) when not installed.
if importlib.util.find_spec("kernel_sdk") is None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kernel_sdk import Client, Context, Event, KernelError, Plugin, Subscriber

URL = os.environ.get("KERNEL_URL", "http://127.0.0.1:50051")
PREFIX = os.environ.get("CONFORMANCE_PREFIX", "conf.py")
TAG = os.environ.get("CONFORMANCE_TAG", "")
REPLACE = os.environ.get("CONFORMANCE_REPLACE") == "1"

log = logging.getLogger("conformance")


class Agent:
    """The services and the state they share (sleep outcomes, received events)."""

    def __init__(self) -> None:
        self.plugin = Plugin(PREFIX, mode="replace" if REPLACE else "pool")
        self.client = Client(URL, plugin=PREFIX)
        #: How each `P.sleep` ended, by key.
        self.states: dict[str, str] = {}
        #: What each `P.subscribe` subscription received, by key.
        self.events: dict[str, list[dict[str, Any]]] = {}
        self.subscriptions: list[tuple[Subscriber, asyncio.Task[None]]] = []
        self.plugin.provide(f"{PREFIX}.echo", self.echo)
        for name, handler in {
            "whoami": self.whoami, "fail": self.fail, "inspect": self.inspect,
            "relay": self.relay, "sleep": self.sleep, "observed": self.observed,
            "charge": self.charge, "emit": self.emit, "subscribe": self.subscribe,
            "received": self.received, "call": self.call, "publish": self.publish,
        }.items():
            self.plugin.provide_json(f"{PREFIX}.{name}", handler)

    async def echo(self, ctx: Context, payload: bytes) -> bytes:
        return payload

    async def whoami(self, ctx: Context, args: Any) -> Any:
        return {"tag": TAG}

    async def fail(self, ctx: Context, args: dict[str, Any]) -> Any:
        try:
            code = grpc.StatusCode[args["code"]]
        except KeyError:
            raise KernelError(grpc.StatusCode.INVALID_ARGUMENT,
                              f"unknown code {args.get('code')!r}") from None
        raise KernelError(code, str(args.get("message", "")))

    async def inspect(self, ctx: Context, args: Any) -> Any:
        remaining = ctx.remaining()
        return {
            "service": ctx.service,
            "path": ctx.path or None,
            "caller": ctx.caller,
            "baggage": ctx.baggage,
            "trace_id": ctx.trace_id,
            "remaining_ms": None if remaining is None else int(remaining * 1000),
        }

    async def relay(self, ctx: Context, args: dict[str, Any]) -> Any:
        # A KernelError from the nested call propagates unchanged: the chain grows.
        reply = await ctx.call_json(args["service"], args.get("payload"))
        return {"path": ctx.path, "reply": reply}

    async def sleep(self, ctx: Context, args: dict[str, Any]) -> Any:
        ms, key = int(args["ms"]), str(args["key"])
        try:
            await asyncio.sleep(ms / 1000)
        except asyncio.CancelledError:
            self.states[key] = "cancelled"
            raise
        self.states[key] = "finished"
        return {"slept": ms}

    async def observed(self, ctx: Context, args: dict[str, Any]) -> Any:
        return {"state": self.states.get(str(args["key"]))}

    async def charge(self, ctx: Context, args: dict[str, Any]) -> Any:
        # The README says `{"total": t}`; scenarios.json and the Rust agent
        # answer what the charge returns, the remaining amount, as
        # `remaining`. A refusal (RESOURCE_EXHAUSTED) propagates unchanged.
        return {"remaining": await ctx.charge(str(args["counter"]), int(args["amount"]))}

    async def emit(self, ctx: Context, args: dict[str, Any]) -> Any:
        await ctx.emit_json(args["topic"], args.get("payload"))
        return {}

    async def subscribe(self, ctx: Context, args: dict[str, Any]) -> Any:
        key = str(args["key"])
        explicit = bool(args.get("explicit"))
        sub = await self.client.subscribe(
            *args["patterns"], queue_group=args.get("group") or "", explicit_ack=explicit,
            max_deliver=args.get("max_deliver") or 0, name=f"{PREFIX}-{key}")
        self.events.setdefault(key, [])
        task = asyncio.create_task(self._record(sub, key))
        self.subscriptions.append((sub, task))
        return {}

    async def _record(self, sub: Subscriber, key: str) -> None:
        try:
            async for event in sub:
                payload = _json_or_none(event)
                self.events[key].append(
                    {"topic": event.topic, "payload": payload, "path": event.path})
                if sub.explicit:
                    if isinstance(payload, dict) and payload.get("nack") is True:
                        sub.nack(event)
                    else:
                        sub.ack(event)
        except KernelError as err:  # e.g. the node went away: the subscription ended
            log.warning("subscription %s ended: %s", key, err)

    async def received(self, ctx: Context, args: dict[str, Any]) -> Any:
        return self.events.get(str(args["key"]), [])

    async def call(self, ctx: Context, args: dict[str, Any]) -> Any:
        timeout_ms = args.get("timeout_ms")
        try:
            reply = await self.client.call_json(
                args["service"], args.get("payload"),
                timeout=None if timeout_ms is None else timeout_ms / 1000)
        except KernelError as err:
            return {"error": {"code": err.code.name, "message": err.message, "chain": err.chain}}
        return {"ok": reply}

    async def publish(self, ctx: Context, args: dict[str, Any]) -> Any:
        published = await self.client.publish_json(args["topic"], args.get("payload"))
        return {"id": published.event_id}

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        stopping = asyncio.Event()

        def stop() -> None:
            stopping.set()
            self.plugin.stop()

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop)
        # stdin closing is the driver's way of saying "stop".
        threading.Thread(target=_wait_for_eof, args=(loop, stop), daemon=True).start()
        ready = asyncio.create_task(self._announce())
        try:
            end = await self.plugin.serve(URL)
            log.info("session ended: %s", end)
            # Drained (replaced by another instance): stay until told to go,
            # so the driver decides when this process ends.
            await stopping.wait()
        finally:
            ready.cancel()
            for sub, task in self.subscriptions:
                await sub.close()
                task.cancel()
            await self.client.close()

    async def _announce(self) -> None:
        await self.plugin.wait_registered()
        print("READY", flush=True)


def _json_or_none(event: Event) -> Any:
    try:
        return event.json()
    except ValueError:
        return None


def _wait_for_eof(loop: asyncio.AbstractEventLoop, stop: Any) -> None:
    # os.read, not sys.stdin: a daemon thread blocked inside the buffered
    # reader holds its lock, and the interpreter aborts at exit on it.
    try:
        while os.read(0, 4096):
            pass
    except OSError:
        pass
    loop.call_soon_threadsafe(stop)


def main() -> None:
    # The driver shows the agent's stderr: warnings only.
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    asyncio.run(Agent().run())


if __name__ == "__main__":
    main()
