"""The notifier plugin, in Python over grpcio (stubs generated from proto/).

It subscribes to `order.*` and keeps the orders it heard of, and provides
`notify.send`: it logs the message it is given and answers with what it has
seen (how many order events, the last one, and the context path of its
delivery). Supervised by a node (deploy/system.toml), it connects to
KERNEL_URL and registers with KERNEL_INSTANCE_ID, as PLUGINS.md §5 asks.
"""
import json
import os
import queue
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
from kernel.v1 import kernel_pb2 as pb
from kernel.v1 import kernel_pb2_grpc as rpc

KERNEL = os.environ.get("KERNEL_URL", "http://127.0.0.1:50051").split("://", 1)[-1]
PLUGIN = "notifier"
INTERNAL = 13
CLOSE = object()

seen_lock = threading.Lock()
seen = {"received": 0, "last": None, "last_topic": None, "last_context": None}


def log(*args):
    print(*args, flush=True)


def subscribe(stub):
    """Auto-ack subscription to order.*: every event is recorded and logged."""
    up = queue.Queue()
    up.put(pb.SubscribeUp(open=pb.SubscribeOpen(patterns=["order.*"], name=PLUGIN)))

    def upstream():
        while True:
            yield up.get()

    for down in stub.Subscribe(upstream(), metadata=[("x-kernel-plugin", PLUGIN)]):
        if down.HasField("ready"):
            log("subscribed to order.*")
        for ev in down.events:
            context = ev.headers.get("x-kernel-context", "")
            with seen_lock:
                seen["received"] += 1
                seen["last"] = json.loads(ev.payload or b"null")
                seen["last_topic"] = ev.topic
                seen["last_context"] = context
            log("EVENT", ev.topic, context, ev.payload.decode(errors="replace"))


def handle(inv):
    """notify.send: log the message, answer with what was seen."""
    log("NOTIFY", inv.payload.decode(errors="replace"))
    with seen_lock:
        return json.dumps(seen).encode()


def serve_once(stub):
    up = queue.Queue()

    def upstream():
        while True:
            frame = up.get()
            if frame is CLOSE:
                return
            yield frame

    up.put(pb.ProviderUp(hello=pb.Hello(
        plugin=PLUGIN,
        instance_id=os.environ.get("KERNEL_INSTANCE_ID", ""),
        services=[pb.ServiceDecl(name="notify.send")],
        max_concurrency=8,
        mode=pb.REGISTER_MODE_POOL,
    )))
    down = stub.Register(upstream())
    welcome = next(down).welcome
    log("registered as", welcome.instance_id)
    stop = threading.Event()

    def heartbeat():
        while not stop.wait(welcome.heartbeat_interval_ms / 1000):
            up.put(pb.ProviderUp(heartbeat=True))

    threading.Thread(target=heartbeat, daemon=True).start()
    workers = ThreadPoolExecutor(8)

    def run(inv):
        try:
            result = pb.CallResult(call_id=inv.call_id, payload=handle(inv))
        except Exception as exc:  # the caller gets INTERNAL, the plugin goes on
            result = pb.CallResult(call_id=inv.call_id,
                                   error=pb.Failure(code=INTERNAL, message=f"{PLUGIN}: {exc}"))
        up.put(pb.ProviderUp(results=[result]))

    try:
        for frame in down:
            for inv in frame.invocations:
                workers.submit(run, inv)
            if frame.HasField("drain"):
                log("draining:", frame.drain.reason)
                workers.shutdown(wait=True)
                up.put(CLOSE)
                for _ in down:
                    pass
                return
    finally:
        stop.set()


def main():
    stub = rpc.KernelStub(grpc.insecure_channel(KERNEL))
    threading.Thread(target=lambda: forever(lambda: subscribe(stub)), daemon=True).start()
    forever(lambda: serve_once(stub), until_drained=True)


def forever(session, until_drained=False):
    """Runs `session` again after each loss, with backoff (100 ms to 5 s)."""
    backoff = 0.1
    while True:
        started = time.monotonic()
        try:
            session()
            if until_drained:
                return
        except grpc.RpcError as err:
            if time.monotonic() - started > 10:
                backoff = 0.1
            log("session lost:", err.code(), err.details(), f"- retrying in {backoff}s")
        time.sleep(backoff)
        backoff = min(backoff * 2, 5.0)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(0)
