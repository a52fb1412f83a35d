"""The WebSocket API against a real server, with a real client (websocket-client):
authentication, subscriptions and resume, posting over the socket, presence, bad
input, and a client that reads too slowly."""
from __future__ import annotations

import json
import socket
import struct
import threading
import time

import pytest
import requests
import websocket

from tests.support import Flowtwist


def ws_url(server, **params) -> str:
    url = server.api.replace("http://", "ws://") + "/ws"
    if params:
        url += "?" + "&".join(f"{k}={v}" for k, v in params.items())
    return url


class Client:
    """A WebSocket client that speaks the JSON ops."""

    def __init__(self, server, token=None, **kw):
        kw.setdefault("timeout", 10)
        url = ws_url(server, access_token=token) if token else ws_url(server)
        self.ws = websocket.create_connection(url, **kw)
        self.ref = 0
        self.backlog: list[dict] = []     # frames read while waiting for another
        self.hello = self.recv() if token or kw.get("cookie") else None

    def send(self, op, **fields):
        self.ref += 1
        self.ws.send(json.dumps({"op": op, "ref": self.ref, **fields}))
        return self.ref

    def recv(self, timeout=10.0) -> dict:
        self.ws.settimeout(timeout)
        return json.loads(self.ws.recv())

    def until(self, pred, timeout=10.0, skip_presence=True) -> dict:
        """The first frame matching pred (frames before it are dropped)."""
        for i, frame in enumerate(self.backlog):
            if pred(frame):
                del self.backlog[:i + 1]
                return frame
        self.backlog.clear()
        deadline = time.monotonic() + timeout
        while True:
            frame = self.recv(max(0.05, deadline - time.monotonic()))
            if skip_presence and frame.get("op") == "event" and \
                    frame["data"].get("event") in ("activity.user", "presence"):
                continue
            if pred(frame):
                return frame

    def reply(self, ref, timeout=10.0) -> dict:
        """The answer to a request; other frames stay in the backlog for later."""
        for i, frame in enumerate(self.backlog):
            if frame.get("ref") == ref and frame["op"] in ("ack", "error", "pong"):
                return self.backlog.pop(i)
        deadline = time.monotonic() + timeout
        while True:
            frame = self.recv(max(0.05, deadline - time.monotonic()))
            if frame.get("ref") == ref and frame["op"] in ("ack", "error", "pong"):
                return frame
            self.backlog.append(frame)

    def request(self, op, **fields) -> dict:
        return self.reply(self.send(op, **fields))

    def subscribe(self, flows, since=None, private=True) -> dict:
        fields = {"flows": flows, "private": private}
        if since is not None:
            fields["since"] = since
        ref = self.send("subscribe", **fields)
        self.until(lambda f: f["op"] == "subscribed" and f["ref"] == ref)
        return self.until(lambda f: f["op"] == "synced" and f["ref"] == ref)

    def events(self, n, timeout=10.0, kinds=("message", "comment")) -> list[dict]:
        out = []
        while len(out) < n:
            frame = self.until(lambda f: f["op"] == "event" and f["data"]["event"] in kinds,
                               timeout)
            out.append(frame)
        return out

    def quiet(self, seconds=0.5, kinds=("message", "comment")) -> list[dict]:
        out = []
        deadline = time.monotonic() + seconds
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return out
            try:
                frame = self.recv(remaining)
            except websocket.WebSocketTimeoutException:
                return out
            if frame.get("op") == "event" and frame["data"]["event"] in kinds:
                out.append(frame)

    def close_code(self, timeout=10.0) -> int | None:
        """Read until the server's close frame; its status code."""
        self.ws.settimeout(timeout)
        while True:
            try:
                opcode, frame = self.ws.recv_data_frame(True)
            except websocket.WebSocketConnectionClosedException:
                return None
            if opcode == websocket.ABNF.OPCODE_CLOSE:
                return struct.unpack("!H", frame.data[:2])[0] if len(frame.data) >= 2 else None

    def close(self):
        try:
            self.ws.close()
        except Exception:
            pass


@pytest.fixture
def clients():
    opened = []
    yield opened
    for c in opened:
        c.close()


def connect(server, user, clients, **kw) -> Client:
    c = Client(server, user.token if user else None, **kw)
    clients.append(c)
    return c


# ------------------------------------------------------------ authentication


def test_token_in_url_says_hello(server, world, clients):
    c = connect(server, world.alice, clients)
    assert c.hello == {"op": "hello", "user": c.hello["user"]}
    assert c.hello["user"]["id"] == world.alice.id
    assert c.request("ping")["op"] == "pong"


def test_bad_token_is_refused_at_the_handshake(server, world):
    with pytest.raises(websocket.WebSocketBadStatusException) as e:
        websocket.create_connection(ws_url(server, access_token="nope"), timeout=5)
    assert e.value.status_code == 401


def test_first_frame_auth(server, world, clients):
    c = connect(server, None, clients)
    refused = c.request("subscribe", flows=[world.main["path"]])
    assert refused["op"] == "error" and refused["status"] == 401
    c.ws.send(json.dumps({"op": "auth", "token": world.bob.token}))
    assert c.recv()["user"]["id"] == world.bob.id
    assert c.subscribe([world.main["path"]])["op"] == "synced"

    bad = connect(server, None, clients)
    bad.ws.send(json.dumps({"op": "auth", "token": "wrong"}))
    assert bad.close_code() == 4401


def test_flow_of_others_is_not_found(server, world, clients):
    c = connect(server, world.bob, clients)
    answer = c.request("subscribe", flows=[world.side["path"]])
    assert answer["op"] == "error" and answer["status"] == 404
    carol = connect(server, world.carol, clients)
    assert carol.request("post", flow=world.main["id"], content="hi")["status"] == 404


def test_session_cookie_auth_and_csrf(server, world, clients):
    web = requests.Session()
    r = web.post(server.api + "/login", json={"email": world.bob.email, "password": "secret"})
    assert r.status_code == 200, r.text
    csrf = r.json()["csrf"]
    cookie = "; ".join(f"{k}={v}" for k, v in web.cookies.items())
    assert "HttpOnly" in r.headers["Set-Cookie"] and "SameSite=Lax" in r.headers["Set-Cookie"]

    # REST by cookie: reads work, changes need the CSRF token.
    assert web.get(server.api + "/flows").status_code == 200
    body = {"flow": world.main["id"], "event": "message", "content": "by cookie"}
    assert web.post(server.api + "/messages", json=body).status_code == 403
    ok = web.post(server.api + "/messages", json=body, headers={"X-CSRF-Token": csrf})
    assert ok.status_code == 201, ok.text

    # The WebSocket by cookie, from this site's pages only.
    c = connect(server, None, clients, cookie=cookie, origin=server.api)
    assert c.hello["user"]["id"] == world.bob.id
    with pytest.raises(websocket.WebSocketBadStatusException) as e:
        websocket.create_connection(ws_url(server), cookie=cookie,
                                    origin="http://evil.example", timeout=5)
    assert e.value.status_code == 403

    # Sign-in from another site is refused; sign-out needs the token and ends sockets.
    assert requests.post(server.api + "/login", json={"email": world.bob.email,
                         "password": "secret"}, headers={"Origin": "http://evil.example"}
                         ).status_code == 403
    assert web.post(server.api + "/logout").status_code == 403
    assert web.post(server.api + "/logout", headers={"X-CSRF-Token": csrf}).status_code == 200
    assert c.close_code() == 4401
    assert requests.get(server.api + "/flows", headers={"Cookie": cookie}).status_code == 401
    assert requests.get(server.api + "/session", headers={"Cookie": cookie}).status_code == 401


def test_wrong_password_and_form_login(server, world):
    r = requests.post(server.api + "/login", json={"email": world.bob.email, "password": "x"})
    assert r.status_code == 401
    r = requests.post(server.api + "/login", data={"email": world.bob.email, "password": "secret"},
                      allow_redirects=False)
    assert r.status_code == 303 and r.headers["Location"] == "/app"
    assert "flowtwist_session=" in r.headers["Set-Cookie"]


def test_browsers_get_the_app_at_root_and_api_clients_do_not(server, world):
    page = requests.get(server.api + "/", headers={"Accept": "text/html"})
    assert page.status_code == 200 and "<script type=\"module\"" in page.text
    assert requests.get(server.api + "/app/acme/main").headers["Content-Type"].startswith("text/html")
    assert world.alice.get("/flows").status_code == 200
    assert requests.get(server.api + "/static/app.js").status_code == 200
    assert requests.get(server.api + "/static/nope.js").status_code == 404


# ------------------------------------------------------------ events and resume


def test_events_in_the_stream_shape_with_positions(server, world, clients):
    c = connect(server, world.bob, clients)
    c.subscribe([world.main["path"]])
    stream = world.bob.stream(world.main["path"])
    try:
        posted = world.alice.say(world.main, "shape check #ws")
        frame = c.events(1)[0]
        streamed = stream.events(1)[0]
    finally:
        stream.close()
    assert frame["seq"] > 0
    assert frame["data"] == streamed
    assert frame["data"]["id"] == posted["id"] and frame["data"]["content"] == "shape check #ws"


def test_resume_without_gaps_or_repeats(server, world, clients):
    c = connect(server, world.bob, clients)
    c.subscribe([world.main["id"]])
    world.alice.say(world.main, "before the break")
    last = c.events(1)[0]
    c.close()
    missed = [world.alice.say(world.main, f"while away {i}")["id"] for i in range(5)]
    back = connect(server, world.bob, clients)
    synced_ref = back.send("subscribe", flows=[world.main["id"]], private=True, since=last["seq"])
    frames = []
    while True:
        frame = back.until(lambda f: f["op"] in ("event", "synced"))
        if frame["op"] == "synced":
            assert frame["ref"] == synced_ref
            break
        if frame["data"]["event"] == "message":
            frames.append(frame)
    assert [f["data"]["id"] for f in frames] == missed
    live = world.alice.say(world.main, "live again")
    assert back.events(1)[0]["data"]["id"] == live["id"]
    assert back.quiet(0.3) == []


def test_private_messages_reach_both_people(server, world, clients):
    a = connect(server, world.alice, clients)
    b = connect(server, world.bob, clients)
    a.subscribe([], private=True)
    b.subscribe([], private=True)
    ack = a.request("private", user=world.bob.id, content="psst", uuid="ws-private-1")
    assert ack["op"] == "ack" and ack["message"]["to"] == str(world.bob.id)
    got = b.events(1)[0]["data"]
    assert got["content"] == "psst" and f":unread:{world.bob.id}" in got["tags"]
    assert a.events(1)[0]["data"]["id"] == got["id"]
    # Bob reads it: the unread tag goes (a tag-change event for both).
    assert b.request("read", user=world.alice.id, message=got["id"])["op"] == "ack"
    change = b.events(1, kinds=("tag-change",))[0]["data"]
    assert change["content"]["remove"] == [f":unread:{world.bob.id}"]
    stored = world.bob.get(f"/private/{world.alice.id}/messages/{got['id']}").json()
    assert f":unread:{world.bob.id}" not in stored["tags"]


def test_post_comment_status_edit_and_tags(server, world, clients):
    a = connect(server, world.alice, clients)
    a.subscribe([world.main["path"]])
    ack = a.request("post", flow=world.main["path"], content="hello @bob #deploy", uuid="ws-1")
    msg = ack["message"]
    assert msg["content"] == "hello @bob #deploy" and "deploy" in msg["tags"]
    assert f":unread:{world.bob.id}" in msg["tags"]
    again = a.request("post", flow=world.main["path"], content="hello @bob #deploy", uuid="ws-1")
    assert again["message"]["id"] == msg["id"]       # same uuid: stored once

    comment = a.request("comment", flow=world.main["id"], message=msg["id"], content="a reply")
    assert comment["message"]["event"] == "comment"
    assert f"influx:{msg['id']}" in comment["message"]["tags"]

    assert a.request("status", flow=world.main["id"], content="busy")["message"]["event"] == "status"
    assert a.request("edit", flow=world.main["id"], message=msg["id"], content="edited")["op"] == "ack"
    assert a.request("tags", flow=world.main["id"], message=msg["id"], add=["release"])["op"] == "ack"
    stored = world.alice.get(f"/flows/acme/main/messages/{msg['id']}").json()
    assert stored["content"] == "edited" and "release" in stored["tags"]

    # Errors are answered on the socket, with the REST statuses.
    bad = a.request("post", flow=world.main["id"], content="")
    assert bad["op"] == "error" and bad["status"] == 400 and "content" in bad["errors"]
    other = a.request("edit", flow=world.main["id"], message=999999, content="x")
    assert other["status"] == 404


def test_presence_on_connect_idle_and_leave(server, world, clients):
    a = connect(server, world.alice, clients)
    a.subscribe([world.main["id"]])

    def activity(frame):
        return (frame["op"] == "event" and frame["data"]["event"] == "activity.user"
                and frame["data"]["user"] == str(world.bob.id))

    b = connect(server, world.bob, clients)
    b.subscribe([world.main["id"]])
    assert "last_activity" in a.until(activity, skip_presence=False)["data"]["content"]
    b.ws.send(json.dumps({"op": "activity", "state": "idle"}))
    assert a.until(activity, skip_presence=False)["data"]["content"] == {}
    b.close()
    assert a.until(activity, skip_presence=False)["data"]["content"] == {"left": True}


# ------------------------------------------------------------ bad input


def test_malformed_frames_get_error_frames(server, world, clients):
    c = connect(server, world.alice, clients)
    c.ws.send("{not json")
    assert c.recv() == {"op": "error", "status": 400, "message": "Malformed JSON frame"}
    c.ws.send("[1, 2]")
    assert c.recv()["message"] == "A frame must be a JSON object"
    assert c.request("launch")["status"] == 400
    assert c.request("subscribe", flows="acme/main")["status"] == 400
    assert c.request("subscribe", flows=[], since="yesterday")["status"] == 400
    assert c.request("ping")["op"] == "pong"       # the connection is fine


@pytest.mark.parametrize("send,code", [
    (lambda ws: ws.send_binary(b"\x00\x01"), 1003),
    (lambda ws: ws.send(b"\xff\xfe\xfd", opcode=websocket.ABNF.OPCODE_TEXT), 1007),
    (lambda ws: ws.send("x" * (70 * 1024)), 1009),
])
def test_bad_frames_close_with_the_proper_code(server, world, clients, send, code):
    c = connect(server, world.alice, clients)
    send(c.ws)
    assert c.close_code() == code
    fresh = connect(server, world.alice, clients)    # the process is healthy
    assert fresh.request("ping")["op"] == "pong"


def test_slow_reader_is_cut_off_and_others_get_everything(server, world, clients):
    slow = connect(server, world.bob, clients,
                   sockopt=((socket.SOL_SOCKET, socket.SO_RCVBUF, 4096),))
    slow.subscribe([world.main["id"]])
    fast = connect(server, world.bob, clients)
    fast.subscribe([world.main["id"]])
    big = "y" * 8000
    got: list[int] = []
    reader = threading.Thread(target=lambda: got.extend(
        f["data"]["id"] for f in fast.events(750, timeout=60)))
    reader.start()
    # ~6 MB: more than the kernel's socket buffers hold for the stalled reader.
    ids = [world.alice.say(world.main, big)["id"] for _ in range(750)]
    reader.join(90)
    assert got == ids
    # The slow socket was dropped: reading it ends before all the messages arrived.
    received = 0
    slow.ws.settimeout(10)
    with pytest.raises((websocket.WebSocketConnectionClosedException, ConnectionError, OSError)):
        while True:
            frame = json.loads(slow.ws.recv())
            if frame.get("op") == "event" and frame["data"].get("event") == "message":
                received += 1
                assert received < len(ids), "a stalled client got everything"
            if not frame:
                break

