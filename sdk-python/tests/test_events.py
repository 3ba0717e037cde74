"""Events: wildcards, queue groups, explicit acks, nacks and dead letters,
emits from a handler's context, and bulk publishing."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import grpc
import pytest

from kernel_sdk import DLQ_PREFIX, Client, Context, Event, KernelError, Plugin, Subscriber
from support import Node, serving, within


async def take(sub: Subscriber, n: int, timeout: float = 5.0) -> list[Event]:
    """The next `n` events of `sub`."""

    async def collect() -> list[Event]:
        return [await anext(sub) for _ in range(n)]

    return await within(collect(), timeout)


async def nothing_more(sub: Subscriber, wait: float = 0.3) -> None:
    """Asserts `sub` gets no event within `wait` seconds."""
    try:
        event = await asyncio.wait_for(sub.next(), wait)
    except asyncio.TimeoutError:
        return
    raise AssertionError(f"unexpected event {event}")


async def test_wildcard_subscriptions_get_what_they_match(node: Node) -> None:
    async with Client(node.url, "pub") as client:
        star = await client.subscribe("order.*")
        tail = await client.subscribe("order.>")
        both = await client.subscribe("order.*", "*.created", name="both")
        topics = ["order.created", "order.created.eu", "invoice.created", "order"]
        matched = [(await client.publish_json(t, {"t": t})).matched for t in topics]
        assert matched == [3, 1, 1, 0]

        assert [e.topic for e in await take(star, 1)] == ["order.created"]
        assert [e.topic for e in await take(tail, 2)] == ["order.created", "order.created.eu"]
        # Two matching patterns still deliver once.
        assert [e.topic for e in await take(both, 2)] == ["order.created", "invoice.created"]
        for sub in (star, tail, both):
            await nothing_more(sub, 0.2)

        audit = await client.subscribe("audit.>")
        published = await client.publish("audit.login", b"raw", headers={"source": "test"})
        got = (await take(audit, 1))[0]
        assert (got.id, got.payload, got.attempt) == (published.event_id, b"raw", 1)
        assert got.headers["source"] == "test" and got.caller == "pub"
        assert got.path == f"{published.event_id}.1"
        assert got.publish_time_ns > 0
        for sub in (star, tail, both, audit):
            await sub.close()
        assert await star.next() is None


async def test_a_queue_group_shares_events_and_plain_subscribers_get_all(node: Node) -> None:
    async with Client(node.url) as client:
        workers = [await client.subscribe("jobs.*", queue_group="workers") for _ in range(2)]
        watcher = await client.subscribe("jobs.*")
        for i in range(20):
            assert (await client.publish_json("jobs.run", i)).matched == 2
        assert sorted(e.json() for e in await take(watcher, 20)) == list(range(20))

        got: Counter[int] = Counter()
        per_worker = []
        for w in workers:
            events = []
            while (e := await _maybe(w)) is not None:
                events.append(e.json())
            per_worker.append(len(events))
            got.update(events)
        assert sorted(got) == list(range(20)) and set(got.values()) == {1}
        assert per_worker == [10, 10]  # round robin


async def _maybe(sub: Subscriber, wait: float = 0.3) -> Event | None:
    try:
        return await asyncio.wait_for(sub.next(), wait)
    except asyncio.TimeoutError:
        return None


async def test_explicit_acks_nacks_and_dead_letters(node: Node) -> None:
    async with Client(node.url) as client:
        dlq = await client.subscribe(DLQ_PREFIX + ">")
        sub = await client.subscribe("mail.*", explicit_ack=True, max_deliver=2, ack_wait=0.4)
        kept = await client.publish_json("mail.ok", {"n": 1})
        doomed = await client.publish_json("mail.bad", {"n": 2})

        first = await take(sub, 2)
        assert [(e.topic, e.attempt) for e in first] == [("mail.ok", 1), ("mail.bad", 1)]
        sub.ack(first[0])
        sub.nack(first[1])

        again = (await take(sub, 1))[0]
        assert (again.id, again.attempt) == (doomed.event_id, 2)
        assert again.delivery_id != first[1].delivery_id
        sub.nack(again, delay=0.05)  # attempt 2 of 2: dead-lettered

        dead = (await take(dlq, 1))[0]
        assert dead.topic == "$dlq.mail.bad" and dead.id == doomed.event_id
        assert dead.json() == {"n": 2}
        assert dead.headers["x-kernel-dlq-reason"] == "max_deliver reached after nack"
        assert dead.headers["x-kernel-dlq-attempts"] == "2"
        # The acked event is never redelivered, even after ack_wait.
        await nothing_more(sub, 0.7)
        assert kept.event_id != doomed.event_id


async def test_an_unacked_event_is_redelivered_after_ack_wait(node: Node) -> None:
    async with Client(node.url) as client:
        sub = await client.subscribe("slow.*", explicit_ack=True, ack_wait=0.3, window=1)
        await client.publish("slow.a", b"1")
        await client.publish("slow.b", b"2")
        first = (await take(sub, 1))[0]
        assert (first.topic, first.attempt) == ("slow.a", 1)
        # Window 1: slow.b waits; slow.a comes again once ack_wait passed.
        second = (await take(sub, 1))[0]
        assert (second.topic, second.attempt) == ("slow.a", 2)
        sub.credit(1)
        sub.ack(second)
        third = (await take(sub, 1))[0]
        assert (third.topic, third.attempt) == ("slow.b", 1)
        sub.ack(third)


async def test_emits_from_a_handler_are_children_of_its_context(node: Node) -> None:
    plugin = Plugin("emitter")

    @plugin.service("emit.order")
    async def order(ctx: Context, args: Any) -> dict[str, Any]:
        published = await ctx.emit_json("order.created", args)
        return {"path": ctx.path, "event": published.event_id, "matched": published.matched}

    async with serving(plugin, node.url), Client(node.url) as client:
        sub = await client.subscribe("order.*")
        out = await client.call_json("emit.order", {"id": 7},
                                     headers={"baggage": "tenant=acme"})
        event = (await take(sub, 1))[0]
    assert out["matched"] == 1 and event.id == out["event"]
    assert event.json() == {"id": 7}
    assert event.path == out["path"] + ".1"
    assert event.caller == "emitter"
    assert event.headers["baggage"] == "tenant=acme"


async def test_the_events_budget_limits_emits(node: Node) -> None:
    plugin = Plugin("chatty")

    @plugin.service("chatty.talk")
    async def talk(ctx: Context, n: int) -> int:
        for i in range(n):
            await ctx.emit("chatty.said", str(i))
        return n

    async with serving(plugin, node.url), Client(node.url) as client:
        budget = {"x-kernel-budget": "events=2"}
        assert await client.call_json("chatty.talk", 2, headers=budget) == 2
        with pytest.raises(KernelError) as err:
            await client.call_json("chatty.talk", 3, headers=budget)
    assert err.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "`events`" in err.value.message


async def test_bulk_publishing_confirms_every_event_and_reports_refusals(node: Node) -> None:
    async with Client(node.url, "bulk") as client:
        sub = await client.subscribe("bulk.*")
        publisher = await client.bulk_publisher(window=256)
        seqs = [await publisher.publish("bulk.n", str(i)) for i in range(1000)]
        assert seqs == list(range(1, 1001))
        assert await within(publisher.flush()) == []
        assert publisher.confirmed_through == 1000
        got = [int(e.payload) for e in await take(sub, 1000)]
        assert got == list(range(1000))  # in publish order

        bad = await publisher.publish("bulk..broken", b"x")
        fine = await publisher.publish("bulk.n", b"1000")
        refused = await publisher.close()
        assert [r.seq for r in refused] == [bad]
        assert refused[0].error.code == grpc.StatusCode.INVALID_ARGUMENT
        assert "bulk..broken" in refused[0].error.message
        assert publisher.confirmed_through == fine
        assert (await take(sub, 1))[0].payload == b"1000"


async def test_publishing_an_invalid_topic_fails(node: Node) -> None:
    async with Client(node.url) as client:
        with pytest.raises(KernelError) as err:
            await client.publish("order.*", b"{}")
        assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert "wildcard" in err.value.message
        with pytest.raises(KernelError) as err:
            await client.subscribe("a.>.b")
        assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
