"""The real node `flowdock` client (npm `flowdock` 0.9.1) against flowtwist, by changing
only FLOWDOCK_API_URL and FLOWDOCK_STREAM_URL.

The package is installed once with `npm ci` from tests/node/package-lock.json into a
cache folder outside the work tree; tests/node/client.js drives session.flows,
message, comment, threadMessage, status, privateMessage, editMessage, invite, delete
and stream, and prints what it got; here we check that and what the server stored.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile

import pytest

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "node")


def node_modules() -> str:
    """The installed client (npm ci once per lock file); returns its node_modules."""
    with open(os.path.join(HERE, "package-lock.json"), "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()[:12]
    cache = os.environ.get("FLOWTWIST_TEST_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "flowtwist-tests")
    target = os.path.join(cache, f"node-{digest}")
    if os.path.isdir(os.path.join(target, "node_modules", "flowdock")):
        return os.path.join(target, "node_modules")
    os.makedirs(cache, exist_ok=True)
    work = tempfile.mkdtemp(prefix="node-", dir=cache)
    for name in ("package.json", "package-lock.json"):
        shutil.copy(os.path.join(HERE, name), work)
    result = subprocess.run(["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"],
                            cwd=work, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"npm ci failed:\n{result.stdout}\n{result.stderr}"
    try:
        os.rename(work, target)
    except OSError:         # another run installed it meanwhile
        shutil.rmtree(work, ignore_errors=True)
    return os.path.join(target, "node_modules")


@pytest.fixture(scope="module")
def node_run(world):
    modules = node_modules()
    server = world.server
    env = dict(os.environ, NODE_PATH=modules,
               FLOWDOCK_API_URL=server.api, FLOWDOCK_STREAM_URL=server.stream + "/flows",
               FT_TOKEN=world.alice.token, FT_EMAIL=world.alice.email,
               FT_PASSWORD=world.alice.password, FT_FLOW_ID=world.main["id"],
               FT_PEER_ID=str(world.bob.id), FT_PEER_NICK=world.bob.nick)
    bob_stream = world.bob.stream({"filter": world.main["id"], "user": "1"})
    assert bob_stream.status == 200
    result = subprocess.run(["node", os.path.join(HERE, "client.js")], env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout.strip().splitlines()[-1])
    yield out, bob_stream
    bob_stream.close()


def test_no_client_errors(node_run):
    out, _ = node_run
    assert out["errors"] == []
    assert out["statuses"][0] == ["connected"]
    assert not [s for s in out["statuses"] if s[0] == "clientError"]


def test_flows_with_users_include_the_caller(node_run, world):
    out, _ = node_run
    reply = out["replies"]["flows"]
    assert reply["status"] == 200
    assert reply["flowdockUser"] == str(world.alice.id)
    flow = next(f for f in reply["body"] if f["id"] == world.main["id"])
    assert flow["parameterized_name"] == "main"
    assert flow["organization"]["parameterized_name"] == "acme"
    assert flow["url"].startswith(world.server.api + "/flows/acme/main")
    nicks = {u["nick"]: u["id"] for u in flow["users"]}
    assert nicks == {"alice": world.alice.id, "bob": world.bob.id}
    # email + password login sees the same flows
    by_password = out["replies"]["flows_by_password"]
    assert by_password["status"] == 200
    assert {f["id"] for f in by_password["body"]} == {f["id"] for f in reply["body"]}


def test_message_is_stored_tagged_and_streamed(node_run, world):
    out, bob_stream = node_run
    reply = out["replies"]["message"]
    assert reply["status"] == 201
    posted = reply["body"]
    assert posted["event"] == "message" and posted["flow"] == world.main["id"]
    assert posted["user"] == str(world.alice.id)
    assert posted["tags"][:2] == [f":user:{world.bob.id}", f":unread:{world.bob.id}"]
    assert "nodejs" in posted["tags"] and "client" in posted["tags"]
    assert posted["thread_id"]
    echo = next(m for m in out["streamed"] if m.get("id") == posted["id"] and m["event"] == "message")
    for key in ("event", "flow", "user", "content", "tags", "sent", "thread_id"):
        assert echo[key] == posted[key], key
    # bob, mentioned, sees it too (python stream beside the node one)
    ids = [m["id"] for m in bob_stream.events(1) if m["event"] == "message"]
    assert posted["id"] in ids


def test_comment_reply_carries_parent_and_thread(node_run):
    out, _ = node_run
    parent = out["replies"]["message"]["body"]
    reply = out["replies"]["comment"]
    assert reply["status"] == 201
    comment = next(m for m in out["streamed"] if m.get("id") == reply["body"]["id"])
    assert comment["event"] == "comment"
    assert comment["content"] == {"title": "hello from node @bob #nodejs",
                                  "text": "a threaded reply"}
    assert f"influx:{parent['id']}" in comment["tags"] and "reply" in comment["tags"]
    assert comment["thread_id"] == parent["thread_id"]
    threaded = out["replies"]["threadMessage"]["body"]
    assert threaded["thread_id"] == parent["thread_id"]
    assert threaded["thread"]["internal_comments"] >= 1


def test_status_updates_the_flow_user(node_run, world):
    out, _ = node_run
    reply = out["replies"]["status"]
    assert reply["status"] == 201 and reply["body"]["event"] == "status"
    users = world.alice.get("/flows/acme/main/users").json()
    assert next(u for u in users if u["id"] == world.alice.id)["status"] == "writing tests"


def test_private_message_is_streamed_with_to_and_no_flow(node_run, world):
    out, bob_stream = node_run
    reply = out["replies"]["privateMessage"]
    assert reply["status"] == 201
    pm = next(m for m in out["streamed"] if m.get("to") and m.get("id") == reply["body"]["id"])
    assert pm["to"] == str(world.bob.id) and "flow" not in pm
    assert pm["user"] == str(world.alice.id)
    # bob's user=1 stream gets it as well
    got = []
    while not any(m.get("to") == str(world.bob.id) for m in got):
        got += bob_stream.events(1)
    mine = world.bob.get(f"/private/{world.alice.id}/messages").json()
    assert [m["content"] for m in mine] == ["psst from node"]


def test_edit_invite_delete(node_run, world):
    out, _ = node_run
    posted = out["replies"]["message"]["body"]
    assert out["replies"]["editMessage"]["status"] == 200
    edit = next(m for m in out["streamed"] if m["event"] == "message-edit")
    assert edit["content"] == {"message": posted["id"], "updated_content": "hello again from node"}
    change = next(m for m in out["streamed"] if m["event"] == "tag-change")
    assert change["content"]["add"] == ["edited"]
    invite = out["replies"]["invite"]
    assert invite["status"] == 201
    assert invite["body"]["email"] == "newcomer@example.com"
    assert invite["body"]["state"] == "pending"
    assert out["replies"]["delete"]["status"] == 200
    shown = world.bob.get(f"/flows/acme/main/messages/{posted['id']}").json()
    assert shown["content"] == ""


def test_wrong_token_is_reported_by_the_client(node_run):
    out, _ = node_run
    assert out["replies"]["wrong_token"]["error"] == "Received status 401"
