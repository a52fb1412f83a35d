"""Streaming API units: a real twisted.web request on a StringTransport, a task.Clock,
an in-process bus and Hub, and fake store/directory/chat whose answers the tests
control (so "published while the history query is in flight" is exact)."""
from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from twisted.internet import defer, error, task
from twisted.python import failure
from twisted.internet.testing import StringTransport
from twisted.web import server

from flowtwist.api import stream as stream_mod
from flowtwist.api.stream import StreamResource
from flowtwist.bus.memory import MemoryBus
from flowtwist.model import Flow, NotFound, Unauthorized, User, flow_channel, user_channel
from flowtwist.pipeline import Event, Hub, channels_of, dumps, public

ALICE = User(1, "alice@example.com", "alice", "Alice")
BOB = User(2, "bob@example.com", "bob", "Bob")
MAIN = Flow("f-main", 1, "Main", "main")
SIDE = Flow("f-side", 1, "Side", "side")
OTHER = Flow("f-other", 2, "Other", "other")
MEMBERS = {MAIN.id: {1, 2}, SIDE.id: {1}, OTHER.id: {3}}


class FakeAuth:
    async def user(self, request):
        token = request.getHeader(b"authorization")
        users = {b"Bearer alice": ALICE, b"Bearer bob": BOB}
        if token not in users:
            raise Unauthorized("Invalid credentials")
        return users[token]


class FakeChat:
    def __init__(self):
        self.announced = []

    async def resolve_flow_ref(self, user, ref):
        for flow in (MAIN, SIDE, OTHER):
            if ref in (flow.id, f"acme/{flow.parameterized_name}",
                       f"acme:{flow.parameterized_name}"):
                if user.id in MEMBERS[flow.id]:
                    return flow
        raise NotFound()

    async def activity(self, user, flow_id, active):
        self.announced.append((user.id, flow_id, active))


class FakeStore:
    """Messages in memory; `after_seq` answers at once, or when the test says."""

    def __init__(self):
        self.docs: list[dict] = []
        self.hold = False
        self.pending: list[tuple[defer.Deferred, list]] = []

    def add(self, conversation, id_, seq, **fields):
        doc = {"conversation": conversation, "id": id_, "seq": seq, "event": "message",
               "content": fields.pop("content", f"m{id_}"), "uuid": f"u{seq}", **fields}
        if conversation.startswith("private:"):
            doc["to"] = "2"
        else:
            doc["flow"] = conversation
        self.docs.append(doc)
        return doc

    def after_seq(self, conversations, seq, limit=1000):
        conversations = set(conversations)
        result = [d for d in sorted(self.docs, key=lambda d: d["seq"])
                  if d["seq"] > seq and d["conversation"] in conversations][:limit]
        if self.hold:
            d = defer.Deferred()
            self.pending.append((d, result))
            return d
        return defer.succeed(result)

    def release(self):
        pending, self.pending = self.pending, []
        for d, result in pending:
            d.callback(result)

    def last_seq(self):
        return defer.succeed(max((d["seq"] for d in self.docs), default=0))


class FakeDirectory:
    def __init__(self):
        self.partners = {1: [], 2: []}

    def private_partners(self, user_id):
        return defer.succeed(self.partners.get(user_id, []))


class Harness:
    def __init__(self):
        self.clock = task.Clock()
        self.bus = MemoryBus(self.clock)
        self.store = FakeStore()
        self.chat = FakeChat()
        self.directory = FakeDirectory()
        self.app = SimpleNamespace(bus=self.bus, store=self.store, chat=self.chat,
                                   directory=self.directory,
                                   pipeline=SimpleNamespace(hub=Hub(self.bus)))
        self.site = server.Site(StreamResource(self.app, FakeAuth()))
        StreamResource.start_timers(self.clock)

    def open(self, query="filter=f-main", token="alice", path="/flows", headers=()):
        channel = self.site.buildProtocol(None)
        channel.callLater = self.clock.callLater    # its idle timeout on our clock
        transport = StringTransport()
        channel.makeConnection(transport)
        lines = [f"GET {path}{'?' + query if query else ''} HTTP/1.1", "Host: x"]
        if token:
            lines.append(f"Authorization: Bearer {token}")
        lines += list(headers)
        channel.dataReceived(("\r\n".join(lines) + "\r\n\r\n").encode())
        return Client(channel, transport)

    def publish(self, doc):
        event = Event.from_doc(doc)
        for channel in channels_of(doc):
            self.bus.publish(channel, event.encode())

    def post(self, conversation, id_, seq, **fields):
        self.publish(self.store.add(conversation, id_, seq, **fields))

    def close(self):
        for listener in list(StreamResource.open_streams):
            listener.close(abort=True)
        StreamResource.stop_timers()


class Client:
    def __init__(self, channel, transport):
        self.channel = channel
        self.transport = transport

    def raw(self) -> bytes:
        return self.transport.value()

    def status(self) -> int:
        return int(self.raw().split(b" ", 2)[1])

    def headers(self) -> bytes:
        return self.raw().split(b"\r\n\r\n", 1)[0].lower()

    def body(self) -> bytes:
        """The response body with the chunked transfer coding removed."""
        head, _, rest = self.raw().partition(b"\r\n\r\n")
        if b"transfer-encoding: chunked" not in head.lower():
            return rest
        out = b""
        while rest:
            size, _, rest = rest.partition(b"\r\n")
            n = int(size, 16)
            if n == 0:
                break
            out, rest = out + rest[:n], rest[n + 2:]
        return out

    def json_events(self) -> list[dict]:
        body = self.body()
        assert b"\r\n\r\n" not in body      # never an empty \r\n record
        return [json.loads(line) for line in body.lstrip(b"\n").split(b"\r\n")
                if line.strip(b"\n")]

    def sse_events(self) -> list[tuple[str | None, dict]]:
        out = []
        for block in self.body().split(b"\n\n"):
            lines = block.split(b"\n")
            data = [l[6:] for l in lines if l.startswith(b"data: ")]
            ids = [l[4:].decode() for l in lines if l.startswith(b"id: ")]
            assert not any(l.startswith(b"event:") for l in lines)
            if data:
                out.append((ids[0] if ids else None, json.loads(data[0])))
        return out

    def push_back(self):
        """What the transport does when its buffer is full: pause its producer."""
        self.transport.producer.pauseProducing()

    def drain(self):
        self.transport.producer.resumeProducing()

    def listener(self):
        http = self.transport.producer
        return http._requestProducer

    def disconnect(self):
        self.channel.connectionLost(failure.Failure(error.ConnectionDone()))


@pytest.fixture
def h():
    harness = Harness()
    yield harness
    harness.close()


# ---------------------------------------------------------------- framing

def test_json_stream_framing_and_keepalive(h):
    c = h.open()
    assert c.status() == 200
    assert b"content-type: application/json; charset=utf-8" in c.headers()
    h.post(MAIN.id, 1, 10, content="line one\r\nline two")
    h.clock.advance(stream_mod.KEEPALIVE_SECONDS)
    h.post(MAIN.id, 2, 11)
    body = c.body()
    first, rest = body.split(b"\r\n", 1)
    assert b"\n" not in first and b"\r" not in first      # the newline is escaped
    assert rest.startswith(b"\n") and not rest.startswith(b"\r\n")   # a lone keep-alive
    events = c.json_events()
    assert [e["id"] for e in events] == [1, 2]
    assert events[0]["content"] == "line one\r\nline two"
    assert "seq" not in events[0] and "conversation" not in events[0]


def test_sse_framing_ids_and_comment_keepalive(h):
    c = h.open("filter=acme/main&accept=text/event-stream", headers=["Accept: application/json"])
    assert b"content-type: text/event-stream" in c.headers()
    h.post(MAIN.id, 1, 10)
    h.clock.advance(stream_mod.KEEPALIVE_SECONDS)
    h.post(MAIN.id, 2, 12)
    assert b"\n:\n\n" in c.body()
    assert [(i, e["id"]) for i, e in c.sse_events()] == [("10", 1), ("12", 2)]


def test_a_stream_outlives_the_sites_idle_timeout(h):
    c = h.open()
    h.clock.advance(h.site.timeOut + 1)
    assert not c.transport.disconnecting and not c.listener().closed
    h.post(MAIN.id, 1, 10)
    assert [e["id"] for e in c.json_events()] == [1]


def test_accept_header_selects_sse(h):
    c = h.open("filter=acme:main", headers=["Accept: text/event-stream"])
    h.post(MAIN.id, 1, 5)
    assert c.sse_events()[0][0] == "5"


def test_only_the_chosen_flows_and_own_private_messages(h):
    c = h.open("filter=f-main")
    p = h.open("filter=f-side&user=1")
    h.post(SIDE.id, 1, 1)
    h.post(MAIN.id, 1, 2)
    h.post("private:1:2", 1, 3)
    h.post("private:2:3", 1, 4)      # somebody else's private chat
    assert [e["flow"] for e in c.json_events()] == [MAIN.id]
    events = p.json_events()
    assert [(e.get("flow"), e["id"]) for e in events] == [(SIDE.id, 1), (None, 1)]


def test_personal_events_and_flow_remove_stops_the_flow(h):
    c = h.open("filter=f-main,f-side&user=1")
    plain = h.open("filter=f-main")
    tell = {"conversation": "private:1:1", "event": "flow-remove", "user": 1,
            "content": {"id": MAIN.id}, "tags": []}
    h.bus.publish(user_channel(1), Event(0, "private:1:1", 0, "", dumps(public(tell))).encode())
    h.post(MAIN.id, 1, 1)
    h.post(SIDE.id, 1, 2)
    assert [e["event"] for e in c.json_events()] == ["flow-remove", "message"]
    assert c.json_events()[1]["flow"] == SIDE.id
    assert plain.json_events() == []      # no user=1: not shown, but the flow stops
    assert h.app.pipeline.hub.listener_count() == 3    # f-side, user:1 twice


# ---------------------------------------------------------------- errors

@pytest.mark.parametrize("query,token,path,status", [
    ("", "alice", "/flows", 400),
    ("filter=", "alice", "/", 400),
    ("filter=f-main", None, "/flows", 401),
    ("filter=f-main", "mallory", "/flows", 401),
    ("filter=f-other", "alice", "/flows", 404),
    ("filter=f-main,f-other", "alice", "/flows", 404),
    ("filter=acme/side", "bob", "/flows", 404),
    ("", "bob", "/flows/acme/side", 404),
    ("filter=f-main", "alice", "/elsewhere", 404),
])
def test_errors(h, query, token, path, status):
    c = h.open(query, token, path)
    assert c.status() == status
    body = json.loads(c.body())
    assert "message" in body
    assert h.app.pipeline.hub.listener_count() == 0


def test_flow_path_and_root(h):
    a = h.open("", path="/flows/acme/main")
    b = h.open("filter=f-side", path="/")
    h.post(MAIN.id, 1, 1)
    h.post(SIDE.id, 1, 2)
    assert [e["flow"] for e in a.json_events()] == [MAIN.id]
    assert [e["flow"] for e in b.json_events()] == [SIDE.id]


def test_other_methods_are_405(h):
    channel = h.site.buildProtocol(None)
    transport = StringTransport()
    channel.makeConnection(transport)
    channel.dataReceived(b"POST /flows HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
    assert transport.value().startswith(b"HTTP/1.1 405")


# ---------------------------------------------------------------- flow control

def test_pause_holds_and_resume_flushes(h):
    c = h.open()
    c.push_back()          # the socket pushes back
    h.post(MAIN.id, 1, 1)
    h.post(MAIN.id, 2, 2)
    assert c.json_events() == []
    c.drain()
    assert [e["id"] for e in c.json_events()] == [1, 2]


def test_overflow_aborts_only_that_client(h):
    slow, fast = h.open(), h.open()
    slow.push_back()
    big = "x" * 10000
    n = stream_mod.MAX_PENDING_BYTES // 10000 + 2
    for i in range(1, n + 1):
        h.post(MAIN.id, i, i, content=big)
    assert slow.transport.disconnected          # aborted, not finished politely
    assert slow.listener() is None or slow.listener().closed
    assert len(fast.json_events()) == n
    assert h.app.pipeline.hub.listener_count() == 2     # fast: flow + user channel
    h.post(MAIN.id, n + 1, n + 1)
    assert len(fast.json_events()) == n + 1


def test_disconnect_unsubscribes(h):
    c = h.open()
    assert h.app.pipeline.hub.listener_count() == 2
    c.disconnect()
    assert h.app.pipeline.hub.listener_count() == 0
    assert not StreamResource.open_streams


# ---------------------------------------------------------------- dedupe and resume

def test_redelivered_events_are_dropped_late_ones_kept(h):
    c = h.open()
    doc1 = h.store.add(MAIN.id, 1, 1)
    doc3 = h.store.add(MAIN.id, 3, 3)
    doc2 = h.store.add(MAIN.id, 2, 2)
    for doc in (doc1, doc1, doc3, doc2, doc3, doc2):   # redelivery, and 2 late
        h.publish(doc)
    assert [e["id"] for e in c.json_events()] == [1, 3, 2]


def test_resume_from_last_event_id_then_live_without_gap_or_repeat(h):
    for i in range(1, 6):
        h.store.add(MAIN.id, i, i * 10)
    h.store.add(SIDE.id, 1, 25)          # not asked for
    h.store.hold = True
    c = h.open("filter=f-main&accept=text/event-stream", headers=["Last-Event-ID: 20"])
    assert c.status() == 200
    # Published while the history query is in flight: one the query also returns,
    # and one stored after it.
    # (The held query's answer was taken when it was asked: ids 3-5.)
    h.publish(h.store.docs[4])                 # id 5, seq 50: also in the history
    h.post(MAIN.id, 6, 60)                     # stored after the query
    assert c.sse_events() == []
    h.store.release()
    h.post(MAIN.id, 7, 70)
    got = [(i, e["id"]) for i, e in c.sse_events()]
    assert got == [("30", 3), ("40", 4), ("50", 5), ("60", 6), ("70", 7)]


def test_resume_covers_private_conversations_started_while_away(h):
    h.store.add("private:1:2", 1, 5)
    h.directory.partners[1] = [2]
    c = h.open("user=1", headers=["Last-Event-ID: 0"])
    h.post("private:1:2", 2, 6)
    assert [e["id"] for e in c.json_events()] == [1, 2]


def test_resume_pages_at_the_clients_pace(h, monkeypatch):
    """History larger than the overflow limit, to a client that pushes back: it is
    sent as the client drains, never queued whole (so never an overflow)."""
    monkeypatch.setattr(stream_mod, "RESUME_PAGE", 3)
    big = "x" * 10000
    n = stream_mod.MAX_PENDING_BYTES // 10000 * 2
    for i in range(1, n + 1):
        h.store.add(MAIN.id, i, i, content=big)
    h.store.hold = True
    c = h.open(headers=["Last-Event-ID: 0"])
    c.push_back()
    h.store.hold = False
    h.store.release()
    h.post(MAIN.id, n + 1, n + 1)      # live, held while history is sent
    listener = c.listener()
    assert c.json_events() == [] and not listener.closed
    assert listener.pending_bytes == 0
    c.drain()
    assert [e["id"] for e in c.json_events()] == list(range(1, n + 2))
    assert not listener.closed


def test_gap_catch_up_reads_from_last_position(h):
    c = h.open()
    h.post(MAIN.id, 1, 1)
    h.store.add(MAIN.id, 2, 2)           # stored, its publish lost (bus reconnect)
    h.app.pipeline.hub._gap()
    h.post(MAIN.id, 3, 3)
    assert [e["id"] for e in c.json_events()] == [1, 2, 3]


def test_gap_after_a_resume_that_missed_nothing(h):
    h.store.add(MAIN.id, 1, 1)
    c = h.open(headers=["Last-Event-ID: 1"])
    h.store.add(MAIN.id, 2, 2)           # stored, its publish lost
    h.app.pipeline.hub._gap()
    assert [e["id"] for e in c.json_events()] == [2]


def test_gap_during_resume_reads_the_store_again(h):
    h.store.add(MAIN.id, 1, 1)
    h.store.hold = True
    c = h.open(headers=["Last-Event-ID: 0"])
    h.store.add(MAIN.id, 2, 2)           # stored after the query; its publish lost
    h.app.pipeline.hub._gap()
    h.store.hold = False
    h.store.release()
    assert [e["id"] for e in c.json_events()] == [1, 2]


# ---------------------------------------------------------------- presence

def test_active_announced_once_per_person_and_flow(h):
    watcher = h.open("filter=f-main&presence=1", token="bob")
    h.open("filter=f-main&active=true")
    h.open("filter=f-main&active=idle")
    assert h.chat.announced == [(1, MAIN.id, True)]
    h.clock.advance(stream_mod.ACTIVITY_SECONDS)
    assert h.chat.announced == [(1, MAIN.id, True)] * 2
    h.open("filter=f-main&active=true")     # same period: already announced
    assert h.chat.announced == [(1, MAIN.id, True)] * 2
    presence = [e for e in watcher.json_events() if e["event"] == "presence"]
    assert presence and presence[0]["user_id"] == "1"
    assert presence[0]["content"]["state"] == stream_mod.PRESENCE_ACTIVE


def test_presence_offline_when_last_active_stream_closes(h):
    watcher = h.open("filter=f-main&presence=1", token="bob")
    quiet = h.open("filter=f-main", token="bob")
    a = h.open("filter=f-main&active=true")
    a.disconnect()
    states = [e["content"]["state"] for e in watcher.json_events() if e["event"] == "presence"]
    assert states == [stream_mod.PRESENCE_ACTIVE, stream_mod.PRESENCE_OFFLINE]
    assert all(e["event"] != "presence" for e in quiet.json_events())


def test_sse_transient_events_carry_the_last_stored_position(h):
    fresh = h.open("filter=f-main&presence=1&accept=text/event-stream", token="bob")
    resumed = h.open("filter=f-main&presence=1&accept=text/event-stream", token="bob",
                     headers=["Last-Event-ID: 7"])
    h.open("filter=f-main&active=true")                 # a presence event, no seq
    h.post(MAIN.id, 1, 9)
    h.open("filter=f-main&active=true", token="bob")    # another presence event
    ids = [(i, e["event"]) for i, e in fresh.sse_events()]
    assert ids == [(None, "presence"), ("9", "message"), ("9", "presence")]
    ids = [(i, e["event"]) for i, e in resumed.sse_events()]
    assert ids == [("7", "presence"), ("9", "message"), ("9", "presence")]
