"""Authentication of the REST API (spec section 2) over a real server."""
import base64

import pytest
import requests


def raw(world, path, method="GET", **kw):
    kw.setdefault("timeout", 30)
    return requests.request(method, world.server.api + path, **kw)


def basic(user, password):
    return {"Authorization": "Basic " + base64.b64encode(
        f"{user}:{password}".encode()).decode()}


def assert_caller(r, user):
    assert r.status_code == 200, r.text
    assert r.headers["Flowdock-User"] == str(user.id)
    assert r.headers["Content-Type"] == "application/json; charset=utf-8"
    assert r.json()["id"] == user.id


def assert_401(r):
    assert r.status_code == 401, r.text
    assert r.headers["WWW-Authenticate"].startswith("Basic")
    assert r.headers["Content-Type"] == "application/json; charset=utf-8"
    assert isinstance(r.json()["message"], str) and r.json()["message"]
    assert "Flowdock-User" not in r.headers


def test_basic_email_and_password(world):
    assert_caller(raw(world, "/user", auth=(world.alice.email, "secret")), world.alice)


def test_basic_percent_encoded_email(world):
    assert_caller(raw(world, "/user", headers=basic("alice%40example.com", "secret")), world.alice)


@pytest.mark.parametrize("password", ["undefined", "", "DUMMY", "anything:with:colons"])
def test_basic_token_as_user_name_with_any_password(world, password):
    assert_caller(raw(world, "/user", headers=basic(world.bob.token, password)), world.bob)


def test_bearer_token(world):
    assert_caller(raw(world, "/user", headers={"Authorization": f"Bearer {world.bob.token}"}),
                  world.bob)


def test_access_token_parameter(world):
    assert_caller(raw(world, "/user", params={"access_token": world.bob.token}), world.bob)
    r = raw(world, "/messages", "POST", params={"access_token": world.bob.token},
            json={"flow": world.main["id"], "event": "message", "content": "via access_token"})
    assert r.status_code == 201 and r.json()["user"] == str(world.bob.id)


def test_password_containing_colon(world):
    user = world.server.create_user("dora", "acme", password="pa:ss:word")
    assert_caller(raw(world, "/user", auth=(user.email, "pa:ss:word")), user)
    assert_401(raw(world, "/user", auth=(user.email, "pa")))


@pytest.mark.parametrize("headers", [
    basic("alice@example.com", "wrong"),
    basic("nobody@example.com", "secret"),
    basic("not-a-token", "undefined"),
    {"Authorization": "Bearer not-a-token"},
    {"Authorization": "Basic %%%not-base64"},
    {"Authorization": "Basic " + base64.b64encode(b"\xff\xfe:x").decode()},
    {},
])
def test_bad_or_missing_credentials(world, headers):
    assert_401(raw(world, "/flows", headers=headers))


def test_bad_access_token(world):
    assert_401(raw(world, "/flows", params={"access_token": "nope"}))


def test_token_of_another_user_is_not_a_password(world):
    # a real email with someone's token as password is still email + password
    assert_401(raw(world, "/user", auth=(world.alice.email, world.bob.token)))


def test_changed_password_stops_the_cached_one(world):
    user = world.server.create_user("eve", "acme", password="first")
    assert_caller(raw(world, "/user", auth=(user.email, "first")), user)
    world.server.admin("set-password", user.email, "--password", "second")
    assert_401(raw(world, "/user", auth=(user.email, "first")))
    assert_caller(raw(world, "/user", auth=(user.email, "second")), user)


def test_flowdock_user_header_on_every_user_response(world):
    a = world.alice
    flow = world.main
    posted = a.say(flow, "header check")
    responses = [
        a.get("/flows"), a.get("/flows/all"), a.get("/organizations"), a.get("/users"),
        a.get(f"/flows/find?id={flow['id']}"), a.get("/flows/acme/main/messages"),
        a.post("/messages", {"flow": flow["id"], "event": "message", "content": "x"}),
        a.put(f"/flows/acme/main/messages/{posted['id']}", {"tags": ["t"]}),
        a.delete(f"/flows/acme/main/messages/{posted['id']}"),
        a.get("/private"), a.get("/sources"),
        # errors after authentication carry it too
        a.get("/flows/acme/nope"), a.post("/messages", {"flow": flow["id"], "event": "message"}),
    ]
    for r in responses:
        assert r.headers.get("Flowdock-User") == str(a.id), (r.request.method, r.url, r.status_code)
