"""The MessageStore contract, run against SqliteMessageStore and MongoMessageStore (a
real FerretDB started by tests/servers.py; a fresh database per test)."""
from __future__ import annotations

import uuid

import pytest
import pytest_twisted
from twisted.internet import defer

from flowtwist.store.mongo import MongoMessageStore
from flowtwist.store.sqlite import SqliteMessageStore


@pytest.fixture(params=["sqlite", "mongo"])
def make_store(request, tmp_path):
    """A function that makes (another) store on the same storage, as a second process
    would."""
    if request.param == "sqlite":
        path = str(tmp_path / "messages.sqlite3")
        return lambda: SqliteMessageStore(path)
    server = request.getfixturevalue("mongo_server")
    url = server.url.rstrip("/") + "/t" + uuid.uuid4().hex[:12]
    return lambda: MongoMessageStore(url)


@pytest_twisted.async_yield_fixture
async def store(make_store):
    s = make_store()
    await s.start()
    yield s
    await s.stop()


def msg(conversation="flow-a", content="hello", uuid_=None, event="message", **extra):
    doc = {"conversation": conversation, "event": event, "content": content,
           "uuid": uuid_ or uuid.uuid4().hex, "tags": [], "user": "1", "sent": 1000,
           "attachments": []}
    if not conversation.startswith("private:"):
        doc["flow"] = conversation
    doc.update(extra)
    return doc


@pytest_twisted.ensureDeferred
async def test_ids_per_conversation_and_seq_server_wide(store):
    results = await store.insert_many([msg("flow-a"), msg("flow-b"), msg("flow-a"),
                                       msg("private:1:2")])
    assert all(created for _, created in results)
    docs = [d for d, _ in results]
    assert [d["id"] for d in docs] == [1, 1, 2, 1]
    seqs = [d["seq"] for d in docs]
    assert seqs == sorted(seqs) and len(set(seqs)) == 4
    more = await store.insert_many([msg("flow-a")])
    assert more[0][0]["id"] == 3 and more[0][0]["seq"] > seqs[-1]
    assert await store.last_seq() == more[0][0]["seq"]


@pytest_twisted.ensureDeferred
async def test_dedupe_by_conversation_and_uuid(store):
    first = msg(uuid_="u1", content="first")
    [(stored, created)] = await store.insert_many([first])
    assert created
    again = await store.insert_many([msg(uuid_="u1", content="retry"), msg(uuid_="u2"),
                                     msg(uuid_="u2", content="twice in one batch")])
    assert again[0] == (stored, False) and again[0][0]["content"] == "first"
    assert again[1][1] is True and again[2][1] is False
    assert again[2][0]["id"] == again[1][0]["id"]
    # the same uuid in another conversation is another message
    [(other, created)] = await store.insert_many([msg("flow-b", uuid_="u1")])
    assert created and other["id"] == 1
    assert len(await store.query("flow-a")) == 2
    assert (await store.find_uuid("flow-a", "u1"))["content"] == "first"
    assert await store.find_uuid("flow-a", "nope") is None


@pytest_twisted.ensureDeferred
async def test_new_thread_gets_its_initial_message(store):
    doc = msg(thread_id="t1", thread={"id": "t1", "initial_message": None, "title": "x"})
    [_, (stored, _)] = await store.insert_many([msg(), doc])
    assert stored["thread"]["initial_message"] == stored["id"] == 2
    [(_, _), (second, _)] = await store.insert_many([
        msg(), msg(thread_id="t1", thread={"id": "t1", "initial_message": 1})])
    assert second["thread"]["initial_message"] == 1


@pytest_twisted.ensureDeferred
async def test_get_update_remove(store):
    [(doc, _)] = await store.insert_many([msg(content="Original", tags=["Foo"])])
    got = await store.get("flow-a", doc["id"])
    assert got == doc and got["seq"] == doc["seq"]
    assert await store.get("flow-a", 99) is None
    updated = await store.update("flow-a", doc["id"], {"content": "Edited words",
                                                       "tags": ["bar"], "edited": 5})
    assert updated["content"] == "Edited words" and updated["edited"] == 5
    assert (await store.get("flow-a", doc["id"]))["tags"] == ["bar"]
    # the indexed fields follow the edit
    assert [d["id"] for d in await store.query("flow-a", search=["edited"])] == [doc["id"]]
    assert await store.query("flow-a", search=["original"]) == []
    assert [d["id"] for d in await store.query("flow-a", tags=["BAR"])] == [doc["id"]]
    assert await store.query("flow-a", tags=["foo"]) == []
    assert await store.update("flow-a", 99, {"content": "x"}) is None
    assert await store.remove("flow-a", doc["id"]) is True
    assert await store.remove("flow-a", doc["id"]) is False
    assert await store.get("flow-a", doc["id"]) is None


@pytest_twisted.ensureDeferred
async def test_query_filters(store):
    docs = [
        msg(content="Deploy finished", tags=["Deploy", "ops"]),
        msg(content="lunch?", tags=["food"]),
        msg(event="comment", content={"title": "Build", "text": "Nice DEPLOY"},
            tags=["deploy"], thread_id="t1"),
        msg(event="status", content="away"),
        msg(content="deploy again", tags=["ops"], thread_id="t1"),
    ]
    await store.insert_many(docs)
    await store.insert_many([msg("flow-b", content="deploy elsewhere", tags=["ops"])])
    ids = lambda ds: [d["id"] for d in ds]
    assert ids(await store.query("flow-a")) == [1, 2, 3, 4, 5]
    assert ids(await store.query("flow-a", limit=2)) == [4, 5]
    assert ids(await store.query("flow-a", limit=2, newest_first=False)) == [1, 2]
    assert ids(await store.query("flow-a", limit=2, skip=1)) == [3, 4]
    assert ids(await store.query("flow-a", since_id=2, until_id=5)) == [3, 4]
    assert ids(await store.query("flow-a", events=["comment", "status"])) == [3, 4]
    assert ids(await store.query("flow-a", tags=["OPS", "deploy"])) == [1]
    assert ids(await store.query("flow-a", tags=["ops", "deploy"], tag_mode="or")) == [1, 3, 5]
    assert ids(await store.query("flow-a", search=["deploy"])) == [1, 3, 5]
    assert ids(await store.query("flow-a", search=["DEPLOY", "again"])) == [5]
    assert ids(await store.query("flow-a", search=["a.b"])) == []     # not a pattern
    assert ids(await store.query("flow-a", thread_id="t1")) == [3, 5]
    assert ids(await store.query("flow-a", events=["message"], tags=["ops"],
                                 limit=1)) == [5]


@pytest_twisted.ensureDeferred
async def test_after_seq(store):
    results = await store.insert_many([msg("flow-a"), msg("flow-b"), msg("flow-a"),
                                       msg("private:1:2")])
    docs = [d for d, _ in results]
    after = await store.after_seq(["flow-a", "private:1:2"], docs[0]["seq"])
    assert [(d["conversation"], d["id"]) for d in after] == [("flow-a", 2), ("private:1:2", 1)]
    assert [d["seq"] for d in after] == sorted(d["seq"] for d in after)
    assert len(await store.after_seq(["flow-a", "flow-b"], 0, limit=2)) == 2
    assert await store.after_seq([], 0) == []


@pytest_twisted.ensureDeferred
async def test_empty_store(store):
    assert await store.last_seq() == 0
    assert await store.query("flow-a") == []
    assert await store.get_thread("t") is None


@pytest_twisted.ensureDeferred
async def test_threads(store):
    def thread(id_, updated, flow="flow-a", **extra):
        return {"id": id_, "flow": flow, "title": id_, "_updated_ms": updated,
                "_empty": False, "updated_at": str(updated), **extra}
    await store.save_thread(thread("t1", 100))
    await store.save_thread(thread("t2", 300, _application="rss"))
    await store.save_thread(thread("t3", 200, _empty=True))
    await store.save_thread(thread("t4", 400, flow="flow-b"))
    await store.save_thread(thread("t5", 250, _source_key="src:1", _external_id="ext-9"))
    assert (await store.get_thread("t2"))["_application"] == "rss"
    await store.save_thread(thread("t1", 500, title="renamed"))       # replace
    assert (await store.get_thread("t1"))["title"] == "renamed"
    ids = lambda ts: [t["id"] for t in ts]
    assert ids(await store.list_threads("flow-a")) == ["t1", "t2", "t5"]
    assert ids(await store.list_threads("flow-a", include_empty=True)) == ["t1", "t2", "t5", "t3"]
    assert ids(await store.list_threads("flow-a", until=500)) == ["t2", "t5"]
    assert ids(await store.list_threads("flow-a", since=250)) == ["t1", "t2"]
    assert ids(await store.list_threads("flow-a", limit=1)) == ["t1"]
    assert ids(await store.list_threads("flow-a", application="rss")) == ["t2"]
    assert (await store.find_external_thread("src:1", "ext-9"))["id"] == "t5"
    assert await store.find_external_thread("src:1", "other") is None


@pytest_twisted.ensureDeferred
async def test_save_threads_inserts_new_and_replaces_existing(store):
    """A consumer batch saves its threads together: new ones and updated ones mixed."""
    def thread(id_, updated, **extra):
        return {"id": id_, "flow": "flow-a", "title": id_, "_updated_ms": updated,
                "_empty": False, **extra}
    await store.save_thread(thread("t1", 100))
    await store.save_threads([thread("t0", 50), thread("t1", 300, title="renamed"),
                              thread("t2", 200)])
    assert (await store.get_thread("t1"))["title"] == "renamed"
    assert [t["id"] for t in await store.list_threads("flow-a")] == ["t1", "t2", "t0"]
    await store.save_threads([thread("t0", 400, title="again"), thread("t2", 500)])
    assert (await store.get_thread("t0"))["title"] == "again"
    assert [t["id"] for t in await store.list_threads("flow-a")] == ["t2", "t0", "t1"]


@pytest_twisted.ensureDeferred
async def test_two_processes_share_ids_and_dedupe(make_store):
    """Two stores on the same database, as two flowtwist processes: ids and seqs stay
    unique, and one message posted through both (a redelivered queue item) is stored
    once, both answering with the same stored message."""
    a, b = make_store(), make_store()
    await a.start()
    await b.start()
    try:
        shared = [msg(uuid_=f"shared-{i}", content=f"s{i}") for i in range(20)]
        rounds = []
        for i in range(10):
            rounds.append(defer.ensureDeferred(_insert(a, [msg(), shared[2 * i], msg("flow-b")])))
            rounds.append(defer.ensureDeferred(_insert(b, [msg(), shared[2 * i], msg("flow-b"),
                                                           shared[2 * i + 1]])))
            rounds.append(defer.ensureDeferred(_insert(a, [shared[2 * i + 1]])))
        results = [r for batch in await defer.gatherResults(rounds) for r in batch]
        stored = await a.query("flow-a", limit=1000)
        assert len(stored) == 20 + 20       # 20 plain + 20 shared
        assert len({d["uuid"] for d in stored}) == 40
        ids = [d["id"] for d in stored]
        assert len(set(ids)) == len(ids)
        everything = await b.after_seq(["flow-a", "flow-b"], 0, limit=1000)
        seqs = [d["seq"] for d in everything]
        assert len(everything) == 60 and len(set(seqs)) == 60
        for doc, created in results:
            winner = await a.find_uuid("flow-a", doc["uuid"]) if doc["conversation"] == "flow-a" \
                else await a.find_uuid("flow-b", doc["uuid"])
            assert (doc["id"], doc["seq"]) == (winner["id"], winner["seq"])
        shared_created = [c for d, c in results if d["uuid"].startswith("shared-")]
        assert shared_created.count(True) == 20
    finally:
        await a.stop()
        await b.stop()


async def _insert(store, docs):
    return await store.insert_many([dict(d) for d in docs])


@pytest_twisted.ensureDeferred
async def test_data_survives_a_restart(make_store):
    first = make_store()
    await first.start()
    [(doc, _)] = await first.insert_many([msg(content="kept")])
    await first.save_thread({"id": "t1", "flow": "flow-a", "_updated_ms": 1})
    await first.stop()
    second = make_store()          # index set-up runs again: a no-op
    await second.start()
    try:
        assert await second.get("flow-a", doc["id"]) == doc
        assert (await second.get_thread("t1"))["flow"] == "flow-a"
        [(next_doc, _)] = await second.insert_many([msg()])
        assert next_doc["id"] == doc["id"] + 1 and next_doc["seq"] > doc["seq"]
    finally:
        await second.stop()
