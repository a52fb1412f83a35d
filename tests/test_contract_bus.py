"""The Bus contract, run against MemoryBus and RedisBus (a real redis-server started by
tests/servers.py; a fresh key prefix per test), and what only Redis can show: items
left by a dead consumer are recovered, a lost subscriber connection resubscribes and
reports the gap, and a Redis that is down refuses quickly instead of hanging."""
from __future__ import annotations

import json
import time
import uuid

import pytest
import pytest_twisted
from twisted.internet import defer, reactor, task

from flowtwist.bus.memory import MemoryBus
from flowtwist.bus.redis import RedisBus
from flowtwist.model import Unavailable


@pytest.fixture(params=["memory", "redis"])
def make_bus(request):
    if request.param == "memory":
        return lambda **kw: MemoryBus(**kw)
    server = request.getfixturevalue("redis_server")
    prefix = "t" + uuid.uuid4().hex[:10]
    return lambda **kw: RedisBus(server.url, prefix=prefix, **kw)


@pytest_twisted.async_yield_fixture
async def bus(make_bus):
    b = make_bus()
    await b.start()
    yield b
    await b.stop()


async def until(predicate, timeout=10.0):
    """Wait (without asserting on time) until predicate() is true."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await task.deferLater(reactor, 0.01, lambda: None)


async def dead_letters(bus) -> list:
    if isinstance(bus, RedisBus):
        return [json.loads(raw.split(b"\t", 1)[1]) for raw in await bus.dead_letters()]
    return list(bus.dead_letters)


@pytest_twisted.ensureDeferred
async def test_queue_delivers_in_order_in_batches(bus):
    seen, batches = [], []

    async def handler(items):
        batches.append(len(items))
        seen.extend(item["n"] for item in items)
    for n in range(50):                 # queued before anyone consumes: kept
        await bus.enqueue({"op": "post", "n": n, "text": "héllo"})
    bus.consume(lambda items: defer.ensureDeferred(handler(items)))
    await until(lambda: len(seen) == 50)
    for n in range(50, 60):
        await bus.enqueue({"op": "post", "n": n})
    await until(lambda: len(seen) == 60)
    assert seen == list(range(60))
    assert max(batches) > 1             # a burst is handed over as one batch


@pytest_twisted.ensureDeferred
async def test_failed_batch_is_retried_then_dead_lettered(make_bus):
    bus = make_bus(max_attempts=3)
    await bus.start()
    try:
        calls = []

        async def handler(items):
            calls.append([item["n"] for item in items])
            if any(item.get("poison") for item in items):
                raise RuntimeError("cannot store this")
            if len(calls) == 1:
                raise RuntimeError("a passing failure")
        await bus.enqueue({"n": 1})
        bus.consume(lambda items: defer.ensureDeferred(handler(items)))
        await until(lambda: [1] in calls[1:])        # retried after the first failure
        await bus.enqueue({"n": 2, "poison": True})
        await until(lambda: sum(c == [2] for c in calls) == 3)
        await bus.enqueue({"n": 3})         # the queue moves on after the dead letter
        await until(lambda: [3] in calls)
        assert await dead_letters(bus) == [{"n": 2, "poison": True}]
        assert sum(c == [1] for c in calls) == 2
    finally:
        await bus.stop()


@pytest_twisted.ensureDeferred
async def test_publish_subscribe(bus):
    got = []
    a = lambda channel, payload: got.append(("a", channel, payload))
    b = lambda channel, payload: got.append(("b", channel, payload))
    bus.subscribe("flow:1", a)
    bus.subscribe("flow:1", b)
    bus.subscribe("user:7", a)
    await _settle(bus)
    await bus.publish("flow:1", b"one\t\xc3\xa9")
    await bus.publish("flow:2", b"nobody listens")
    await bus.publish("user:7", b"private")
    await until(lambda: len(got) == 3)
    assert sorted(got) == [("a", "flow:1", b"one\t\xc3\xa9"), ("a", "user:7", b"private"),
                           ("b", "flow:1", b"one\t\xc3\xa9")]
    bus.unsubscribe("flow:1", a)
    await bus.publish("flow:1", b"two")
    await until(lambda: len(got) == 4)
    assert got[-1] == ("b", "flow:1", b"two")
    bus.unsubscribe("flow:1", b)
    bus.unsubscribe("flow:1", b)        # unknown receiver: ignored
    await bus.publish("flow:1", b"three")
    await bus.publish("user:7", b"marker")
    await until(lambda: got[-1][2] == b"marker")
    assert [g[2] for g in got[4:]] == [b"marker"]


async def _settle(bus):
    """A subscription is live once a marker published after it comes back."""
    got = []
    bus.subscribe("settle", lambda c, p: got.append(p))
    deadline = time.monotonic() + 10
    while not got and time.monotonic() < deadline:
        await bus.publish("settle", b"x")
        await task.deferLater(reactor, 0.02, lambda: None)
    assert got


# ---------------------------------------------------------------- Redis only

@pytest_twisted.ensureDeferred
async def test_redis_recovers_items_of_a_dead_consumer(redis_server):
    prefix = "t" + uuid.uuid4().hex[:10]
    # A consumer that took three items and died: its processing list remains and its
    # heartbeat key is gone.
    dead = RedisBus(redis_server.url, prefix=prefix)
    for n in (1, 2, 3):
        redis_server.command("LPUSH", dead.processing_key(0),
                             f"q{n}\t" + json.dumps({"n": n}))
    redis_server.command("SADD", dead.consumers_key, dead.consumer_id)
    bus = RedisBus(redis_server.url, prefix=prefix)
    await bus.start()
    try:
        seen = []
        bus.consume(lambda items: defer.succeed(seen.extend(i["n"] for i in items)))
        await until(lambda: len(seen) == 3)
        assert seen == [1, 2, 3]
        await bus.enqueue({"n": 4})
        await until(lambda: len(seen) == 4)
        assert redis_server.command("LLEN", dead.processing_key(0)) == b":0"
        assert redis_server.command("LLEN", bus.processing_key(0)) == b":0"
    finally:
        await bus.stop()


@pytest_twisted.ensureDeferred
async def test_redis_one_consumer_at_a_time_and_takeover(redis_server):
    prefix = "t" + uuid.uuid4().hex[:10]
    a = RedisBus(redis_server.url, prefix=prefix, ttl=1.0, heartbeat=0.2)
    b = RedisBus(redis_server.url, prefix=prefix, ttl=1.0, heartbeat=0.2)
    await a.start()
    await b.start()
    seen_a, seen_b = [], []
    a.consume(lambda items: defer.succeed(seen_a.extend(i["n"] for i in items)))
    await until(lambda: 0 in a.held)
    b.consume(lambda items: defer.succeed(seen_b.extend(i["n"] for i in items)))
    for n in range(20):
        await b.enqueue({"n": n})
    await until(lambda: len(seen_a) == 20)
    assert seen_b == []
    await a.stop()          # a clean stop hands over at once
    try:
        await a.enqueue({"n": -1})
    except Unavailable:
        pass
    else:
        raise AssertionError("a stopped bus accepted an item")
    await b.enqueue({"n": 20})
    await until(lambda: seen_b == [20])
    await b.stop()


@pytest_twisted.ensureDeferred
async def test_redis_partitions_shared_between_consumers_in_order_per_key(redis_server):
    """Two consumers split the partitions between them; every key's items arrive in
    order, each once; when one stops, the other takes all partitions over."""
    prefix = "t" + uuid.uuid4().hex[:10]
    a = RedisBus(redis_server.url, prefix=prefix, ttl=1.0, heartbeat=0.2, partitions=4)
    b = RedisBus(redis_server.url, prefix=prefix, ttl=1.0, heartbeat=0.2, partitions=4)
    await a.start()
    await b.start()
    seen = {"a": [], "b": []}

    def handler(name):
        return lambda items: defer.succeed(seen[name].extend(
            (i["key"], i["n"]) for i in items))
    try:
        a.consume(handler("a"))
        await until(lambda: len(a.held) == 4)
        b.consume(handler("b"))
        await until(lambda: len(a.held) == 2 and len(b.held) == 2)
        assert not a.held & b.held
        keys = [f"flow-{i}" for i in range(12)]
        for n in range(10):
            for key in keys:
                await (a if n % 2 else b).enqueue({"key": key, "n": n}, key)
        await until(lambda: len(seen["a"]) + len(seen["b"]) == 120)
        assert seen["a"] and seen["b"]          # both consumed
        for name in ("a", "b"):
            mine = {key for key, _ in seen[name]}
            for key in mine:
                assert [n for k, n in seen[name] if k == key] == list(range(10))
        assert not {k for k, _ in seen["a"]} & {k for k, _ in seen["b"]}
        await b.stop()
        await until(lambda: len(a.held) == 4)
        for key in keys:
            await a.enqueue({"key": key, "n": 10}, key)
        await until(lambda: len(seen["a"]) + len(seen["b"]) == 132)
    finally:
        await a.stop()
        await b.stop()


@pytest_twisted.ensureDeferred
async def test_redis_resubscribes_and_reports_gap(redis_server):
    bus = RedisBus(redis_server.url, prefix="t" + uuid.uuid4().hex[:10])
    await bus.start()
    try:
        gaps, got = [], []
        bus.on_gap(lambda: gaps.append(True))
        bus.subscribe("flow:gap", lambda c, p: got.append(p))
        await _settle(bus)
        redis_server.command("CLIENT", "KILL", "TYPE", "pubsub")
        await until(lambda: gaps)
        await bus.publish("flow:gap", b"after")
        await until(lambda: got == [b"after"])
    finally:
        await bus.stop()


@pytest_twisted.ensureDeferred
async def test_redis_down_is_unavailable_then_recovers():
    from tests.servers import RedisServer
    server = RedisServer()
    server.start()
    bus = RedisBus(server.url, prefix="down")
    try:
        await bus.start()
        seen = []
        bus.consume(lambda items: defer.succeed(seen.extend(i["n"] for i in items)))
        await bus.enqueue({"n": 1})
        await until(lambda: seen == [1])
        server.stop()
        await until(lambda: bus._commands.proto is None)
        with pytest.raises(Unavailable):
            await bus.enqueue({"n": 2})
        with pytest.raises(Unavailable):
            await bus.publish("flow:x", b"x")
        server.start()                       # same port; the links reconnect
        await until(lambda: bus._commands.proto is not None, timeout=30)
        await bus.enqueue({"n": 3})
        await until(lambda: seen == [1, 3], timeout=30)
    finally:
        await bus.stop()
        server.close()


@pytest_twisted.ensureDeferred
async def test_poison_item_does_not_take_its_batch_with_it():
    # The in-process bus retries a failed batch item by item; the Redis bus does not
    # yet (a failed batch counts one attempt for each of its items).
    bus = MemoryBus(max_attempts=2)
    await bus.start()
    try:
        stored = []

        async def handler(items):
            if any(item.get("poison") for item in items):
                raise RuntimeError("cannot store this")
            stored.extend(item["n"] for item in items)
        for n in range(5):
            await bus.enqueue({"n": n, "poison": n == 2})
        bus.consume(lambda items: defer.ensureDeferred(handler(items)))
        await until(lambda: sorted(stored) == [0, 1, 3, 4])
        deadline = time.monotonic() + 10
        while not await dead_letters(bus) and time.monotonic() < deadline:
            await task.deferLater(reactor, 0.05)
        assert await dead_letters(bus) == [{"n": 2, "poison": True}]
        assert sorted(stored) == [0, 1, 3, 4]      # each good item stored once
    finally:
        await bus.stop()
