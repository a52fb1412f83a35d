"""Two flowtwist processes sharing Redis, MongoDB (FerretDB) and PostgreSQL: what is
posted on one is streamed from the other, and `kill -9` of the process consuming the
queue, with posts in flight, loses nothing and stores nothing twice."""
from __future__ import annotations

import threading
import time
import uuid

import pytest
import redis as redis_client

from flowtwist.bus.redis import partition_of
from tests.conftest import World
from tests.support import Flowtwist, User

REDIS_DB = 9


@pytest.fixture(scope="module")
def backends(redis_server, postgres_server, mongo_server):
    name = "mp" + uuid.uuid4().hex[:10]
    redis_client.Redis(port=redis_server.port, db=REDIS_DB).flushdb()
    return ["--redis", redis_server.url_for(REDIS_DB),
            "--mongo", mongo_server.url.rstrip("/") + "/" + name,
            "--postgres", postgres_server.create_database(name)]


@pytest.fixture(scope="module")
def pair(backends):
    a = Flowtwist(extra_args=backends)
    b = Flowtwist(extra_args=backends)
    try:
        a.start()
        b.start()
        yield a, b
    finally:
        a.close()
        b.close()


@pytest.fixture(scope="module")
def world(pair):
    return World(pair[0])


def on(server: Flowtwist, user: User) -> User:
    """The same account, talking to another process."""
    return User(server, user.id, user.email, user.nick, user.password, user.token)


def test_posted_on_one_process_streamed_from_the_other(pair, world):
    a, b = pair
    stream = on(b, world.bob).stream(world.main["id"])
    assert stream.status == 200
    sent = [on(a, world.alice).say(world.main, f"across {i}") for i in range(5)]
    got = stream.events(5, timeout=20)
    assert [m["id"] for m in got] == [m["id"] for m in sent]
    assert [m["content"] for m in got] == [f"across {i}" for i in range(5)]
    # and back: a post through b is streamed from a
    back = on(a, world.bob).stream(world.main["id"])
    reply = on(b, world.bob).say(world.main, "and back")
    assert back.events(1, timeout=20)[0]["id"] == reply["id"]
    stream.close()
    back.close()


def consumer_pid(redis_port: int, conversation: str) -> int:
    """The process consuming the queue partition of a conversation."""
    r = redis_client.Redis(port=redis_port, db=REDIS_DB)
    lease = f"flowtwist:lease:{partition_of(conversation)}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        holder = r.get(lease)
        if holder:
            return int(holder.decode().split(":")[1])
        time.sleep(0.05)
    raise AssertionError("no process holds the queue consumer lease")


def test_kill_9_of_the_consumer_loses_nothing_and_duplicates_nothing(pair, world,
                                                                     redis_server):
    a, b = pair
    pid = consumer_pid(redis_server.port, world.main["id"])
    consumer, other = (a, b) if a.proc.pid == pid else (b, a)
    assert consumer.proc.pid == pid
    stream = on(other, world.bob).stream(world.main["id"])
    assert stream.status == 200

    accepted: dict[str, int] = {}        # uuid -> HTTP status
    refused = []
    lock = threading.Lock()
    killed = threading.Event()

    def poster(n: int, start: int) -> None:
        for i in range(start, start + n):
            target = consumer if (i % 2 and not killed.is_set()) else other
            key = f"kill9-{i}-{uuid.uuid4().hex[:8]}"
            try:
                r = on(target, world.alice).post(
                    "/messages", {"flow": world.main["id"], "event": "message",
                                  "content": f"in flight {i}", "uuid": key}, timeout=30)
            except Exception:
                refused.append(key)          # connection refused/reset: not accepted
                continue
            with lock:
                if 200 <= r.status_code < 300:
                    accepted[key] = r.status_code
                else:
                    refused.append(key)

    threads = [threading.Thread(target=poster, args=(60, k * 60)) for k in range(4)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 60
    while len(accepted) < 60 and time.monotonic() < deadline:
        time.sleep(0.01)
    consumer.stop(kill=True)                 # SIGKILL, with posts in flight
    killed.set()
    for t in threads:
        t.join(120)
    print(f"kill -9 after {len(accepted)} accepted posts")
    consumer.start()                         # restart: it joins as a standby
    assert len(accepted) >= 60

    # Every accepted message is stored exactly once (REST list, through both processes).
    stored = []
    since = 0
    while True:
        page = on(other, world.alice).get(
            f"/flows/{world.main['path']}/messages",
            params={"since_id": since, "limit": 100, "sort": "asc", "event": "message"}).json()
        if not page:
            break
        stored.extend(page)
        since = page[-1]["id"]
    deadline = time.monotonic() + 60
    while not set(accepted) <= {m["uuid"] for m in stored} and time.monotonic() < deadline:
        time.sleep(0.2)
        page = on(other, world.alice).get(
            f"/flows/{world.main['path']}/messages",
            params={"since_id": since, "limit": 100, "sort": "asc", "event": "message"}).json()
        stored.extend(page)
        if page:
            since = page[-1]["id"]
    uuids = [m["uuid"] for m in stored]
    ids = [m["id"] for m in stored]
    assert set(accepted) <= set(uuids), f"lost: {sorted(set(accepted) - set(uuids))[:5]}"
    assert len(uuids) == len(set(uuids)), "a message was stored twice"
    assert len(ids) == len(set(ids))
    assert not set(refused) & set(accepted)
    same = on(consumer, world.alice).get(f"/flows/{world.main['path']}/messages",
                                         params={"limit": 100, "event": "message"}).json()
    assert [m["id"] for m in same] == sorted(ids)[-100:]

    # ... and every accepted message was delivered to the stream on the other process.
    delivered = set()
    deadline = time.monotonic() + 60
    while not set(accepted) <= delivered and time.monotonic() < deadline:
        try:
            event = stream.next(timeout=max(0.1, deadline - time.monotonic()))
        except TimeoutError:
            break
        if event.get("event") == "message":
            delivered.add(event["uuid"])
    print(f"accepted {len(accepted)}, refused {len(refused)}, stored {len(uuids)}")
    assert set(accepted) <= delivered, f"not delivered: {sorted(set(accepted) - delivered)[:5]}"
    stream.close()


def test_redis_down_answers_503_then_recovers(backends, world):
    """While Redis is away a post is refused with 503 (nothing half-accepted); once it
    is back, posting works again without restarting flowtwist.  (A Redis of its own, so
    the shared one stays up for other tests.)"""
    from tests.servers import RedisServer
    own_redis = RedisServer().start()
    args = list(backends)
    args[args.index("--redis") + 1] = own_redis.url
    server = Flowtwist(extra_args=args).start()
    alice = on(server, world.alice)
    try:
        assert alice.say(world.main, "before")["id"]
        own_redis.stop()
        deadline = time.monotonic() + 30
        while True:
            r = alice.post("/messages", {"flow": world.main["id"], "event": "message",
                                         "content": "while down"}, timeout=30)
            if r.status_code == 503 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert r.status_code == 503, r.text
        assert "unavailable" in r.json()["message"].lower()
        own_redis.start()                     # same port: flowtwist reconnects
        deadline = time.monotonic() + 60
        while True:
            r = alice.post("/messages", {"flow": world.main["id"], "event": "message",
                                         "content": "back again"}, timeout=30)
            if r.status_code == 201 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert r.status_code == 201, r.text
        assert r.json()["content"] == "back again"
    finally:
        server.close()
        own_redis.close()
