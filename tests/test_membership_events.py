"""Membership changes are announced: `add_people`/`join` actions in the flow,
`flow-add`/`flow-remove` to the person concerned, and integration threads name their
source."""


def test_adding_people_is_announced(world, server):
    dave = server.create_user("dave", "acme")
    watcher = world.bob.stream(world.main["id"])
    daves = dave.stream({"user": "1"})
    assert daves.status == 200
    r = world.alice.post("/flows/acme/main/users", {"id": dave.id})
    assert r.status_code == 200, r.text
    action = watcher.events(1)[0]
    assert action["event"] == "action"
    assert action["content"] == {"type": "add_people", "description": "dave"}
    assert action["user"] == str(world.alice.id)
    added = daves.events(1)[0]
    assert added["event"] == "flow-add"
    assert added["content"]["id"] == world.main["id"]
    assert added["content"]["organization"]["parameterized_name"] == "acme"
    # Adding again changes nothing and announces nothing.
    assert world.alice.post("/flows/acme/main/users", {"id": dave.id}).status_code == 200
    assert watcher.quiet(0.5) == []

    r = world.alice.delete(f"/organizations/acme/users/{dave.id}")
    assert r.status_code == 204
    removed = daves.events(1)[0]
    assert removed == {**removed, "event": "flow-remove", "content": {"id": world.main["id"]}}
    assert dave.get(f"/flows/{world.main['path']}").status_code == 404
    watcher.close()
    daves.close()


def test_joining_an_organization_flow_is_a_join_action(world, server):
    erin = server.create_user("erin", "acme")
    watcher = world.alice.stream(world.side["id"])
    r = erin.put(f"/flows/{world.side['path']}", {"open": True})
    assert r.status_code == 200, r.text
    action = watcher.events(1)[0]
    assert action["event"] == "action" and action["content"]["type"] == "join"
    assert action["user"] == str(erin.id)
    watcher.close()


def test_integration_thread_names_its_source(world):
    r = world.alice.post(f"/flows/{world.main['path']}/sources", {"name": "CI"})
    token = r.json()["flow_token"]
    r = world.alice.post("/messages", {
        "flow_token": token, "event": "activity", "title": "Build 7 failed",
        "author": {"name": "CI bot"}, "external_thread_id": "build-7",
        "thread": {"title": "Build 7"}}, headers={"X-flowdock-wait-for-message": "true"})
    assert r.status_code == 201, r.text
    assert r.json()["thread"]["source"]["name"] == "CI"
