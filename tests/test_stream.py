"""The streaming API end to end: a real flowtwist process, real HTTP clients over
loopback (JSON stream and Server-Sent Events), the error cases of spec section 7, and
a stalled reader that is cut off without costing the others anything."""
from __future__ import annotations

import base64
import socket
import threading

import requests

from tests.support import StreamReader

N_CLIENTS = 5


def _ids(events):
    return [e["id"] for e in events]


def _raw_get(server, path: str, headers: dict[str, str], port=None, rcvbuf=None):
    """A GET on a plain socket; returns (status line, socket)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.connect(("127.0.0.1", port or server.stream_port))
    lines = [f"GET {path} HTTP/1.1", "Host: 127.0.0.1"] + [f"{k}: {v}" for k, v in headers.items()]
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
    return sock


def _basic(user) -> str:
    return "Basic " + base64.b64encode(f"{user.token}:x".encode()).decode()


def _status_of(sock) -> int:
    sock.settimeout(10)
    data = b""
    while b"\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return int(data.split(b" ", 2)[1])


# ---------------------------------------------------------------- fan-out

def test_a_message_reaches_every_stream_of_the_flow_in_order_and_nobody_else(world):
    w = world
    readers = []
    for i in range(N_CLIENTS):
        user = (w.alice, w.bob)[i % 2]
        accept = "text/event-stream" if i % 2 else "application/json"
        readers.append(user.stream(w.main["id"], accept=accept))
    elsewhere = w.server.create_flow("other", "Elsewhere", [w.carol])
    outsider = w.carol.stream({"user": "1", "filter": elsewhere["id"]})
    other_flow = w.alice.stream(w.side["id"])
    assert all(r.status == 200 for r in readers + [outsider, other_flow])

    sent = [w.bob.say(w.main, f"fan-out {i}")["id"] for i in range(20)]
    assert sent == sorted(sent)
    for reader in readers:
        events = reader.events(20)
        assert _ids(events) == sent
        assert [e["content"] for e in events] == [f"fan-out {i}" for i in range(20)]
        assert all(e["flow"] == w.main["id"] and e["user"] == str(w.bob.id) for e in events)
        if reader.sse:
            seqs = [int(e["_sse_id"]) for e in events]
            assert seqs == sorted(seqs) and len(set(seqs)) == 20
    # Nobody else: the first thing the others see is a later post of their own flow
    # (the bus keeps order, so anything wrongly sent from main would come before it).
    theirs = w.carol.say(elsewhere, "sentinel")["id"]
    side = w.alice.say(w.side, "sentinel")["id"]
    assert outsider.next(10)["id"] == theirs
    assert other_flow.next(10)["id"] == side
    for r in readers + [outsider, other_flow]:
        r.close()


def test_filter_forms_and_origins(world, server):
    w = world
    by_path = w.bob.stream({}, path=f"/flows/{w.main['path']}")
    root = w.bob.stream({"filter": w.main["path"]}, path="/")
    # node-flowdock's legacy ids, URL-encoded in the query by hand
    legacy = StreamReader.__new__(StreamReader)
    legacy.__init__(w.alice, {}, "application/json", {},
                    "/flows?filter=acme%3Amain%2Cacme%3Aside")
    # the web port's /stream prefix, and `accept` winning over the Accept header
    web = requests.get(server.api + "/stream/flows", params={
        "filter": w.main["id"], "accept": "text/event-stream"}, auth=(w.bob.token, "x"),
        headers={"Accept": "application/json"}, stream=True, timeout=10)
    assert web.status_code == 200
    assert web.headers["Content-Type"].startswith("text/event-stream")
    web.close()
    for reader in (by_path, root, legacy):
        assert reader.status == 200

    main_id = w.alice.say(w.main, "to main")["id"]
    side_id = w.alice.say(w.side, "to side")["id"]
    assert _ids(by_path.events(1)) == [main_id]
    assert _ids(root.events(1)) == [main_id]
    got = legacy.events(2)
    assert [(e["flow"], e["id"]) for e in got] == [(w.main["id"], main_id),
                                                   (w.side["id"], side_id)]
    for r in (by_path, root, legacy):
        r.close()


# ---------------------------------------------------------------- resume

def test_resume_with_last_event_id_loses_nothing(world):
    w = world
    first = w.bob.stream(w.main["id"], accept="text/event-stream")
    before = [w.alice.say(w.main, f"before {i}")["id"] for i in range(3)]
    seen = first.events(3)
    assert _ids(seen) == before
    last_event_id = seen[-1]["_sse_id"]
    first.close()

    missed = [w.alice.say(w.main, f"missed {i}")["id"] for i in range(5)]
    again = w.bob.stream(w.main["id"], accept="text/event-stream",
                         headers={"Last-Event-ID": last_event_id})
    assert again.status == 200
    live = w.alice.say(w.main, "live again")["id"]
    assert _ids(again.events(6)) == missed + [live]
    after = w.alice.say(w.main, "and after")["id"]
    assert _ids([again.next(10)]) == [after]     # nothing twice in between
    again.close()


def test_resume_covers_a_private_conversation_started_while_away(world, server):
    w = world
    dora = server.create_user("dora", "acme")
    s = dora.stream({"user": "1"}, accept="text/event-stream")
    w.alice.say(w.main, "position")     # dora is not in main: sees nothing
    first = w.alice.post(f"/private/{dora.id}/messages", {"event": "message", "content": "one"})
    assert first.status_code == 201, first.text
    event = s.events(1)[0]
    assert event["content"] == "one" and event["to"] == str(dora.id)
    s.close()
    r = w.bob.post(f"/private/{dora.id}/messages", {"event": "message", "content": "new chat"})
    assert r.status_code == 201, r.text
    again = dora.stream({"user": "1"}, accept="text/event-stream",
                        headers={"Last-Event-ID": event["_sse_id"]})
    got = again.events(1)
    assert got[0]["content"] == "new chat" and got[0]["user"] == str(w.bob.id)
    again.close()


# ---------------------------------------------------------------- edits, private

def test_edits_tag_changes_and_deletes_are_streamed(world):
    w = world
    s = w.bob.stream(w.main["id"])
    msg = w.alice.say(w.main, "first draft")
    assert s.events(1)[0]["id"] == msg["id"]
    path = f"/flows/{w.main['path']}/messages/{msg['id']}"
    assert w.alice.put(path, {"content": "second draft"}).status_code == 200
    edit = s.events(1)[0]
    assert edit["event"] == "message-edit"
    assert edit["content"] == {"message": msg["id"], "updated_content": "second draft"}
    assert w.alice.put(path, {"tags": ["release"]}).status_code == 200
    change = s.events(1)[0]
    assert change["event"] == "tag-change"
    assert change["content"]["message"] == msg["id"] and "release" in change["content"]["add"]
    assert w.alice.delete(path).status_code in (200, 204)
    gone = s.events(1)[0]
    assert gone["event"] in ("message-edit", "message-delete")
    assert gone["content"]["message"] == msg["id"]
    assert _ids([edit, change, gone]) == sorted(_ids([edit, change, gone]))
    s.close()


def test_private_messages_reach_both_parties_and_nobody_else(world):
    w = world
    bobs = w.bob.stream({"user": "1"})
    alices = w.alice.stream({"user": "1", "filter": w.side["id"]}, accept="text/event-stream")
    carols = w.carol.stream({"user": "1"})
    flow_only = w.bob.stream(w.main["id"])
    r = w.alice.post(f"/private/{w.bob.id}/messages", {"event": "message", "content": "psst"})
    assert r.status_code == 201, r.text
    for reader in (bobs, alices):
        got = reader.events(1)[0]
        assert got["content"] == "psst" and got["to"] == str(w.bob.id) and "flow" not in got
    assert carols.quiet(0.4) == []
    # bob's flow-only stream: the next thing it sees is a later post to the flow
    later = w.alice.say(w.main, "after the private one")["id"]
    assert flow_only.next(10)["id"] == later
    for r in (bobs, alices, carols, flow_only):
        r.close()


def test_active_streams_announce_activity(world):
    w = world
    watcher = w.alice.stream({"filter": w.main["id"], "presence": "1"})
    bob_active = w.bob.stream({"filter": w.main["id"], "active": "true"})
    seen = {}
    while not {"activity.user", "presence"} <= seen.keys():
        event = watcher.next(10)
        seen[event["event"]] = event
    assert seen["activity.user"]["user"] == str(w.bob.id)
    assert "last_activity" in seen["activity.user"]["content"]
    assert seen["presence"]["user_id"] == str(w.bob.id)
    bob_active.close()
    watcher.close()


# ---------------------------------------------------------------- a stalled reader

def test_a_stalled_client_is_cut_off_and_the_others_get_everything(world, server):
    w = world
    stalled = _raw_get(server, f"/flows?filter={w.main['id']}",
                       {"Authorization": _basic(w.bob), "Accept": "application/json"},
                       rcvbuf=4096)
    assert _status_of(stalled) == 200
    healthy = w.alice.stream(w.main["id"])
    received: list[dict] = []
    failure: list[BaseException] = []
    count = 800
    content = "y" * 8000

    def read():
        try:
            received.extend(healthy.events(count, timeout=120))
        except BaseException as e:     # reported by the main thread
            failure.append(e)

    reader = threading.Thread(target=read)
    reader.start()
    session = requests.Session()
    session.auth = (w.bob.token, "x")
    sent = []
    for i in range(count):      # 800 × 8 KB ≈ 6.4 MB, more than any socket buffer
        r = session.post(server.api + "/messages", json={
            "flow": w.main["id"], "event": "message", "content": content, "tags": [str(i)]},
            timeout=30)
        assert r.status_code == 201, r.text
        sent.append(r.json()["id"])
    reader.join(150)
    assert not failure, failure
    assert _ids(received) == sent

    # The stalled client: reading now drains what the kernel held, then the end
    # (the server aborted it), long before everything that was posted.
    stalled.settimeout(30)
    total = 0
    try:
        while True:
            chunk = stalled.recv(65536)
            if not chunk:
                break
            total += len(chunk)
    except ConnectionResetError:
        pass
    assert total < count * len(content)
    stalled.close()
    healthy.close()


# ---------------------------------------------------------------- errors

def test_error_cases(world, server):
    w = world
    cases = [
        (w.bob, "/flows", {}, 400),                                  # no filter, no user
        (w.bob, "/", {"filter": ""}, 400),
        (w.bob, "/flows", {"filter": w.side["id"]}, 404),            # not a member
        (w.carol, "/flows", {"filter": w.main["path"]}, 404),         # another org
        (w.bob, "/flows", {"filter": f"{w.main['id']},acme/nope"}, 404),
        (w.bob, f"/flows/{w.side['path']}", {}, 404),
        (w.bob, "/flows/acme", {"filter": w.main["id"]}, 404),
        (w.bob, "/nowhere", {"filter": w.main["id"]}, 404),
    ]
    for user, path, params, status in cases:
        r = requests.get(server.stream + path, params=params, auth=(user.token, "x"),
                         timeout=10, allow_redirects=False)
        assert r.status_code == status, (path, params, r.status_code, r.text)
        assert r.headers["Content-Type"].startswith("application/json")
        assert "message" in r.json()

    for auth in [("no-such-token", "x"), (w.bob.email, "wrong password")]:
        r = requests.get(server.stream + "/flows", params={"filter": w.main["id"]},
                         auth=auth, timeout=10, allow_redirects=False)
        assert r.status_code == 401 and "message" in r.json()
    r = requests.get(server.stream + "/flows", params={"filter": w.main["id"]}, timeout=10,
                     allow_redirects=False)
    assert r.status_code == 401
    r = requests.get(server.stream + "/flows", params={"filter": w.main["id"],
                                                       "access_token": "bogus"}, timeout=10)
    assert r.status_code == 401
    r = requests.post(server.stream + "/flows", auth=(w.bob.token, "x"), timeout=10)
    assert r.status_code == 405
    # The good credentials in both forms, for contrast.
    ok = requests.get(server.stream + "/flows", params={
        "filter": w.main["id"], "access_token": w.bob.token}, stream=True, timeout=10)
    assert ok.status_code == 200
    ok.close()
    ok = requests.get(server.stream + "/flows", params={"filter": w.main["id"]},
                      auth=(w.bob.email, w.bob.password), stream=True, timeout=10)
    assert ok.status_code == 200 and ok.headers["Flowdock-User"] == str(w.bob.id)
    ok.close()
