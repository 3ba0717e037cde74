"""Test support: a real kernel node process, plugins served in the
background, and bounded waiting helpers.

The node is the binary `$KERNEL_NODE_BIN` (default: the workspace's
`target/debug/kernel-node`), started on `127.0.0.1:0` (or a given port, to
restart it in place) with its admin HTTP port off; its address is read from
the line `kernel-node listening on 127.0.0.1:PORT`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import grpc.aio
import pytest

from kernel_sdk import Plugin
from kernel_sdk._proto import AdminStub, open_channel

REPO = Path(__file__).resolve().parents[2]
NODE_BIN = os.environ.get("KERNEL_NODE_BIN", str(REPO / "target" / "debug" / "kernel-node"))

T = TypeVar("T")


class Node:
    """A kernel-node process."""

    def __init__(self, log: Path, env: dict[str, str] | None = None) -> None:
        self.log = log
        self.env = env or {}
        self.proc: subprocess.Popen[str] | None = None
        self.port = 0
        self._admin: tuple[grpc.aio.Channel, AdminStub] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, port: int = 0) -> Node:
        """Starts the node (on `port`, or a free one) and waits for its
        listening line."""
        if not Path(NODE_BIN).exists():
            pytest.fail(f"no node binary at {NODE_BIN}: build it, or set KERNEL_NODE_BIN")
        env = dict(os.environ, KERNEL_TELEMETRY__ADMIN_LISTEN="", RUST_LOG="warn", **self.env)
        with open(self.log, "a") as log:
            proc = subprocess.Popen(
                [NODE_BIN, "--listen", f"127.0.0.1:{port}"],
                stdout=subprocess.PIPE, stderr=log, env=env, text=True,
            )
        assert proc.stdout is not None
        watchdog = threading.Timer(20, proc.kill)
        watchdog.start()
        line = proc.stdout.readline()
        watchdog.cancel()
        if "listening on" not in line:
            proc.kill()
            pytest.fail(f"the node did not start: {line!r}; log:\n{self.log.read_text()[-2000:]}")
        self.port = int(line.rsplit(":", 1)[1])
        # Keep reading, so the node never writes into a full pipe.
        threading.Thread(target=_drain, args=(proc.stdout,), daemon=True).start()
        self.proc = proc
        return self

    def stop(self, sig: int = signal.SIGKILL) -> None:
        """Ends the node (SIGKILL by default: the node just goes away)."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        proc.send_signal(sig)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    @property
    def admin(self) -> AdminStub:
        """Typed Admin stub on a channel of the current event loop."""
        if self._admin is None:
            channel = open_channel(self.url)
            self._admin = (channel, AdminStub(channel))
        return self._admin[1]

    async def close_admin(self) -> None:
        if self._admin is not None:
            await self._admin[0].close(None)
            self._admin = None


def _drain(pipe: Any) -> None:
    with pipe:
        pipe.read()


@contextlib.asynccontextmanager
async def serving(plugin: Plugin, url: str) -> AsyncIterator[asyncio.Task[Any]]:
    """Serves `plugin` in the background while the block runs; waits for its
    registration first and stops it after."""
    task = asyncio.create_task(plugin.serve(url))
    waiter = asyncio.create_task(plugin.wait_registered())
    done, _ = await asyncio.wait({task, waiter}, timeout=10, return_when=asyncio.FIRST_COMPLETED)
    if waiter not in done:
        waiter.cancel()
        if task.done():
            task.result()  # raises the plugin's error
        raise AssertionError(f"plugin {plugin.name} did not register")
    try:
        yield task
    finally:
        plugin.stop()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 10)


async def eventually(check: Callable[[], Awaitable[T]], timeout: float = 10.0,
                     interval: float = 0.02) -> T:
    """Runs `check` until it returns without raising; the last error is the
    failure's message."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await check()
        except Exception as err:  # noqa: BLE001 - the last one is reported
            if time.monotonic() > deadline:
                raise AssertionError(f"not true within {timeout}s: {err!r}") from err
        await asyncio.sleep(interval)


async def within(awaitable: Awaitable[T], timeout: float = 5.0) -> T:
    """`awaitable`, or a test failure after `timeout` seconds."""
    return await asyncio.wait_for(awaitable, timeout)
