"""The end-to-end path: post over REST, receive on the JSON stream and SSE."""


def test_post_reaches_stream_in_order(world):
    stream = world.bob.stream(world.main["id"])
    assert stream.status == 200
    sent = [world.alice.say(world.main, f"hello {i}") for i in range(5)]
    got = stream.events(5)
    assert [m["id"] for m in got] == [m["id"] for m in sent]
    assert [m["content"] for m in got] == [f"hello {i}" for i in range(5)]
    assert all(m["flow"] == world.main["id"] and m["user"] == str(world.alice.id) for m in got)
    stream.close()


def test_outsider_cannot_stream_or_post(world):
    assert world.carol.stream(world.main["id"]).status == 404
    r = world.carol.post("/messages", {"flow": world.main["id"], "event": "message", "content": "x"})
    assert r.status_code == 404
