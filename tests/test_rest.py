"""The Flowdock REST API (spec sections 1, 3, 4, 5, 9) over a real server: every route
of flowtwist/api/rest.py, its shapes, its rules and its errors.

Status codes: 400 = unparseable body or a field that fails validation
(`{"message", "errors": {field: [...]}}`); 401 = no or bad credentials; 403 = visible but
not allowed; 404 = unknown or invisible; 405 = known path, other method; 410 = deleted
source; 413 = body too large; 415 = body of an unsupported type; 422 = a well-formed body
that cannot be processed: not a JSON object, an object parameter (`thread`, `author`,
file `content`) of another type, or a post into an archived flow.
"""
import base64
import re
import socket
import time

import pytest
import requests

from flowtwist.api.http import MAX_BODY, MAX_JSON_BODY

ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
JSON_TYPE = "application/json; charset=utf-8"


def anon(world, method, path, **kw):
    kw.setdefault("timeout", 30)
    return requests.request(method, world.server.api + path, **kw)


def error(r, status, field=None):
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["Content-Type"] == JSON_TYPE
    body = r.json()
    assert isinstance(body["message"], str) and body["message"]
    if field is not None:
        assert field in body["errors"], body
        assert all(isinstance(p, str) for p in body["errors"][field])
    return body


_counter = [0]


def new_flow(world, owner=None, members=(), **fields):
    """A fresh flow created over the API (the owner joins it), plus members."""
    owner = owner or world.alice
    _counter[0] += 1
    r = owner.post("/flows/acme", {"name": f"Room {_counter[0]}", **fields})
    assert r.status_code == 201, r.text
    flow = r.json()
    for user in members:
        assert owner.post(f"/flows/acme/{flow['parameterized_name']}/users",
                          {"id": user.id}).status_code == 200
    flow["path"] = f"/flows/acme/{flow['parameterized_name']}"
    return flow


# ------------------------------------------------------------------ organizations

def test_organizations(world):
    r = world.alice.get("/organizations")
    assert r.status_code == 200 and r.headers["Content-Type"] == JSON_TYPE
    [org] = r.json()
    assert isinstance(org["id"], int) and org["parameterized_name"] == "acme"
    assert org["name"] == "Acme" and org["active"] is True
    assert org["url"] == f"{world.server.api}/organizations/acme"
    assert {"user_limit", "user_count", "subscription"} <= org.keys()
    users = {u["id"]: u for u in org["users"]}
    assert users[world.alice.id]["admin"] is True and users[world.bob.id]["admin"] is False
    assert [o["parameterized_name"] for o in world.carol.get("/organizations").json()] == ["other"]
    assert world.alice.get("/organizations/acme").json()["id"] == org["id"]
    assert world.alice.get(f"/organizations/find?id={org['id']}").json()["name"] == "Acme"
    error(world.carol.get("/organizations/acme"), 404)
    error(world.carol.get(f"/organizations/find?id={org['id']}"), 404)
    error(world.alice.get("/organizations/find?id=abc"), 400, "id")


def test_organization_users_and_rename(world):
    users = world.bob.get("/organizations/acme/users").json()
    assert {u["id"]: u["admin"] for u in users}[world.alice.id] is True
    assert {"id", "nick", "email", "name", "avatar"} <= users[0].keys()
    error(world.bob.put("/organizations/acme", {"name": "Bobs"}), 403)
    error(world.alice.put("/organizations/acme", {"name": " "}), 400, "name")
    r = world.alice.put("/organizations/acme", {"name": "Acme Inc"})
    assert r.status_code == 200 and r.json()["name"] == "Acme Inc"
    assert r.json()["parameterized_name"] == "acme"
    assert world.alice.put("/organizations/acme", {"name": "Acme"}).status_code == 200
    error(world.carol.put("/organizations/acme", {"name": "x"}), 404)


def test_organization_remove_member(world):
    temp = world.server.create_user("temp", "acme")
    flow = new_flow(world, members=[temp])
    error(world.bob.delete(f"/organizations/acme/users/{temp.id}"), 403)
    r = world.alice.delete(f"/organizations/acme/users/{temp.id}")
    assert r.status_code == 204 and r.content == b""
    error(temp.get(flow["path"]), 404)
    assert temp.get("/organizations").json() == []


# ------------------------------------------------------------------ flows

def test_flows_lists_joined_flows(world):
    names = lambda u: {f["parameterized_name"] for f in u.get("/flows").json()}
    assert {"main", "side"} <= names(world.alice)
    assert "main" in names(world.bob) and "side" not in names(world.bob)
    assert world.carol.get("/flows").json() == []
    flow = next(f for f in world.bob.get("/flows").json() if f["id"] == world.main["id"])
    assert flow["joined"] is True and flow["open"] is True
    assert flow["url"] == f"{world.server.api}/flows/acme/main"
    assert flow["organization"]["parameterized_name"] == "acme"
    assert flow["access_mode"] == "organization" and "join_url" in flow
    assert "users" not in flow


def test_flows_with_users_include_the_caller(world):
    flows = world.bob.get("/flows", params={"users": 1}).json()
    main = next(f for f in flows if f["id"] == world.main["id"])
    users = {u["nick"]: u for u in main["users"]}
    assert set(users) == {"alice", "bob"}
    assert users["bob"]["id"] == world.bob.id
    assert {"id", "nick", "name", "email", "avatar", "status", "disabled",
            "last_activity"} <= users["bob"].keys()
    assert "users" not in world.bob.get("/flows", params={"users": 0}).json()[0]


def test_flows_all_adds_joinable_flows(world):
    secret = new_flow(world, access_mode="invitation")
    flows = {f["id"]: f for f in world.bob.get("/flows/all").json()}
    assert flows[world.main["id"]]["joined"] is True
    assert flows[world.side["id"]]["joined"] is False
    assert secret["id"] not in flows
    assert world.carol.get("/flows/all").json() == []


def test_find_and_show_flow(world):
    r = world.bob.get("/flows/find", params={"id": world.main["id"]})
    assert r.status_code == 200 and r.json()["parameterized_name"] == "main"
    assert {u["id"] for u in r.json()["users"]} == {world.alice.id, world.bob.id}
    shown = world.bob.get("/flows/acme/main").json()
    assert shown["id"] == world.main["id"] and len(shown["users"]) == 2
    error(world.bob.get("/flows/find", params={"id": world.side["id"]}), 404)
    error(world.bob.get("/flows/acme/side"), 404)
    error(world.carol.get("/flows/acme/main"), 404)
    error(world.alice.get("/flows/find", params={"id": "nope"}), 404)
    error(world.alice.get("/flows/find"), 404)


def test_create_flow(world):
    r = world.bob.post("/flows/acme", {"name": "Bob's Café"})
    assert r.status_code == 201
    flow = r.json()
    assert flow["name"] == "Bob's Café" and flow["parameterized_name"] == "bob-s-cafe"
    assert [u["id"] for u in flow["users"]] == [world.bob.id]
    error(world.bob.post("/flows/acme", {"name": "Bob's Café"}), 400, "name")
    error(world.bob.post("/flows/acme", {"name": ""}), 400, "name")
    error(world.bob.post("/flows/acme", {}), 400, "name")
    error(world.bob.post("/flows/acme", {"name": "x" * 101}), 400, "name")
    error(world.bob.post("/flows/acme", {"name": "ok", "access_mode": "public"}), 400,
          "access_mode")
    error(world.carol.post("/flows/acme", {"name": "intrusion"}), 404)


def test_update_flow_and_join_with_open(world):
    flow = new_flow(world)
    r = world.alice.put(flow["path"], {"name": "Renamed Room", "access_mode": "link"})
    assert r.status_code == 200 and r.json()["name"] == "Renamed Room"
    assert r.json()["access_mode"] == "link"
    error(world.alice.put(flow["path"], {"name": "x" * 101}), 400, "name")
    # not joinable while link-only; joinable once organization-visible
    error(world.bob.put(flow["path"], {"open": True}), 404)
    world.alice.put(flow["path"], {"access_mode": "organization"})
    stream = world.alice.stream(flow["id"])
    r = world.bob.put(flow["path"], {"open": True})
    assert r.status_code == 200 and r.json()["joined"] is True
    joined = stream.events(1)[0]
    stream.close()
    assert joined["event"] == "action" and joined["content"]["type"] == "join"
    assert joined["user"] == str(world.bob.id)
    assert flow["id"] in [f["id"] for f in world.bob.get("/flows").json()]
    # open:false hides the tab but keeps the membership
    r = world.bob.put(flow["path"], {"open": False})
    assert r.status_code == 200 and r.json()["open"] is False and r.json()["joined"] is True
    error(world.carol.put(flow["path"], {"open": True}), 404)


def test_flow_users_add_and_block(world):
    flow = new_flow(world)
    users = world.alice.get(f"{flow['path']}/users").json()
    assert [u["id"] for u in users] == [world.alice.id]
    r = world.alice.post(f"{flow['path']}/users", {"id": world.bob.id})
    assert r.status_code == 200 and r.json() == {}
    assert {u["id"] for u in world.bob.get(f"{flow['path']}/users").json()} == {
        world.alice.id, world.bob.id}
    error(world.alice.post(f"{flow['path']}/users", {"id": world.carol.id}), 400, "id")
    error(world.alice.post(f"{flow['path']}/users", {}), 400, "id")
    # a non-admin cannot block an admin; an admin can block anyone
    error(world.bob.put(f"{flow['path']}/users/{world.alice.id}", {"disabled": True}), 403)
    r = world.alice.put(f"{flow['path']}/users/{world.bob.id}", {"disabled": True})
    assert r.status_code == 200 and r.json() == {}
    error(world.bob.get(flow["path"]), 403)
    error(world.bob.post("/messages", {"flow": flow["id"], "event": "message",
                                       "content": "let me in"}), 403)
    assert flow["id"] not in [f["id"] for f in world.bob.get("/flows").json()]
    blocked = {u["id"]: u for u in world.alice.get(f"{flow['path']}/users").json()}
    assert blocked[world.bob.id]["disabled"] is True
    world.alice.put(f"{flow['path']}/users/{world.bob.id}", {"disabled": False})
    assert world.bob.get(flow["path"]).status_code == 200
    error(world.alice.put(f"{flow['path']}/users/{world.carol.id}", {"disabled": True}), 404)
    error(world.carol.get(f"{flow['path']}/users"), 404)


# ------------------------------------------------------------------ messages

def test_post_message_shape(world):
    r = world.alice.post("/messages", {"flow": world.main["id"], "event": "message",
                                       "content": "hello @bob #greeting", "tags": ["x"]})
    assert r.status_code == 201 and r.headers["Content-Type"] == JSON_TYPE
    m = r.json()
    assert isinstance(m["id"], int) and m["event"] == "message"
    assert m["flow"] == world.main["id"] and m["user"] == str(world.alice.id)
    assert m["content"] == "hello @bob #greeting"
    assert m["tags"] == [f":user:{world.bob.id}", f":unread:{world.bob.id}", "greeting", "x"]
    assert isinstance(m["sent"], int) and abs(m["sent"] / 1000 - time.time()) < 60
    assert ISO.match(m["created_at"]) and m["app"] == "chat"
    assert m["attachments"] == [] and m["edited"] is None and m["uuid"]
    assert m["thread_id"] == m["thread"]["id"] and m["thread"]["initial_message"] == m["id"]
    assert "conversation" not in m and "seq" not in m
    assert not [k for k in m["thread"] if k.startswith("_")]


def test_spec_tag_example_end_to_end(world):
    marty = world.server.create_user("marty", "acme")
    flow = new_flow(world, members=[marty])
    m = world.alice.say(flow, "@Marty the #bug is back, see http://x.io", tags=["#space-time"])
    assert m["tags"] == [f":user:{marty.id}", f":unread:{marty.id}", ":url", "bug", "space-time"]
    everyone = world.alice.say(flow, "@everyone standup")
    assert everyone["tags"][0] == ":user:everyone"
    assert {f":unread:{world.alice.id}", f":unread:{marty.id}"} <= set(everyone["tags"])
    # a blocked member is not mentionable
    world.alice.put(f"{flow['path']}/users/{marty.id}", {"disabled": True})
    assert world.alice.say(flow, "@marty are you there")["tags"] == []


def test_post_paths_and_ids_increase(world):
    a = world.alice.post("/flows/acme/main/messages", {"event": "message", "content": "by path"})
    b = world.alice.post("/v1/messages", {"flow": world.main["id"], "event": "message",
                                          "content": "by v1"})
    assert a.status_code == b.status_code == 201
    assert b.json()["id"] > a.json()["id"] and a.json()["flow"] == world.main["id"]


def test_post_form_encoded(world):
    r = world.alice.request("POST", "/messages", data={
        "flow": world.main["id"], "event": "message", "content": "form", "tags": "a,#b"})
    assert r.status_code == 201 and r.json()["tags"] == ["a", "b"]


def test_uuid_dedupe(world):
    body = {"flow": world.main["id"], "event": "message", "content": "dedupe me",
            "uuid": "client-uuid-1"}
    first = world.alice.post("/messages", body)
    second = world.alice.post("/messages", body)
    assert first.status_code == second.status_code == 201
    assert first.json()["id"] == second.json()["id"]
    found = world.alice.get("/flows/acme/main/messages", params={"search": "dedupe me"}).json()
    assert [m["id"] for m in found] == [first.json()["id"]]


def test_concurrent_posts_with_one_uuid_store_once(world):
    from concurrent.futures import ThreadPoolExecutor
    body = {"flow": world.main["id"], "event": "message", "content": "racing",
            "uuid": "race-uuid"}

    def post(_):
        s = requests.Session()
        s.auth = (world.bob.token, "x")
        return s.post(world.server.api + "/messages", json=body, timeout=30)
    with ThreadPoolExecutor(8) as pool:
        replies = list(pool.map(post, range(8)))
    assert {r.status_code for r in replies} == {201}
    assert len({r.json()["id"] for r in replies}) == 1
    found = world.bob.get("/flows/acme/main/messages", params={"search": "racing"}).json()
    assert len(found) == 1


def test_blank_uuid_never_dedupes(world):
    body = {"flow": world.main["id"], "event": "message", "content": "blank uuid", "uuid": ""}
    first = world.alice.post("/messages", body)
    second = world.alice.post("/messages", body)
    assert first.status_code == second.status_code == 201
    assert first.json()["id"] != second.json()["id"] and first.json()["uuid"]
    # and the pipeline still takes posts
    assert world.alice.say(world.main, "after blank uuids")["id"] > second.json()["id"]


@pytest.mark.parametrize("value", [["message"], {"a": 1}, True])
def test_odd_json_types_are_client_errors(world, value):
    for method, path, body in [
            ("POST", "/messages", {"flow": world.main["id"], "event": value, "content": "x"}),
            ("POST", "/messages", {"flow": world.main["id"], "event": "message",
                                   "content": "x", "uuid": value}),
            ("GET", "/flows/acme/main/threads", {"application": value}),
            ("GET", "/flows/acme/main/messages", {"limit": value}),
    ]:
        r = world.alice.request(method, path, json=body)
        assert 400 <= r.status_code < 500, (method, path, body, r.text)


def test_vendor_json_content_type(world):
    r = world.alice.request("POST", "/messages", headers={
        "Content-Type": "application/vnd.flowdock+json; charset=utf-8"},
        data=b'{"flow": "%s", "event": "message", "content": "vendor"}' % world.main["id"].encode())
    assert r.status_code == 201, r.text


def test_status_and_line_events(world):
    status = world.bob.post("/messages", {"flow": world.main["id"], "event": "status",
                                          "content": "lunch"})
    assert status.status_code == 201 and status.json()["event"] == "status"
    users = {u["id"]: u for u in world.alice.get("/flows/acme/main/users").json()}
    assert users[world.bob.id]["status"] == "lunch"
    line = world.bob.post("/messages", {"flow": world.main["id"], "event": "line",
                                        "content": "waves"})
    assert line.status_code == 201 and line.json()["event"] == "line"


@pytest.mark.parametrize("body, field", [
    ({"event": "message"}, "content"),
    ({"event": "message", "content": "   "}, "content"),
    ({"event": "message", "content": "x" * 8097}, "content"),
    ({"content": "no event"}, "event"),
    ({"event": "action", "content": "x"}, "event"),
    ({"event": "message-edit", "content": "x"}, "event"),
    ({"event": "message", "content": "x", "tags": 5}, "tags"),
    ({"event": "message", "content": "x", "uuid": {"a": 1}}, "uuid"),
    ({"event": "message", "content": "x", "thread_id": "no-such-thread"}, "thread_id"),
])
def test_post_validation(world, body, field):
    r = world.alice.post("/messages", {"flow": world.main["id"], **body})
    error(r, 400, field)
    assert r.json()["message"] == "Validation error"


def test_post_validation_exact_spec_shape(world):
    r = world.alice.post("/messages", {"flow": world.main["id"], "event": "message",
                                       "content": ""})
    assert r.json() == {"message": "Validation error", "errors": {"content": ["can't be blank"]}}


def test_post_needs_a_visible_flow(world):
    error(world.alice.post("/messages", {"event": "message", "content": "x"}), 400, "flow")
    error(world.carol.post("/messages", {"flow": world.main["id"], "event": "message",
                                         "content": "x"}), 404)
    error(world.bob.post("/messages", {"flow": world.side["id"], "event": "message",
                                       "content": "x"}), 404)
    error(world.bob.post("/flows/acme/side/messages", {"event": "message", "content": "x"}), 404)


@pytest.fixture(scope="module")
def history(world):
    """A flow with a known history for the listing tests."""
    flow = new_flow(world, members=[world.bob])
    say = lambda user, text, **kw: user.say(flow, text, **kw)
    msgs = [
        say(world.alice, "alpha #red"),
        say(world.bob, "beta #blue @alice"),
        say(world.alice, "gamma #red #blue"),
        say(world.bob, "delta plain words"),
        say(world.alice, "epsilon #green", tags=["extra"]),
    ]
    status = world.alice.post("/messages", {"flow": flow["id"], "event": "status",
                                            "content": "away"}).json()
    msgs += [say(world.bob, f"bulk {i}") for i in range(6)]
    return flow, msgs, status


def ids(r):
    assert r.status_code == 200, r.text
    return [m["id"] for m in r.json()]


def test_list_default_newest_thirty_ascending(world, history):
    flow, msgs, status = history
    got = ids(world.bob.get(f"{flow['path']}/messages"))
    assert got == sorted(got)
    assert got[-1] == msgs[-1]["id"] and status["id"] in got


def test_list_limit_and_sort(world, history):
    flow, msgs, _ = history
    path = f"{flow['path']}/messages"
    assert ids(world.bob.get(path, params={"limit": 2})) == [m["id"] for m in msgs[-2:]]
    oldest = ids(world.bob.get(path, params={"limit": 3, "sort": "asc", "event": "message"}))
    assert oldest == [m["id"] for m in msgs[:3]]
    for bad in ({"limit": 0}, {"limit": 101}, {"limit": "x"}):
        error(world.bob.get(path, params=bad), 400, "limit")
    error(world.bob.get(path, params={"sort": "sideways"}), 400, "sort")


def test_list_since_and_until(world, history):
    flow, msgs, _ = history
    path = f"{flow['path']}/messages"
    got = ids(world.bob.get(path, params={"since_id": msgs[1]["id"], "until_id": msgs[4]["id"],
                                          "event": "message"}))
    assert got == [msgs[2]["id"], msgs[3]["id"]]
    got = ids(world.bob.get(path, params={"since_id": msgs[-3]["id"]}))
    assert got == [m["id"] for m in msgs[-2:]]
    error(world.bob.get(path, params={"since_id": "abc"}), 400, "since_id")


def test_list_event_filter(world, history):
    flow, _, status = history
    path = f"{flow['path']}/messages"
    assert ids(world.bob.get(path, params={"event": "status"})) == [status["id"]]
    both = world.bob.get(path, params={"event": "status,message", "limit": 100}).json()
    assert {m["event"] for m in both} == {"status", "message"}


def test_list_tags_and_tag_mode(world, history):
    flow, msgs, _ = history
    path = f"{flow['path']}/messages"
    assert ids(world.bob.get(path, params={"tags": "red,blue"})) == [msgs[2]["id"]]
    assert ids(world.bob.get(path, params={"tags": "red,blue", "tag_mode": "or"})) == [
        msgs[0]["id"], msgs[1]["id"], msgs[2]["id"]]
    assert ids(world.bob.get(path, params={"tags": "#RED"})) == [msgs[0]["id"], msgs[2]["id"]]
    assert ids(world.bob.get(path, params={"tags": "@alice"})) == [msgs[1]["id"]]
    assert ids(world.bob.get(path, params={"tags": f":user:{world.alice.id}"})) == [msgs[1]["id"]]
    error(world.bob.get(path, params={"tags": "red", "tag_mode": "xor"}), 400, "tag_mode")


def test_list_search_and_skip(world, history):
    flow, msgs, _ = history
    path = f"{flow['path']}/messages"
    assert ids(world.bob.get(path, params={"search": "plain delta"})) == [msgs[3]["id"]]
    assert ids(world.bob.get(path, params={"search": "delta absent"})) == []
    bulk = [m["id"] for m in msgs[-6:]]
    assert ids(world.bob.get(path, params={"search": "bulk", "limit": 2})) == bulk[-2:]
    assert ids(world.bob.get(path, params={"search": "bulk", "limit": 2, "skip": 2})) == bulk[-4:-2]
    # until_id is ignored when searching
    assert ids(world.bob.get(path, params={"search": "bulk", "limit": 2,
                                           "until_id": bulk[0]})) == bulk[-2:]
    error(world.bob.get(path, params={"search": "bulk", "skip": -1}), 400, "skip")


def test_list_filters_in_a_get_json_body(world, history):
    flow, msgs, status = history
    r = world.bob.request("GET", f"{flow['path']}/messages", json={"limit": 1})
    assert ids(r) == [msgs[-1]["id"]]
    # node-flowdock sends `{}` on every GET; the query string wins over the body
    r = world.bob.request("GET", f"{flow['path']}/messages?limit=2", json={"limit": 1})
    assert len(ids(r)) == 2
    r = world.bob.request("GET", f"{flow['path']}/messages",
                          json={"event": ["status"], "tags": [], "limit": 100})
    assert ids(r) == [status["id"]]


def test_list_outsiders(world, history):
    flow, _, _ = history
    error(world.carol.get(f"{flow['path']}/messages"), 404)
    error(world.bob.get("/flows/acme/side/messages"), 404)


def test_show_message(world, history):
    flow, msgs, _ = history
    r = world.bob.get(f"{flow['path']}/messages/{msgs[0]['id']}")
    assert r.status_code == 200 and r.json() == msgs[0]
    error(world.bob.get(f"{flow['path']}/messages/999999"), 404)
    error(world.bob.get(f"{flow['path']}/messages/abc"), 404)
    error(world.carol.get(f"{flow['path']}/messages/{msgs[0]['id']}"), 404)


def test_edit_content_emits_message_edit(world):
    flow = new_flow(world, members=[world.bob])
    msg = world.alice.say(flow, "first draft")
    stream = world.bob.stream(flow["id"])
    r = world.alice.put(f"{flow['path']}/messages/{msg['id']}", {"content": "final @bob"})
    assert r.status_code == 200 and r.json() == {}
    edit = stream.events(1)[0]
    assert edit["event"] == "message-edit" and edit["flow"] == flow["id"]
    assert edit["content"] == {"message": msg["id"], "updated_content": "final @bob"}
    assert edit["user"] == str(world.alice.id)
    shown = world.bob.get(f"{flow['path']}/messages/{msg['id']}").json()
    assert shown["content"] == "final @bob" and isinstance(shown["edited"], int)
    assert f":user:{world.bob.id}" in shown["tags"]
    # tags: anyone who sees the message; PATCH is PUT
    r = world.bob.request("PATCH", f"{flow['path']}/messages/{msg['id']}",
                          json={"tags": ["#later", "@alice", f":user:{world.bob.id}"]})
    assert r.status_code == 200
    change = stream.events(1)[0]
    stream.close()
    assert change["event"] == "tag-change" and change["content"]["message"] == msg["id"]
    assert change["content"]["add"] == ["later", f":user:{world.alice.id}"]
    assert f":unread:{world.bob.id}" in change["content"]["remove"]
    assert world.bob.get(f"{flow['path']}/messages/{msg['id']}").json()["tags"] == [
        "later", f":user:{world.alice.id}", f":user:{world.bob.id}"]


def test_edit_rules(world):
    flow = new_flow(world, members=[world.bob])
    msg = world.alice.say(flow, "mine")
    path = f"{flow['path']}/messages/{msg['id']}"
    error(world.bob.put(path, {"content": "hijacked"}), 403)
    error(world.alice.put(path, {}), 400)
    error(world.alice.put(path, {"content": ""}), 400, "content")
    error(world.alice.put(f"{flow['path']}/messages/999999", {"content": "x"}), 404)
    error(world.carol.put(path, {"tags": ["x"]}), 404)
    status = world.alice.post("/messages", {"flow": flow["id"], "event": "status",
                                            "content": "busy"}).json()
    error(world.alice.put(f"{flow['path']}/messages/{status['id']}", {"content": "x"}), 403)


def test_delete_rules(world):
    flow = new_flow(world, members=[world.bob])
    own = world.alice.say(flow, "regret")
    other = world.bob.say(flow, "bob's words")
    stream = world.bob.stream(flow["id"])
    r = world.alice.delete(f"{flow['path']}/messages/{own['id']}")
    assert r.status_code == 200 and r.json() == {}
    edit = stream.events(1)[0]
    stream.close()
    assert edit["event"] == "message-edit"
    assert edit["content"] == {"message": own["id"], "updated_content": ""}
    assert world.bob.get(f"{flow['path']}/messages/{own['id']}").json()["content"] == ""
    error(world.alice.delete(f"{flow['path']}/messages/{other['id']}"), 403)
    status = world.bob.post("/messages", {"flow": flow["id"], "event": "status",
                                          "content": "x"}).json()
    error(world.bob.delete(f"{flow['path']}/messages/{status['id']}"), 403)
    error(world.alice.delete(f"{flow['path']}/messages/999999"), 404)
    error(world.carol.delete(f"{flow['path']}/messages/{own['id']}"), 404)
    # own file → removed with 204 and no body; someone else's file → 403
    upload = world.alice.post("/messages", {"flow": flow["id"], "event": "file", "content": {
        "data": base64.b64encode(b"bytes").decode(), "content_type": "text/plain",
        "file_name": "a.txt"}}).json()
    error(world.bob.delete(f"{flow['path']}/messages/{upload['id']}"), 403)
    r = world.alice.delete(f"{flow['path']}/messages/{upload['id']}")
    assert r.status_code == 204 and r.content == b""
    error(world.alice.get(f"{flow['path']}/messages/{upload['id']}"), 404)


def test_delete_team_inbox_item_removes_it(world):
    flow = new_flow(world, members=[world.bob])
    api_token = flow_api_token(world, flow)
    r = anon(world, "POST", f"/v1/messages/team_inbox/{api_token}", data={
        "source": "x", "from_address": "a@example.com", "subject": "s", "content": "c"})
    assert r.status_code == 200, r.text
    item = world.bob.get(f"{flow['path']}/messages", params={"event": "mail"}).json()[0]
    r = world.bob.delete(f"{flow['path']}/messages/{item['id']}")
    assert r.status_code == 204
    assert world.bob.get(f"{flow['path']}/messages", params={"event": "mail"}).json() == []


# ------------------------------------------------------------------ comments and threads

def test_comments_both_endpoints(world):
    flow = new_flow(world, members=[world.bob])
    parent = world.alice.say(flow, "Release plan\nsecond line")
    r = world.bob.post("/comments", {"flow": flow["id"], "message": parent["id"],
                                     "event": "comment", "content": "looks good @alice",
                                     "tags": ["ok"]})
    assert r.status_code == 201
    c = r.json()
    assert c["event"] == "comment"
    assert c["content"] == {"title": "Release plan", "text": "looks good @alice"}
    assert f"influx:{parent['id']}" in c["tags"] and "ok" in c["tags"]
    assert f":user:{world.alice.id}" in c["tags"]
    assert c["thread_id"] == parent["thread_id"]
    r = world.alice.post(f"{flow['path']}/messages/{parent['id']}/comments",
                         {"content": "thanks"})
    assert r.status_code == 201 and r.json()["content"]["text"] == "thanks"
    # a comment posted through /messages with event comment is the same thing
    r = world.alice.post("/messages", {"flow": flow["id"], "event": "comment",
                                       "message": parent["id"], "content": "third"})
    assert r.status_code == 201 and r.json()["event"] == "comment"
    listed = world.bob.get(f"{flow['path']}/messages/{parent['id']}/comments").json()
    assert [m["content"]["text"] for m in listed] == ["looks good @alice", "thanks", "third"]
    # comment edits keep the {title, text} shape
    r = world.bob.put(f"{flow['path']}/messages/{c['id']}", {"content": "looks great"})
    assert r.status_code == 200
    shown = world.bob.get(f"{flow['path']}/messages/{c['id']}").json()
    assert shown["content"] == {"title": "Release plan", "text": "looks great"}
    assert f"influx:{parent['id']}" in shown["tags"]


def test_comment_errors(world):
    flow = new_flow(world, members=[world.bob])
    parent = world.alice.say(flow, "parent")
    comment = world.bob.post("/comments", {"flow": flow["id"], "message": parent["id"],
                                           "content": "child"}).json()
    error(world.alice.post("/comments", {"flow": flow["id"], "message": comment["id"],
                                         "content": "grandchild"}), 400, "message")
    error(world.alice.post(f"{flow['path']}/messages/{comment['id']}/comments",
                           {"content": "grandchild"}), 400, "message")
    error(world.alice.post("/comments", {"flow": flow["id"], "content": "orphan"}), 400, "message")
    error(world.alice.post("/comments", {"flow": flow["id"], "message": "abc",
                                         "content": "x"}), 400, "message")
    error(world.alice.post("/comments", {"flow": flow["id"], "message": 999999,
                                         "content": "x"}), 404)
    error(world.alice.post("/comments", {"flow": flow["id"], "message": parent["id"]}), 400,
          "content")
    error(world.carol.post("/comments", {"flow": flow["id"], "message": parent["id"],
                                         "content": "x"}), 404)


def test_threads(world):
    flow = new_flow(world, members=[world.bob])
    first = world.alice.say(flow, "Thread starter")
    reply = world.bob.say(flow, "reply by id", thread_id=first["thread_id"])
    assert reply["thread_id"] == first["thread_id"]
    r = world.bob.post(f"{flow['path']}/threads/{first['thread_id']}/messages",
                       {"event": "message", "content": "reply by path"})
    assert r.status_code == 201 and r.json()["thread_id"] == first["thread_id"]
    thread = world.alice.get(f"{flow['path']}/threads/{first['thread_id']}")
    assert thread.status_code == 200
    thread = thread.json()
    assert thread["id"] == first["thread_id"] and thread["title"] == "Thread starter"
    assert thread["internal_comments"] == 3 and thread["initial_message"] == first["id"]
    assert ISO.match(thread["created_at"]) and ISO.match(thread["updated_at"])
    listed = world.alice.get(f"{flow['path']}/threads/{first['thread_id']}/messages").json()
    assert [m["content"] for m in listed] == ["Thread starter", "reply by id", "reply by path"]
    # a thread of another flow is not usable here
    other = world.alice.say(world.side, "elsewhere")
    error(world.alice.post("/messages", {"flow": flow["id"], "event": "message",
                                         "content": "x", "thread_id": other["thread_id"]}),
          400, "thread_id")
    error(world.alice.get(f"{flow['path']}/threads/{other['thread_id']}"), 404)
    error(world.carol.get(f"{flow['path']}/threads/{first['thread_id']}"), 404)


def test_user_external_thread_id_for_activity(world):
    flow = new_flow(world)
    body = {"flow": flow["id"], "event": "activity", "title": "ticket opened",
            "author": {"name": "Tracker"}, "external_thread_id": "T-1",
            "thread": {"title": "Ticket 1"}}
    a = world.alice.post("/messages", body)
    assert a.status_code == 201, a.text
    b = world.alice.post("/messages", {**body, "event": "discussion", "body": "a comment",
                                       "thread": None})
    assert b.status_code == 201 and b.json()["thread_id"] == a.json()["thread_id"]


def flow_api_token(world, flow) -> str:
    listing = world.server.admin("list", "flows")
    return next(line.split()[-1] for line in listing.splitlines()
                if f"acme/{flow['parameterized_name']}" in line)


def test_thread_listing_by_application(world):
    flow = new_flow(world)
    world.alice.say(flow, "a chat topic")
    r = anon(world, "POST", f"/v1/messages/team_inbox/{flow_api_token(world, flow)}", data={
        "source": "x", "from_address": "a@example.com", "subject": "an inbox item",
        "content": "c"})
    assert r.status_code == 200
    path = f"{flow['path']}/threads"
    titles = lambda **p: [t["title"] for t in world.alice.get(path, params=p).json()]
    assert titles() == ["an inbox item", "a chat topic"]
    assert titles(application="chat") == ["a chat topic"]
    assert titles(application="inbox") == ["an inbox item"]
    r = world.alice.request("HEAD", path)
    assert r.status_code == 200 and r.content == b""


def test_thread_listing_pages_with_link(world):
    flow = new_flow(world)
    for i in range(5):
        world.alice.say(flow, f"topic {i}")
    path = f"{flow['path']}/threads"
    r = world.alice.get(path, params={"limit": 2})
    assert r.status_code == 200
    seen = [t["title"] for t in r.json()]
    assert seen == ["topic 4", "topic 3"]
    while "next" in r.links:
        nxt = r.links["next"]["url"]
        assert nxt.startswith(world.server.api + path)
        r = world.alice.get(nxt[len(world.server.api):])
        seen += [t["title"] for t in r.json()]
    assert seen == [f"topic {i}" for i in range(4, -1, -1)]
    assert len(world.alice.get(path).json()) == 5
    error(world.alice.get(path, params={"until": "yesterday"}), 400, "until")


# ------------------------------------------------------------------ private

def test_private_conversation(world):
    a, b = world.alice, world.bob
    r = a.get(f"/private/{b.id}")
    assert r.status_code == 200
    conv = r.json()
    assert conv["id"] == b.id and conv["name"] == "@bob" and conv["open"] is False
    assert conv["url"] == f"{world.server.api}/private/{b.id}"
    assert {u["id"] for u in conv["users"]} == {a.id, b.id}
    assert a.put(f"/private/{b.id}", {"open": True}).json()["open"] is True
    stream = b.stream({"user": 1})
    r = a.post(f"/private/{b.id}/messages", {"event": "message", "content": "psst",
                                             "tags": ["secret"]})
    assert r.status_code == 201
    m = r.json()
    assert m["to"] == str(b.id) and m["user"] == str(a.id) and "flow" not in m
    assert "secret" in m["tags"] and f":unread:{b.id}" in m["tags"]
    assert stream.events(1)[0]["id"] == m["id"]
    assert b.id in [c["id"] for c in a.get("/private").json()]
    assert a.id in [c["id"] for c in b.get("/private").json()]
    # both sides see the same conversation
    assert [x["id"] for x in b.get(f"/private/{a.id}/messages").json()] == [m["id"]]
    assert a.get(f"/private/{b.id}/messages/{m['id']}").json()["content"] == "psst"
    r = a.put(f"/private/{b.id}/messages/{m['id']}", {"content": "psst!"})
    assert r.status_code == 200
    edit = stream.events(1)[0]
    assert edit["event"] == "message-edit" and edit["to"] == str(b.id)
    error(b.put(f"/private/{a.id}/messages/{m['id']}", {"content": "forged"}), 403)
    r = a.delete(f"/private/{b.id}/messages/{m['id']}")
    assert r.status_code == 200
    stream.close()
    assert b.get(f"/private/{a.id}/messages/{m['id']}").json()["content"] == ""
    error(a.get(f"/private/{b.id}/messages/999999"), 404)


def test_private_rules(world):
    a = world.alice
    error(a.post(f"/private/{world.bob.id}/messages", {"event": "status", "content": "x"}),
          400, "event")
    error(a.post(f"/private/{world.bob.id}/messages", {"event": "message", "content": ""}),
          400, "content")
    for path in (f"/private/{world.carol.id}", f"/private/{world.carol.id}/messages",
                 "/private/999999", "/private/abc"):
        error(a.get(path), 404)
    error(a.post(f"/private/{world.carol.id}/messages", {"event": "message",
                                                         "content": "x"}), 404)
    # a third person cannot read the conversation by its message ids
    m = a.post(f"/private/{world.bob.id}/messages", {"event": "message",
                                                     "content": "for bob"}).json()
    dora = world.server.create_user("dora2", "acme")
    assert [x["id"] for x in dora.get(f"/private/{a.id}/messages").json()] == []


# ------------------------------------------------------------------ users

def test_users(world):
    me = world.bob.get("/user")
    assert me.status_code == 200 and me.json()["id"] == world.bob.id
    assert {"id", "email", "name", "nick", "avatar", "website"} <= me.json().keys()
    mates = {u["id"] for u in world.bob.get("/users").json()}
    assert {world.alice.id, world.bob.id} <= mates and world.carol.id not in mates
    assert world.carol.get("/users").json() == [world.carol.get("/user").json()]
    assert world.bob.get(f"/users/{world.alice.id}").json()["nick"] == "alice"
    error(world.bob.get(f"/users/{world.carol.id}"), 404)
    error(world.bob.get("/users/999999"), 404)


def test_update_own_profile_emits_user_edit(world):
    user = world.server.create_user("nicky", "acme")
    flow = new_flow(world, members=[user])
    stream = world.alice.stream(flow["id"])
    r = user.put(f"/users/{user.id}", {"nick": "nicholas"})
    assert r.status_code == 200 and r.json() == {}
    event = stream.events(1)[0]
    stream.close()
    assert event["event"] == "user-edit" and event["flow"] == flow["id"]
    assert event["content"]["user"]["id"] == user.id
    assert event["content"]["user"]["nick"] == "nicholas"
    assert user.get("/user").json()["nick"] == "nicholas"
    # mentions follow the new nick
    said = world.alice.say(flow, "hi @nicholas")
    assert f":user:{user.id}" in said["tags"]
    error(user.put(f"/users/{world.alice.id}", {"nick": "pwned"}), 403)
    error(user.put(f"/users/{user.id}", {"nick": "has space"}), 400, "nick")
    error(user.put(f"/users/{user.id}", {"nick": "BOB"}), 400, "nick")
    assert user.put(f"/users/{user.id}", {"nick": "Nicholas"}).status_code == 200
    error(user.put(f"/users/{user.id}", {"email": "not-an-email"}), 400, "email")
    error(user.put(f"/users/{user.id}", {"email": world.bob.email}), 400, "email")


# ------------------------------------------------------------------ invitations

def test_invitations(world):
    flow = new_flow(world)
    path = f"{flow['path']}/invitations"
    r = world.alice.post(path, {"email": "new@example.com", "message": "come"})
    assert r.status_code == 201
    inv = r.json()
    assert isinstance(inv["id"], int) and inv["state"] == "pending"
    assert inv["email"] == "new@example.com" and inv["flow"] == flow["id"]
    assert inv["url"] == f"{world.server.api}{path}/{inv['id']}"
    again = world.alice.post(path, {"email": "new@example.com"})
    assert again.status_code == 201 and again.json()["id"] == inv["id"]
    assert [i["id"] for i in world.alice.get(path).json()] == [inv["id"]]
    assert world.alice.get(f"{path}/{inv['id']}").json() == inv
    error(world.alice.post(path, {"email": "nope"}), 400, "email")
    error(world.carol.get(path), 404)
    error(world.carol.post(path, {"email": "x@example.com"}), 404)
    r = world.alice.delete(f"{path}/{inv['id']}")
    assert r.status_code == 204 and r.content == b""
    error(world.alice.get(f"{path}/{inv['id']}"), 404)
    error(world.alice.delete(f"{path}/{inv['id']}"), 404)


def test_invitation_import(world):
    flow = new_flow(world)
    r = world.alice.post(f"{flow['path']}/invitations/import", {
        "list": f'"Bob" <{world.bob.email}>\nfresh@example.com, "Fresh Two" <two@example.com>,'
                f' broken-address', "message": "hi"})
    assert r.status_code == 200
    body = r.json()
    assert [u["id"] for u in body["added_users"]] == [world.bob.id]
    assert sorted(i["email"] for i in body["invitations"]) == ["fresh@example.com",
                                                               "two@example.com"]
    assert body["erroneous_emails"] == [{"broken-address": "is not a valid email address"}]
    assert world.bob.get(flow["path"]).status_code == 200
    error(world.alice.post(f"{flow['path']}/invitations/import", {"list": " "}), 400, "list")


# ------------------------------------------------------------------ files

PNG = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk"
                       "YPhfDwAChwGA60e6kgAAAABJRU5ErkJggg==")


def test_file_upload_json_and_download(world):
    r = world.alice.post("/messages", {"flow": world.main["id"], "event": "file", "content": {
        "data": base64.b64encode(PNG).decode(), "content_type": "image/png",
        "file_name": "../../dot.png"}})
    assert r.status_code == 201, r.text
    m = r.json()
    assert m["event"] == "file" and ":file" in m["tags"]
    assert m["content"]["file_name"] == "dot.png" and m["content"]["file_size"] == len(PNG)
    assert m["content"]["content_type"] == "image/png"
    assert m["attachments"] == [m["content"]]
    got = world.bob.get(m["content"]["path"])
    assert got.status_code == 200 and got.content == PNG
    assert got.headers["Content-Type"] == "image/png"
    error(world.carol.get(m["content"]["path"]), 404)
    error(anon(world, "GET", m["content"]["path"]), 401)
    listed = world.bob.get("/flows/acme/main/messages", params={"tags": ":file"}).json()
    assert m["id"] in [x["id"] for x in listed]


def test_file_upload_multipart_and_membership(world):
    r = world.alice.request("POST", "/flows/acme/side/messages",
                            data={"event": "file"},
                            files={"content": ("notes.txt", b"side notes\n", "text/plain")})
    assert r.status_code == 201, r.text
    path = r.json()["content"]["path"]
    assert world.alice.get(path).content == b"side notes\n"
    error(world.bob.get(path), 404)     # bob is not in acme/side
    error(world.alice.get("/files/0123456789abcdef/0123456789abcdef0123456789abcdef/x"), 404)


def test_file_validation(world):
    base = {"flow": world.main["id"], "event": "file"}
    error(world.alice.post("/messages", {**base, "content": {"data": "***"}}), 400, "content")


def test_private_file(world):
    r = world.alice.request("POST", f"/private/{world.bob.id}/messages",
                            files={"content": ("p.txt", b"private bytes", "text/plain")})
    assert r.status_code == 201, r.text
    path = r.json()["content"]["path"]
    assert world.bob.get(path).content == b"private bytes"
    dora = world.server.create_user("dora3", "acme")
    error(dora.get(path), 404)


# ------------------------------------------------------------------ HTTP conventions

def test_cors(world):
    r = anon(world, "OPTIONS", "/messages", headers={
        "Origin": "https://app.example.com", "Access-Control-Request-Method": "POST"})
    assert r.status_code == 200
    assert r.headers["Access-Control-Allow-Origin"] == "https://app.example.com"
    methods = {m.strip() for m in r.headers["Access-Control-Allow-Methods"].split(",")}
    assert methods == {"POST", "PUT", "PATCH", "DELETE", "GET", "OPTIONS"}
    allowed = {h.strip().lower() for h in r.headers["Access-Control-Allow-Headers"].split(",")}
    assert {"origin", "accept", "content-type", "authorization", "x-csrf-token",
            "x-requested-with", "x-prototype-version"} <= allowed
    r = world.alice.get("/flows", headers={"Origin": "https://app.example.com"})
    assert r.headers["Access-Control-Allow-Origin"] == "https://app.example.com"
    assert "Flowdock-User" in r.headers["Access-Control-Expose-Headers"]


def test_v1_aliases(world):
    assert world.alice.get("/v1/flows").json() == world.alice.get("/flows").json()
    assert world.alice.get("/v1/flows/acme/main").status_code == 200
    r = world.alice.post(f"/v1/private/{world.bob.id}/messages", {"event": "message",
                                                                  "content": "v1 pm"})
    assert r.status_code == 201
    r = world.alice.post("/v1/comments", {"flow": world.main["id"], "content": "v1 comment",
                                          "message": world.alice.say(world.main, "p")["id"]})
    assert r.status_code == 201
    assert world.alice.get("/flows/").status_code == 200     # trailing slash


def test_unknown_path_404_and_wrong_method_405(world):
    body = error(world.alice.get("/nothing/here"), 404)
    assert body == {"message": "not found"}
    error(anon(world, "GET", "/nothing/here"), 404)
    for method, path in (("DELETE", "/flows"), ("POST", "/users"), ("PUT", "/messages"),
                         ("DELETE", "/v1/flows/acme/main")):
        r = world.alice.request(method, path)
        error(r, 405)
        assert "GET" in r.headers["Allow"] or "POST" in r.headers["Allow"]


# ------------------------------------------------------------------ bad bodies

def post_raw(user, path, data, content_type):
    return user.request("POST", path, data=data, headers={"Content-Type": content_type})


def test_malformed_json_is_400_and_the_connection_still_works(world):
    a = world.alice
    body = error(post_raw(a, "/messages", b'{"flow": "x", "event": ', "application/json"), 400)
    assert "JSON" in body["message"]
    error(post_raw(a, "/messages", b"\xff\xfe{}", "application/json"), 400)
    error(post_raw(a, "/messages", b"[" * 100000, "application/json"), 400)
    error(post_raw(a, "/messages", b'{"content": NaN}', "application/json"), 400)
    # same keep-alive session: the next request is served normally
    assert a.say(world.main, "still here")["content"] == "still here"


def test_wrong_shape_is_422(world):
    a = world.alice
    for raw in (b'["event", "message"]', b'"a string"', b"42", b"null"):
        body = error(post_raw(a, "/messages", raw, "application/json"), 422)
        assert "object" in body["message"]
    base = {"flow": world.main["id"], "event": "message", "content": "x"}
    error(a.post("/messages", {**base, "thread": "not an object"}), 422, "thread")
    error(a.post("/messages", {**base, "thread": ["a"]}), 422, "thread")
    error(a.post("/messages", {"flow": world.main["id"], "event": "activity", "title": "t",
                               "author": "Octo", "external_thread_id": "e",
                               "thread": {"title": "t"}}), 422, "author")
    error(a.post("/messages", {"flow": world.main["id"], "event": "file",
                               "content": "not an object"}), 422, "content")
    assert a.say(world.main, "fine after 422")["content"] == "fine after 422"


def test_archived_flow_refuses_posts_with_422(world):
    flow = new_flow(world, members=[world.bob])
    msg = world.alice.say(flow, "before archiving")
    r = world.alice.put(flow["path"], {"disabled": True})
    assert r.status_code == 200 and r.json()["disabled"] is True
    error(world.bob.post("/messages", {"flow": flow["id"], "event": "message",
                                       "content": "too late"}), 422)
    error(world.bob.post("/comments", {"flow": flow["id"], "message": msg["id"],
                                       "content": "too late"}), 422)
    # still readable
    assert [m["id"] for m in world.bob.get(f"{flow['path']}/messages?event=message").json()] == [msg["id"]]
    world.alice.put(flow["path"], {"disabled": False})
    assert world.bob.say(flow, "back again")["content"] == "back again"


def test_unsupported_content_type_is_415(world):
    a = world.alice
    for ctype in ("text/plain", "application/xml"):
        error(post_raw(a, "/messages", b"flow=x&content=y", ctype), 415)
    r = a.request("POST", "/messages", data=b"plain words", headers={"Content-Type": ""})
    error(r, 415)
    # no body, no content type: fine (node-flowdock-like empty posts get a validation error)
    error(a.request("POST", "/messages"), 400, "flow")
    assert a.say(world.main, "fine after 415")["id"]


def test_oversized_bodies_are_413(world):
    a = world.alice
    big_json = b'{"content": "' + b"x" * MAX_JSON_BODY + b'"}'
    error(post_raw(a, "/messages", big_json, "application/json"), 413)
    huge = b"x" * (MAX_BODY + 1)
    error(a.request("POST", "/messages", files={"content": ("big.bin", huge)},
                    data={"flow": world.main["id"], "event": "file"}), 413)
    assert a.say(world.main, "fine after 413")["id"]


def test_oversized_declared_length_is_refused_before_the_body(world):
    """A client that waits for `100 Continue` before sending a huge body gets 413 at
    once instead (curl does this for large uploads)."""
    s = socket.create_connection(("127.0.0.1", world.server.http_port), timeout=10)
    auth = base64.b64encode(f"{world.alice.token}:x".encode()).decode()
    s.sendall((f"POST /messages HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {auth}\r\n"
               f"Content-Type: application/json\r\nContent-Length: {100 * MAX_BODY}\r\n"
               f"Expect: 100-continue\r\n\r\n").encode())
    reply = b""
    while b"\r\n\r\n" not in reply:
        chunk = s.recv(4096)
        assert chunk, reply
        reply += chunk
    s.close()
    assert reply.startswith(b"HTTP/1.1 413")
    assert world.alice.get("/flows").status_code == 200


# ------------------------------------------------------------------ visibility

def test_outsiders_get_404_on_every_flow_route(world):
    """carol (another organization) on acme/main, bob (same organization, not a
    member) on acme/side: every route answers 404, as if the flow did not exist."""
    a = world.alice
    msg = a.say(world.side, "side secret")
    side_source = a.post("/flows/acme/side/sources", {"name": "S"}).json()
    side_inv = a.post("/flows/acme/side/invitations", {"email": "z@example.com"}).json()
    main_msg = a.say(world.main, "main message")
    main_source = a.post("/flows/acme/main/sources", {"name": "M"}).json()
    main_inv = a.post("/flows/acme/main/invitations", {"email": "z@example.com"}).json()
    cases = [(world.carol, world.main, main_msg, main_source, main_inv),
             (world.bob, world.side, msg, side_source, side_inv)]
    for user, flow, m, src, inv in cases:
        f = "/flows/" + flow["path"]
        t = m["thread_id"]
        calls = [
            ("GET", f, None), ("PUT", f, {"name": "renamed"}), ("GET", f"{f}/users", None),
            ("POST", f"{f}/users", {"id": user.id}),
            ("PUT", f"{f}/users/{world.alice.id}", {"disabled": True}),
            ("POST", f"{f}/messages", {"event": "message", "content": "x"}),
            ("GET", f"{f}/messages", None), ("GET", f"{f}/messages/{m['id']}", None),
            ("PUT", f"{f}/messages/{m['id']}", {"tags": ["x"]}),
            ("DELETE", f"{f}/messages/{m['id']}", None),
            ("POST", f"{f}/messages/{m['id']}/comments", {"content": "x"}),
            ("GET", f"{f}/messages/{m['id']}/comments", None),
            ("GET", f"{f}/threads", None), ("GET", f"{f}/threads/{t}", None),
            ("POST", f"{f}/threads/{t}/messages", {"event": "message", "content": "x"}),
            ("GET", f"{f}/threads/{t}/messages", None),
            ("GET", f"{f}/sources", None), ("POST", f"{f}/sources", {"name": "x"}),
            ("GET", f"{f}/sources/{src['id']}", None),
            ("PUT", f"{f}/sources/{src['id']}", {"error_message": "x"}),
            ("DELETE", f"{f}/sources/{src['id']}", None),
            ("GET", f"{f}/invitations", None), ("POST", f"{f}/invitations", {"email": "q@x.io"}),
            ("POST", f"{f}/invitations/import", {"list": "q@x.io"}),
            ("GET", f"{f}/invitations/{inv['id']}", None),
            ("DELETE", f"{f}/invitations/{inv['id']}", None),
            ("GET", f"/flows/find?id={flow['id']}", None),
            ("POST", "/messages", {"flow": flow["id"], "event": "message", "content": "x"}),
            ("POST", "/comments", {"flow": flow["id"], "message": m["id"], "content": "x"}),
        ]
        for method, path, body in calls:
            r = user.request(method, path, json=body)
            assert r.status_code == 404, (user.nick, method, path, r.status_code, r.text)
            assert r.json() == {"message": "not found"}, (method, path)
    # nothing leaked into the lists either
    assert world.side["id"] not in [f["id"] for f in world.bob.get("/flows").json()]
    assert side_source["id"] not in [s["id"] for s in world.bob.get("/sources").json()]
    assert main_source["id"] not in [s["id"] for s in world.carol.get("/sources").json()]
    assert a.get(f"/flows/acme/side/messages/{msg['id']}").json()["content"] == "side secret"


def test_legacy_flow_reference(world):
    r = world.alice.post("/messages", {"flow": "acme:main", "event": "message",
                                       "content": "legacy id"})
    assert r.status_code == 201 and r.json()["flow"] == world.main["id"]
    r = world.alice.get("/flows/find", params={"id": "acme/main"})
    assert r.status_code == 200 and r.json()["id"] == world.main["id"]
    error(world.carol.post("/messages", {"flow": "acme:main", "event": "message",
                                         "content": "x"}), 404)


def test_form_array_tags_and_nested_fields(world):
    r = world.alice.request("POST", "/messages", data=[
        ("flow", world.main["id"]), ("event", "message"), ("content", "form array"),
        ("tags[]", "one"), ("tags[]", "#two")])
    assert r.status_code == 201 and r.json()["tags"] == ["one", "two"]
    r = world.alice.request("POST", "/messages", data={
        "flow": world.main["id"], "event": "activity", "title": "form activity",
        "author[name]": "Former", "external_thread_id": "form-1", "thread[title]": "Form"})
    assert r.status_code == 201, r.text
    assert r.json()["author"] == {"name": "Former"} and r.json()["thread"]["title"] == "Form"


def test_malformed_multipart_is_400(world):
    r = world.alice.request("POST", "/messages", data=b"--x\r\nnonsense",
                            headers={"Content-Type": "multipart/form-data"})
    error(r, 400)
