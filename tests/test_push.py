"""Integrations: sources and `flow_token` posts, threads by `external_thread_id`, and the
deprecated v1 push API (spec sections 3 Sources, 8, 9) over a real server."""
import pytest
import requests

WAIT = {"X-flowdock-wait-for-message": "true"}


def anon(world, method, path, **kw):
    kw.setdefault("timeout", 30)
    return requests.request(method, world.server.api + path, **kw)


@pytest.fixture(scope="module")
def source(world):
    r = world.alice.post("/flows/acme/main/sources",
                         {"name": "CI", "external_url": "https://ci.example.com"})
    assert r.status_code == 201, r.text
    return r.json()


def latest(world, **params):
    r = world.alice.get("/flows/acme/main/messages", params={"limit": 1, **params})
    assert r.status_code == 200
    return r.json()[-1]


# ------------------------------------------------------------------ sources

def test_created_source_shows_its_token_once(world, source):
    assert isinstance(source["id"], int) and source["name"] == "CI"
    assert len(source["flow_token"]) >= 16
    assert source["external_url"] == "https://ci.example.com"
    assert source["creator"]["id"] == world.alice.id
    assert source["url"] == f"{world.server.api}/flows/acme/main/sources/{source['id']}"
    assert {"created_at", "updated_at", "_links", "application"} <= source.keys()
    shown = world.alice.get(f"/flows/acme/main/sources/{source['id']}")
    assert shown.status_code == 200 and "flow_token" not in shown.json()
    listed = world.alice.get("/flows/acme/main/sources").json()
    assert [s["id"] for s in listed] == [source["id"]] and "flow_token" not in listed[0]
    assert source["id"] in [s["id"] for s in world.bob.get("/sources").json()]


def test_sources_by_flow_token(world, source):
    r = anon(world, "GET", "/sources", params={"flow_token": source["flow_token"]})
    assert r.status_code == 200 and [s["id"] for s in r.json()] == [source["id"]]
    assert "Flowdock-User" not in r.headers


def test_source_validation_and_visibility(world):
    r = world.alice.post("/flows/acme/main/sources", {"name": " "})
    assert r.status_code == 400 and r.json()["errors"] == {"name": ["can't be blank"]}
    assert world.carol.get("/flows/acme/main/sources").status_code == 404
    assert world.carol.post("/flows/acme/main/sources", {"name": "x"}).status_code == 404
    assert world.alice.get("/flows/acme/main/sources/99999").status_code == 404


def test_source_problem_report(world, source):
    r = anon(world, "PUT", "/sources", json={"flow_token": source["flow_token"],
                                             "error_message": "build server down"})
    assert r.status_code == 200 and r.json()["error_message"] == "build server down"
    r = world.alice.put(f"/flows/acme/main/sources/{source['id']}",
                        {"error_message": "", "configuration_url": "https://ci.example.com/cfg"})
    assert r.status_code == 200
    assert r.json()["error_message"] is None
    assert r.json()["configuration_url"] == "https://ci.example.com/cfg"
    r = anon(world, "PUT", "/sources", json={"error_message": "x"})
    assert r.status_code == 400 and "flow_token" in r.json()["errors"]


# ------------------------------------------------------------------ flow_token posts

def test_flow_token_post_is_accepted_202(world, source):
    stream = world.bob.stream(world.main["id"])
    r = anon(world, "POST", "/messages", json={
        "flow_token": source["flow_token"], "event": "message", "content": "build #42 green",
        "external_user_name": "CI"})
    assert r.status_code == 202 and r.json() == {}
    got = stream.events(1)[0]
    stream.close()
    assert got["content"] == "build #42 green" and got["user"] == "0"
    assert got["external_user_name"] == "CI" and got["app"] == "influx"
    assert got["flow"] == world.main["id"] and "42" in got["tags"]


def test_flow_token_post_with_wait_header_returns_the_message(world, source):
    r = anon(world, "POST", "/messages", headers=WAIT, json={
        "flow_token": source["flow_token"], "event": "message", "content": "waited"})
    assert r.status_code in (200, 201) and r.json()["content"] == "waited"
    assert isinstance(r.json()["id"], int) and r.json()["user"] == "0"


def test_flow_token_in_query_string_and_form_body(world, source):
    r = anon(world, "POST", "/messages", params={"flow_token": source["flow_token"]},
             headers=WAIT, data={"event": "message", "content": "from a form"})
    assert r.status_code in (200, 201), r.text
    assert r.json()["content"] == "from a form"


def test_flow_token_uuid_dedupe(world, source):
    body = {"flow_token": source["flow_token"], "event": "message", "content": "once",
            "uuid": "ci-build-77"}
    first = anon(world, "POST", "/messages", headers=WAIT, json=body).json()
    second = anon(world, "POST", "/messages", headers=WAIT, json=body).json()
    assert first["id"] == second["id"]
    found = world.alice.get("/flows/acme/main/messages", params={"search": "once"}).json()
    assert [m["id"] for m in found if m["uuid"] == "ci-build-77"] == [first["id"]]


def test_flow_token_posts_only_into_its_flow(world, source):
    body = {"flow_token": source["flow_token"], "event": "message", "content": "by path"}
    assert anon(world, "POST", "/flows/acme/main/messages", json=body).status_code == 202
    r = anon(world, "POST", "/flows/acme/side/messages", json=body)
    assert r.status_code == 404
    assert "by path" not in [m["content"] for m in
                             world.alice.get("/flows/acme/side/messages").json()]


def test_unknown_flow_token_is_404(world):
    r = anon(world, "POST", "/messages", json={"flow_token": "nope", "event": "message",
                                               "content": "x"})
    assert r.status_code == 404 and r.json()["message"]


def test_activity_creates_and_reuses_a_thread(world, source):
    token = source["flow_token"]
    activity = {"flow_token": token, "event": "activity", "title": "opened <a href='/x'>PR 7</a>",
                "author": {"name": "Octo", "avatar": "https://a.example/o.png"},
                "external_thread_id": "pr-7",
                "thread": {"title": "PR 7: fix the flux capacitor", "body": "<p>details</p>",
                           "external_url": "https://git.example/pr/7",
                           "status": {"value": "open", "color": "green"},
                           "fields": [{"label": "branch", "value": "fix-flux"}]}}
    first = anon(world, "POST", "/messages", headers=WAIT, json=activity)
    assert first.status_code in (200, 201), first.text
    first = first.json()
    assert first["event"] == "activity" and first["content"] is None
    assert first["author"]["name"] == "Octo" and first["app"] == "influx"
    thread_id = first["thread_id"]
    assert first["thread"]["title"] == "PR 7: fix the flux capacitor"
    assert first["thread"]["status"] == {"value": "open", "color": "green"}
    # the same external id joins the thread; a discussion counts as external comment
    second = anon(world, "POST", "/messages", headers=WAIT, json={
        "flow_token": token, "event": "discussion", "title": "commented", "body": "LGTM",
        "author": {"name": "Reviewer"}, "external_thread_id": "pr-7"}).json()
    assert second["thread_id"] == thread_id
    # the same external id from another source is another thread
    other = world.alice.post("/flows/acme/main/sources", {"name": "Other CI"}).json()
    third = anon(world, "POST", "/messages", headers=WAIT, json={
        **activity, "flow_token": other["flow_token"]}).json()
    assert third["thread_id"] != thread_id
    thread = world.bob.get(f"/flows/acme/main/threads/{thread_id}")
    assert thread.status_code == 200
    thread = thread.json()
    assert thread["activities"] == 1 and thread["external_comments"] == 1
    assert thread["fields"] == [{"label": "branch", "value": "fix-flux"}]
    assert not [k for k in thread if k.startswith("_")]
    in_thread = world.bob.get(f"/flows/acme/main/threads/{thread_id}/messages").json()
    assert [m["id"] for m in in_thread] == [first["id"], second["id"]]
    # posting into the thread by its id
    by_id = anon(world, "POST", "/messages", headers=WAIT, json={
        "flow_token": token, "event": "activity", "title": "merged", "author": {"name": "Octo"},
        "thread_id": thread_id}).json()
    assert by_id["thread_id"] == thread_id


@pytest.mark.parametrize("change, field, status", [
    ({"title": ""}, "title", 400),
    ({"author": {"avatar": "x"}}, "author", 400),
    ({"author": "Octo"}, "author", 422),            # not an object: wrong shape
    ({"thread": "PR 7"}, "thread", 422),
    ({"external_thread_id": None}, "external_thread_id", 400),
    ({"external_thread_id": "new-one", "thread": {"body": "no title"}}, "thread", 400),
    ({"thread": {"title": "t", "status": {"value": "x", "color": "pink"}}}, "thread.status", 400),
    ({"thread_id": "not-a-thread", "external_thread_id": None}, "thread_id", 400),
])
def test_activity_validation(world, source, change, field, status):
    body = {"flow_token": source["flow_token"], "event": "activity", "title": "t",
            "author": {"name": "a"}, "external_thread_id": "v-1", "thread": {"title": "t"}}
    body.update(change)
    body = {k: v for k, v in body.items() if v is not None}
    r = anon(world, "POST", "/messages", json=body)
    assert r.status_code == status, r.text
    assert field in r.json()["errors"]
    if status == 400:
        assert r.json()["message"] == "Validation error"


def test_deleted_source_token_is_gone(world):
    created = world.alice.post("/flows/acme/main/sources", {"name": "Temp"}).json()
    token = created["flow_token"]
    ok = anon(world, "POST", "/messages", json={"flow_token": token, "event": "message",
                                                "content": "before delete"})
    assert ok.status_code == 202
    r = world.bob.delete(f"/flows/acme/main/sources/{created['id']}")
    assert r.status_code == 204 and r.content == b""
    r = anon(world, "POST", "/messages", json={"flow_token": token, "event": "message",
                                               "content": "after delete"})
    assert r.status_code == 410 and r.json()["message"]
    assert anon(world, "GET", "/sources", params={"flow_token": token}).status_code == 410
    assert world.alice.get(f"/flows/acme/main/sources/{created['id']}").status_code == 404
    assert created["id"] not in [s["id"] for s in world.alice.get("/sources").json()]


# ------------------------------------------------------------------ v1 push

def test_v1_team_inbox_form_encoded_like_the_ruby_gem(world):
    token = world.main["api_token"]
    stream = world.alice.stream(world.main["id"])
    r = anon(world, "POST", f"/v1/messages/team_inbox/{token}", data={
        "source": "Build Bot", "from_address": "ci@example.com", "subject": "Build failed",
        "content": "<h2>Oops</h2><script>alert(1)</script><p>see <a href='http://x'>log</a></p>",
        "from_name": "CI", "project": "flux-capacitor", "tags": "ci,#red,@bob",
        "link": "http://ci.example.com/1", "format": "html"})
    assert r.status_code == 200 and r.json() == {}
    item = stream.events(1)[0]
    stream.close()
    assert item["event"] == "mail" and item["app"] == "influx" and item["user"] == "0"
    assert item["content"]["subject"] == "Build failed"
    assert item["content"]["from"] == [{"name": "CI", "address": "ci@example.com"}]
    assert "<script>" not in item["content"]["content"] and "<h2>Oops</h2>" in item["content"]["content"]
    assert item["tags"][:3] == [":source:Build Bot", "ci", "red"]
    assert item["thread"]["title"] == "Build failed"
    listed = world.alice.get("/flows/acme/main/messages", params={"event": "mail"}).json()
    assert item["id"] in [m["id"] for m in listed]


def test_v1_team_inbox_json_and_without_prefix(world):
    token = world.main["api_token"]
    r = anon(world, "POST", f"/messages/team_inbox/{token}", json={
        "source": "rss", "from_address": "feed@example.com", "subject": "New post",
        "content": "<p>hi</p>", "tags": ["feed"]})
    assert r.status_code == 200 and r.json() == {}
    assert latest(world, event="mail")["content"]["subject"] == "New post"


def test_v1_team_inbox_validation(world):
    token = world.main["api_token"]
    r = anon(world, "POST", f"/v1/messages/team_inbox/{token}",
             data={"source": "bad/source!", "subject": ""})
    assert r.status_code == 400
    errors = r.json()["errors"]
    assert {"source", "from_address", "subject", "content"} <= errors.keys()


def test_v1_chat_form_encoded(world):
    token = world.main["api_token"]
    r = anon(world, "POST", f"/v1/messages/chat/{token}", data={
        "content": "deploy done #release @bob", "external_user_name": "Deployer",
        "tags": "prod,#eu"})
    assert r.status_code == 200 and r.json() == {}
    msg = latest(world, event="message")
    assert msg["content"] == "deploy done #release @bob"
    assert msg["external_user_name"] == "Deployer" and msg["user"] == "0"
    assert msg["tags"][:2] == [f":user:{world.bob.id}", f":unread:{world.bob.id}"]
    assert {"release", "prod", "eu"} <= set(msg["tags"])


def test_v1_chat_comment_by_message_id(world):
    parent = world.alice.say(world.main, "release notes")
    token = world.main["api_token"]
    r = anon(world, "POST", f"/v1/messages/chat/{token}", data={
        "content": "noted", "external_user_name": "Bot", "message_id": str(parent["id"])})
    assert r.status_code == 200
    comment = latest(world, event="comment")
    assert comment["content"]["text"] == "noted"
    assert f"influx:{parent['id']}" in comment["tags"]


@pytest.mark.parametrize("fields, field", [
    ({"content": "x", "external_user_name": "two words"}, "external_user_name"),
    ({"content": "x"}, "external_user_name"),
    ({"content": "", "external_user_name": "bot"}, "content"),
    ({"content": "x" * 8097, "external_user_name": "bot"}, "content"),
])
def test_v1_chat_validation(world, fields, field):
    r = anon(world, "POST", f"/v1/messages/chat/{world.main['api_token']}", data=fields)
    assert r.status_code == 400 and field in r.json()["errors"]


def test_v1_push_to_several_flows_with_comma_tokens(world):
    tokens = f"{world.main['api_token']},{world.side['api_token']}"
    r = anon(world, "POST", f"/v1/messages/chat/{tokens}",
             data={"content": "to both", "external_user_name": "bot"})
    assert r.status_code == 200
    for path in ("main", "side"):
        got = world.alice.get(f"/flows/acme/{path}/messages", params={"limit": 1}).json()
        assert got[-1]["content"] == "to both"


def test_v1_push_to_an_archived_flow_is_422(world):
    r = world.alice.post("/flows/acme", {"name": "Archive Me"})
    flow = r.json()
    listing = world.server.admin("list", "flows")
    token = next(line.split()[-1] for line in listing.splitlines() if "acme/archive-me" in line)
    assert world.alice.put("/flows/acme/archive-me", {"disabled": True}).status_code == 200
    r = anon(world, "POST", f"/v1/messages/chat/{token}",
             data={"content": "x", "external_user_name": "bot"})
    assert r.status_code == 422 and r.json()["message"] == "This flow is archived"
    assert world.alice.get("/flows/acme/archive-me/messages").json() == []
    assert flow["id"]


def test_v1_push_bad_token_is_404_and_posts_nothing(world):
    before = latest(world)["id"]
    for path in ("chat", "team_inbox"):
        r = anon(world, "POST", f"/v1/messages/{path}/{world.main['api_token']},wrong",
                 data={"content": "x", "external_user_name": "bot", "source": "s",
                       "from_address": "a@b.c", "subject": "s"})
        assert r.status_code == 404 and r.json()["message"]
    assert latest(world)["id"] == before


def test_activity_attachments_multipart(world, source):
    r = anon(world, "POST", "/messages", headers=WAIT, data={
        "flow_token": source["flow_token"], "event": "activity", "title": "screenshot",
        "author[name]": "Octo", "external_thread_id": "shot-1", "thread[title]": "Shots",
        "body": '<p>see <img src="cid:shot"></p>'},
        files={"attachments[shot]": ("shot.png", b"\x89PNG fake", "image/png"),
               "attachments[log]": ("build.log", b"log lines", "text/plain")})
    assert r.status_code in (200, 201), r.text
    m = r.json()
    assert ":file" in m["tags"]
    by_id = {a["content_id"]: a for a in m["attachments"]}
    assert set(by_id) == {"shot", "log"}
    assert by_id["shot"]["file_name"] == "shot.png" and by_id["shot"]["file_size"] == 9
    assert f'src="{by_id["shot"]["path"]}"' in m["body"]
    assert world.bob.get(by_id["log"]["path"]).content == b"log lines"
    assert world.carol.get(by_id["log"]["path"]).status_code == 404
    r = anon(world, "POST", "/messages", data={
        "flow_token": source["flow_token"], "event": "activity", "title": "mixed",
        "author[name]": "Octo", "external_thread_id": "shot-1"},
        files={"attachments[a]": ("a.txt", b"a"), "attachments[]": ("b.txt", b"b")})
    assert r.status_code == 400 and "attachments" in r.json()["errors"]


def test_integration_html_is_sanitized(world, source):
    m = anon(world, "POST", "/messages", headers=WAIT, json={
        "flow_token": source["flow_token"], "event": "activity",
        "title": '<b>bold</b> <a href="https://x.io" onclick="evil()">link</a>',
        "body": '<p onmouseover="evil()">ok</p><script>evil()</script>',
        "author": {"name": "Octo"}, "external_thread_id": "html-1",
        "thread": {"title": "<i>T</i> <a href='javascript:evil()'>x</a>",
                   "body": "<iframe src='x'></iframe><em>fine</em>",
                   "fields": [{"label": "l", "value": "<img src=x onerror=evil()><a href='/a'>a</a>"}]},
    }).json()
    assert m["title"] == 'bold <a href="https://x.io">link</a>'
    assert m["body"] == "<p>ok</p>"
    assert m["thread"]["title"] == "T <a>x</a>"
    assert m["thread"]["body"] == "<em>fine</em>"
    assert m["thread"]["fields"] == [{"label": "l", "value": '<a href="/a">a</a>'}]
