"""Call latency and throughput through the kernel with the Python SDK, next
to a direct grpc.aio call between the same two kinds of process.

    python sdk-python/bench/bench_call.py [--calls 2000] [--concurrency 32]

- kernel: this process's SDK `Client` -> node -> SDK `Plugin` in a provider
  process (`bench.echo`, payload echoed back);
- direct: this process's grpc.aio unary call -> a grpc.aio echo server
  process (generic handler), no kernel.

Sequential calls (after a warm-up) give p50/p99; then `--concurrency`
callers share one client (one CallStream; one channel for direct) for
`--seconds` to give calls per second. The node is `$KERNEL_NODE_BIN`, else
`target/release/kernel-node` when built, else `target/debug/kernel-node`.
uvloop is used on both sides when importable (`pip install uvloop`;
`--no-uvloop` turns it off). Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import grpc.aio

# Run from a checkout (after `python sdk-python/gen_proto.py`) when not installed.
if importlib.util.find_spec("kernel_sdk") is None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kernel_sdk import Client, Context, Plugin

REPO = Path(__file__).resolve().parents[2]
ECHO = "/bench.Echo/Echo"
PAYLOAD = b'{"order":"o-1","qty":2}'
TARGET_RATIO = 1.5


def node_binary() -> str:
    if os.environ.get("KERNEL_NODE_BIN"):
        return os.environ["KERNEL_NODE_BIN"]
    release = REPO / "target" / "release" / "kernel-node"
    return str(release if release.exists() else REPO / "target" / "debug" / "kernel-node")


def use_uvloop(enabled: bool) -> str:
    if enabled:
        try:
            import uvloop

            uvloop.install()
            return "uvloop"
        except ImportError:
            pass
    return "asyncio"


# ------------------------------------------------------------------- roles


async def provider(url: str) -> None:
    """The SDK provider: `bench.echo` answers its payload."""
    plugin = Plugin("bench-provider")

    async def echo(ctx: Context, payload: bytes) -> bytes:
        return payload

    plugin.provide("bench.echo", echo)
    serving = asyncio.create_task(plugin.serve(url))
    await plugin.wait_registered(10)
    print("READY", flush=True)
    await serving


async def direct_server() -> None:
    """A grpc.aio echo server with a generic handler; prints its port."""

    async def echo(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        return request

    handler = grpc.method_handlers_generic_handler(
        "bench.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(echo)})
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(f"PORT {port}", flush=True)
    await server.wait_for_termination()


# ------------------------------------------------------------- measuring


async def sequential(call: Callable[[], Awaitable[Any]], n: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        await call()
    samples = []
    clock = time.perf_counter
    for _ in range(n):
        t0 = clock()
        await call()
        samples.append(clock() - t0)
    return samples


async def throughput(call: Callable[[], Awaitable[Any]], workers: int, seconds: float) -> float:
    done = 0
    stop_at = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal done
        while time.perf_counter() < stop_at:
            await call()
            done += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(workers)))
    return done / (time.perf_counter() - started)


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process (Linux), to show where time goes."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def spawn(args: list[str], loop_flag: str) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen([sys.executable, __file__, *args, loop_flag],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    return proc, proc.stdout.readline().strip()


async def measure(args: argparse.Namespace, loop_name: str) -> dict[str, Any]:
    loop_flag = "--uvloop" if loop_name == "uvloop" else "--no-uvloop"
    env = dict(os.environ, KERNEL_TELEMETRY__ADMIN_LISTEN="", RUST_LOG="warn")
    node = subprocess.Popen([node_binary(), "--listen", "127.0.0.1:0"], stdout=subprocess.PIPE,
                            env=env, text=True)
    procs: list[subprocess.Popen[str]] = [node]
    try:
        assert node.stdout is not None
        url = "http://" + node.stdout.readline().split()[-1]
        prov, line = spawn(["provider", url], loop_flag)
        procs.append(prov)
        assert line == "READY", line
        server, line = spawn(["direct-server"], loop_flag)
        procs.append(server)
        port = int(line.split()[1])

        results: dict[str, Any] = {}
        async with Client(url, plugin="bench-caller") as client:
            async def kernel_call() -> bytes:
                return await client.call("bench.echo", PAYLOAD)

            assert await kernel_call() == PAYLOAD
            node_cpu = cpu_seconds(node.pid)
            ks = await sequential(kernel_call, args.calls, args.warmup)
            node_cpu_after = cpu_seconds(node.pid)
            if node_cpu is not None and node_cpu_after is not None:
                results["node_cpu_us_per_call"] = round(
                    (node_cpu_after - node_cpu) / (args.calls + args.warmup) * 1e6, 1)
            kt = await throughput(kernel_call, args.concurrency, args.seconds)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(
                ECHO, None, None)

            async def direct_call() -> bytes:
                return await stub(PAYLOAD)

            assert await direct_call() == PAYLOAD
            ds = await sequential(direct_call, args.calls, args.warmup)
            dt = await throughput(direct_call, args.concurrency, args.seconds)
        for name, samples, rate in (("kernel", ks, kt), ("direct", ds, dt)):
            results[name] = {
                "p50_us": round(percentile(samples, 0.50) * 1e6, 1),
                "p99_us": round(percentile(samples, 0.99) * 1e6, 1),
                "mean_us": round(statistics.fmean(samples) * 1e6, 1),
                "throughput_per_s": round(rate),
            }
        return results
    finally:
        for proc in reversed(procs):
            proc.kill()
            proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("role", nargs="?", default="bench",
                        choices=["bench", "provider", "direct-server"])
    parser.add_argument("url", nargs="?")
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--uvloop", dest="uvloop", action="store_true", default=True)
    parser.add_argument("--no-uvloop", dest="uvloop", action="store_false")
    args = parser.parse_args()
    loop_name = use_uvloop(args.uvloop)
    if args.role == "provider":
        asyncio.run(provider(args.url))
        return
    if args.role == "direct-server":
        asyncio.run(direct_server())
        return

    r = asyncio.run(measure(args, loop_name))
    ratio = r["kernel"]["p50_us"] / r["direct"]["p50_us"]
    print(f"python SDK call bench: {args.calls} sequential calls after {args.warmup} warm-up, "
          f"{args.concurrency} concurrent callers for {args.seconds:g}s; loop {loop_name}; "
          f"node {node_binary()}")
    print(f"{'path':<8} {'p50 us':>9} {'p99 us':>9} {'mean us':>9} {'calls/s':>9}")
    for name in ("kernel", "direct"):
        row = r[name]
        print(f"{name:<8} {row['p50_us']:>9} {row['p99_us']:>9} {row['mean_us']:>9} "
              f"{row['throughput_per_s']:>9}")
    if "node_cpu_us_per_call" in r:
        print(f"node CPU per sequential call: {r['node_cpu_us_per_call']} us")
    verdict = "met" if ratio <= TARGET_RATIO else "missed"
    print(f"kernel p50 / direct p50 = {ratio:.2f} (target <= {TARGET_RATIO}: {verdict})")
    print(json.dumps({"bench": "python_sdk_call", "loop": loop_name, "calls": args.calls,
                      "concurrency": args.concurrency, "node": node_binary(), **r,
                      "p50_ratio": round(ratio, 3), "target_ratio": TARGET_RATIO}))


if __name__ == "__main__":
    main()
