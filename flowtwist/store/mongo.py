"""The production message store: MongoDB through txmongo.

Collections (in the database named by the URL, default ``flowtwist``):

- ``messages``: one document per message.  The fields the queries need are top-level
  and indexed (conversation, id, seq, u = uuid, event, tags, thread_id, search);
  the message itself is kept as its JSON text in ``body``.  Messages are API-shaped
  and clients choose many of their keys (activity fields, external ids); JSON text
  keeps any key legal on every MongoDB-compatible server and is written to listeners
  as it is.
- ``counters``: high-water marks ``{_id: conversation | "$seq", n}`` kept when the
  newest message is removed, so its numbers are not handed out again.

Ids and seqs: the unique indexes on (conversation, id) and seq are the arbiter (see
`_allocate`): a process numbers from where it is, and a collision with another
process makes it re-read the maximum (ids) or move on (seqs) and retry.  Seqs are
clock-based, ``(milliseconds << 10) + n``: several processes consume the queue at once
(each its own conversations), and numbering from the clock keeps their seqs apart
and in about the order the messages were stored, with no shared counter.  A `$inc` counter would be the
textbook way, but FerretDB 1.24 (the server the tests use) applies `$inc`/
`findAndModify` as read-then-write and loses increments between connections; an
insert into a unique index is atomic on every MongoDB-compatible server.
- ``threads``: one document per thread (``_id`` = thread id).

Dedupe by conversation + uuid is a unique index; an insert that loses a race with
another process gets a duplicate-key error and returns the document that won.
Indexes are created at every start (creating an existing index is a no-op).

Search is a case-insensitive substring match on a lower-cased text field, which every
MongoDB-wire server the tests use (FerretDB) supports.
"""
from __future__ import annotations

import json
import random
import re
import time
from urllib.parse import urlparse

from pymongo.errors import (AutoReconnect, BulkWriteError, ConnectionFailure,
                            DuplicateKeyError)
from twisted.internet import defer
from twisted.logger import Logger
from txmongo import filter as qf
from txmongo.connection import ConnectionPool

from flowtwist.model import Unavailable, new_uuid
from flowtwist.store.sqlite import searchable_text

log = Logger()

SEQ = "$seq"
SEQ_SHIFT = 10          # a seq is (milliseconds << SEQ_SHIFT) + n
DUPLICATE = 11000


def database_name(url: str) -> str:
    name = urlparse(url if "://" in url else "mongodb://" + url).path.strip("/")
    return name or "flowtwist"


def _dumps(obj) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def _load(row) -> dict:
    doc = json.loads(row["body"])
    doc["seq"] = row["seq"]
    return doc


class MongoMessageStore:
    def __init__(self, url: str, reactor=None, *, timeout: float = 5.0, pool_size: int = 4):
        if reactor is None:
            from twisted.internet import reactor
        self._reactor = reactor
        self._url = url if "://" in url else "mongodb://" + url
        self._dbname = database_name(self._url)
        self._timeout = timeout
        self._pool_size = pool_size
        self._conn: ConnectionPool | None = None
        self._db = None
        self._next_id: dict[str, int] = {}      # where this process allocates next
        self._next_seq: int | None = None
        self._insert_lock = defer.DeferredLock()

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Connect and set up indexes.  While the server is down this logs and retries,
        so the process starts serving only with a store that can keep messages."""
        self._conn = ConnectionPool(self._url, pool_size=self._pool_size, retry_delay=0.5,
                                    max_delay=5.0)
        for factory in self._conn.getprotocols():
            factory.noisy = False
        self._db = self._conn[self._dbname]
        delay, attempt = 0.5, 0
        while True:
            attempt += 1
            try:
                for _ in range(20):
                    if any(c.instance for c in self._conn.getprotocols()):
                        break
                    await _sleep(self._reactor, 0.1)
                else:
                    raise ConnectionFailure("no connection")
                await self._ensure_indexes()
                break
            except (defer.TimeoutError, AutoReconnect, ConnectionFailure) as e:
                if attempt == 1 or attempt % 10 == 0:
                    log.warn("MongoDB at {url} not available ({e}); retrying in {d:.1f}s",
                             url=self._url, e=e, d=delay)
                await _sleep(self._reactor, delay)
                delay = min(delay * 2, 5.0)
        if attempt > 1:
            log.info("MongoDB at {url} connected", url=self._url)

    async def _ensure_indexes(self) -> None:
        m, t = self._db.messages, self._db.threads
        specs = [
            (m, [("conversation", 1), ("id", 1)], {"unique": True, "name": "conversation_id"}),
            (m, [("conversation", 1), ("u", 1)], {"unique": True, "name": "conversation_uuid"}),
            (m, [("seq", 1)], {"unique": True, "name": "seq"}),
            (m, [("conversation", 1), ("event", 1), ("id", 1)], {"name": "conversation_event"}),
            (m, [("conversation", 1), ("tags", 1), ("id", 1)], {"name": "conversation_tags"}),
            (m, [("conversation", 1), ("thread_id", 1), ("id", 1)], {"name": "conversation_thread"}),
            (t, [("flow", 1), ("updated_at", -1)], {"name": "flow_updated"}),
            (t, [("source_key", 1), ("external_id", 1)], {"name": "external"}),
        ]
        for coll, keys, options in specs:
            sort = qf.sort([pair for k, d in keys
                            for pair in (qf.ASCENDING(k) if d == 1 else qf.DESCENDING(k))])
            await _with_timeout(coll.create_index(sort, **options), 10.0, self._reactor)

    async def stop(self) -> None:
        if self._conn is not None:
            await self._conn.disconnect()
            self._conn = None

    # ------------------------------------------------------------ plumbing

    def _check(self) -> None:
        if self._conn is None or not any(c.instance for c in self._conn.getprotocols()):
            raise Unavailable("Message store unavailable, try again later")

    async def _run(self, d):
        """Await a txmongo Deferred; a lost or hung server becomes Unavailable."""
        try:
            return await _with_timeout(d, self._timeout, self._reactor)
        except (defer.TimeoutError, AutoReconnect, ConnectionFailure) as e:
            log.warn("MongoDB request failed: {e}", e=e)
            raise Unavailable("Message store unavailable, try again later") from e

    # ------------------------------------------------------------ messages

    def insert_many(self, docs):
        # One batch at a time per process: the allocation state is this process's.
        return self._insert_lock.run(
            lambda: defer.ensureDeferred(self._insert_many([dict(d) for d in docs])))

    async def _insert_many(self, docs):
        self._check()
        results: list = [None] * len(docs)
        batch_uuids: dict[tuple, int] = {}
        new: list[int] = []
        # Duplicates within the batch are settled here; duplicates of stored messages
        # by the unique index (an insert is cheap everywhere, while a query by uuid is
        # a collection scan on FerretDB 1.x, which pushes down only `_id` lookups).
        for i, doc in enumerate(docs):
            key = (doc["conversation"], doc.get("uuid"))
            if key[1] and key in batch_uuids:
                results[i] = ("same", batch_uuids[key])
            else:
                if key[1]:
                    batch_uuids[key] = i
                new.append(i)
        new.sort()
        starts_thread = {i for i in new if isinstance(docs[i].get("thread"), dict)
                         and docs[i]["thread"].get("initial_message") is None}
        for attempt in range(20):
            if not new:
                break
            await self._allocate([docs[i] for i in new])
            rows = []
            for i in new:
                if i in starts_thread:
                    docs[i]["thread"]["initial_message"] = docs[i]["id"]
                rows.append(self._row(docs[i]))
            failed = await self._insert_rows(rows)
            if failed:
                # Most often a seq that another process took in the same millisecond:
                # the same ids with seqs further on, before reading anything.
                self._next_seq = max(self._next_seq, _seq_floor()) + random.randint(
                    1, 1 << SEQ_SHIFT)
                again = [new[j] for j in sorted(failed)]
                for i in again:
                    docs[i]["seq"] = self._next_seq
                    self._next_seq += 1
                still = await self._insert_rows([self._row(docs[i]) for i in again])
                failed = {new.index(again[j]) for j in still}
            retry = []
            collided = []
            stored = await self._stored_uuids([docs[new[j]] for j in failed])
            for j, i in enumerate(new):
                if j not in failed:
                    results[i] = (docs[i], True)
                    continue
                doc = docs[i]
                winner = stored.get((doc["conversation"], doc.get("uuid")))
                if winner is not None:
                    results[i] = (winner, False)     # another process stored it first
                else:
                    # Another process took this id or seq: our numbers were stale.
                    collided.append(doc)
                    retry.append(i)
            if collided:
                await self._after_collision(collided)
            new = retry
        if new:
            raise RuntimeError(f"could not allocate ids for {len(new)} messages")
        for i, result in enumerate(results):
            if result[0] == "same":
                results[i] = (results[result[1]][0], False)
        return results

    async def _stored_uuids(self, docs) -> dict:
        """The stored messages with these docs' uuids, one query per conversation."""
        found: dict = {}
        by_conv: dict[str, list[str]] = {}
        for doc in docs:
            if doc.get("uuid"):
                by_conv.setdefault(doc["conversation"], []).append(doc["uuid"])
        for conv, uuids in by_conv.items():
            rows = await self._run(self._db.messages.find(
                {"conversation": conv, "u": {"$in": uuids}}))
            for row in rows:
                found[(conv, row["u"])] = _load(row)
        return found

    async def _after_collision(self, docs) -> None:
        """Some inserts hit the (conversation, id) or the seq index: re-read the
        highest id of a conversation whose id was taken; step past a taken seq."""
        id_taken = False
        for doc in docs:
            rows = await self._run(self._db.messages.find(
                {"conversation": doc["conversation"], "id": doc["id"]}, {"id": 1}, limit=1))
            if rows:
                self._next_id.pop(doc["conversation"], None)
                id_taken = True
        if not id_taken or len(docs) > 1:
            # a seq taken by another process numbering in the same millisecond
            self._next_seq = max(self._next_seq or 0, _seq_floor()) + random.randint(
                1, 1 << SEQ_SHIFT)

    async def _allocate(self, docs) -> None:
        """Give each doc the next id of its conversation and the next seq.

        The unique indexes on (conversation, id) and seq decide who owns a number:
        this process remembers where it is, and an insert that collides (another
        process wrote there) makes it read the current maximum and try again.  With
        one consumer per conversation at a time (the queue is partitioned by
        conversation) and seqs from the clock that costs nothing; servers that do
        not apply `$inc` atomically across connections (FerretDB 1.x loses updates
        under concurrency) still never hand out a number twice."""
        for conv in {doc["conversation"] for doc in docs}:
            if conv not in self._next_id:
                self._next_id[conv] = await self._highest(conv, "id",
                                                          {"conversation": conv}) + 1
        if self._next_seq is None:
            self._next_seq = await self._highest(SEQ, "seq", {}) + 1
        self._next_seq = max(self._next_seq, _seq_floor())
        for doc in docs:
            doc["id"] = self._next_id[doc["conversation"]]
            self._next_id[doc["conversation"]] += 1
            doc["seq"] = self._next_seq
            self._next_seq += 1

    async def _highest(self, counter: str, field: str, query: dict) -> int:
        """The largest number in use: the stored maximum, or the high-water mark kept
        when the newest message was removed (so that a number is never reused)."""
        rows = await self._run(self._db.messages.find(
            query, {field: 1}, limit=1, sort=qf.sort(qf.DESCENDING(field))))
        marks = await self._run(self._db.counters.find({"_id": counter}, limit=1))
        values = [0]
        if rows:
            values.append(int(rows[0][field]))
        if marks:
            values.append(int(marks[0]["n"]))
        return max(values)

    @staticmethod
    def _row(doc) -> dict:
        row = {"conversation": doc["conversation"], "id": doc["id"], "seq": doc["seq"],
               "u": doc.get("uuid") or "auto:" + new_uuid(), "event": doc["event"],
               "tags": [t.lower() for t in doc.get("tags", []) if isinstance(t, str)],
               "search": searchable_text(doc), "body": _dumps(doc)}
        if doc.get("thread_id") is not None:
            row["thread_id"] = doc["thread_id"]
        return row

    async def _insert_rows(self, rows) -> set[int]:
        """Insert; the positions that hit the uuid index (another process stored the
        same message first) come back, anything else is an error."""
        try:
            await self._run(self._db.messages.insert_many(rows, ordered=False))
            return set()
        except BulkWriteError as e:
            errors = e.details.get("writeErrors", [])
            if any(err.get("code") != DUPLICATE for err in errors):
                raise
            return {err["index"] for err in errors}
        except DuplicateKeyError:
            # a server that reports one duplicate without the bulk detail: one by one
            failed = set()
            for j, row in enumerate(rows):
                try:
                    await self._run(self._db.messages.insert_one(row))
                except DuplicateKeyError:
                    failed.add(j)
            return failed

    async def _find_one(self, query):
        self._check()
        rows = await self._run(self._db.messages.find(query, limit=1))
        return _load(rows[0]) if rows else None

    def get(self, conversation, message_id):
        return defer.ensureDeferred(self._find_one(
            {"conversation": conversation, "id": int(message_id)}))

    def find_uuid(self, conversation, uuid):
        return defer.ensureDeferred(self._find_one({"conversation": conversation, "u": uuid}))

    def update(self, conversation, message_id, changes):
        return defer.ensureDeferred(self._update(conversation, int(message_id), changes))

    async def _update(self, conversation, message_id, changes):
        doc = await self._find_one({"conversation": conversation, "id": message_id})
        if doc is None:
            return None
        doc.update(changes)
        row = self._row(doc)
        update: dict = {"$set": {k: row[k] for k in ("event", "tags", "search", "body")}}
        if "thread_id" in row:
            update["$set"]["thread_id"] = row["thread_id"]
        else:
            update["$unset"] = {"thread_id": ""}
        await self._run(self._db.messages.update_one(
            {"conversation": conversation, "id": message_id}, update))
        return doc

    def remove(self, conversation, message_id):
        async def remove():
            self._check()
            query = {"conversation": conversation, "id": int(message_id)}
            rows = await self._run(self._db.messages.find(query, {"seq": 1}, limit=1))
            if not rows:
                return False
            # Keep the high-water marks, so the numbers of a removed newest message
            # are never handed out again.
            for key, n in ((conversation, int(message_id)), (SEQ, int(rows[0]["seq"]))):
                await self._run(self._db.counters.update_one(
                    {"_id": key}, {"$max": {"n": n}}, upsert=True))
            result = await self._run(self._db.messages.delete_one(query))
            return result.deleted_count > 0
        return defer.ensureDeferred(remove())

    def query(self, conversation, *, events=None, limit=30, newest_first=True,
              since_id=None, until_id=None, tags=None, tag_mode="and", search=None,
              skip=0, thread_id=None):
        spec: dict = {"conversation": conversation}
        if events:
            spec["event"] = {"$in": list(events)}
        if thread_id is not None:
            spec["thread_id"] = thread_id
        clauses = []
        if search:
            clauses += [{"search": {"$regex": re.escape(w.lower())}} for w in search]
        else:
            ids = {}
            if since_id is not None:
                ids["$gt"] = int(since_id)
            if until_id is not None:
                ids["$lt"] = int(until_id)
            if ids:
                spec["id"] = ids
        if tags:
            lowered = [t.lower() for t in tags]
            spec["tags"] = {"$in": lowered} if tag_mode == "or" else {"$all": lowered}
        if clauses:
            spec["$and"] = clauses
        order = qf.sort(qf.DESCENDING("id") if newest_first else qf.ASCENDING("id"))

        async def run():
            self._check()
            rows = await self._run(self._db.messages.find(
                spec, skip=int(skip), limit=int(limit), sort=order))
            docs = [_load(r) for r in rows]
            docs.sort(key=lambda d: d["id"])
            return docs
        return defer.ensureDeferred(run())

    def after_seq(self, conversations, seq, limit=1000):
        conversations = list(conversations)

        async def run():
            if not conversations:
                return []
            self._check()
            rows = await self._run(self._db.messages.find(
                {"conversation": {"$in": conversations}, "seq": {"$gt": int(seq)}},
                limit=int(limit), sort=qf.sort(qf.ASCENDING("seq"))))
            return [_load(r) for r in rows]
        return defer.ensureDeferred(run())

    def last_seq(self):
        async def run():
            self._check()
            rows = await self._run(self._db.messages.find(
                {}, {"seq": 1}, limit=1, sort=qf.sort(qf.DESCENDING("seq"))))
            return int(rows[0]["seq"]) if rows else 0
        return defer.ensureDeferred(run())

    # ------------------------------------------------------------ threads

    @staticmethod
    def _thread_row(thread) -> dict:
        return {"_id": thread["id"], "flow": thread.get("flow"),
                "source_key": thread.get("_source_key"),
                "external_id": thread.get("_external_id"),
                "updated_at": thread.get("_updated_ms", 0),
                "application": thread.get("_application"),
                "empty": bool(thread.get("_empty")), "body": _dumps(thread)}

    def save_thread(self, thread):
        return self.save_threads([thread])

    def save_threads(self, threads):
        """Insert or replace threads: one bulk insert (most are threads a message has
        just started; an insert is cheap everywhere, while an upsert scans the
        collection on FerretDB 1.x with SQLite), then a replace for each that exists."""
        rows = [self._thread_row(t) for t in threads]

        async def save():
            self._check()
            if not rows:
                return
            try:
                await self._run(self._db.threads.insert_many(rows, ordered=False))
                return
            except BulkWriteError as e:
                errors = e.details.get("writeErrors", [])
                if any(err.get("code") != DUPLICATE for err in errors):
                    raise
                existing = [rows[err["index"]] for err in errors]
            except DuplicateKeyError:
                existing = rows          # no detail: replacing all is idempotent
            try:
                await defer.gatherResults([
                    defer.ensureDeferred(self._run(self._db.threads.replace_one(
                        {"_id": row["_id"]}, {k: v for k, v in row.items() if k != "_id"},
                        upsert=True)))
                    for row in existing], consumeErrors=True)
            except defer.FirstError as e:
                e.subFailure.raiseException()
        return defer.ensureDeferred(save())

    async def _thread(self, query):
        self._check()
        rows = await self._run(self._db.threads.find(query, limit=1))
        return json.loads(rows[0]["body"]) if rows else None

    def get_thread(self, thread_id):
        return defer.ensureDeferred(self._thread({"_id": thread_id}))

    def find_external_thread(self, source_key, external_id):
        return defer.ensureDeferred(self._thread(
            {"source_key": source_key, "external_id": external_id}))

    def list_threads(self, flow_id, *, until=None, since=None, limit=30,
                     application=None, include_empty=False):
        spec: dict = {"flow": flow_id}
        updated = {}
        if until is not None:
            updated["$lt"] = until
        if since is not None:
            updated["$gt"] = since
        if updated:
            spec["updated_at"] = updated
        if application is not None:
            spec["application"] = application
        if not include_empty:
            spec["empty"] = False

        async def run():
            self._check()
            rows = await self._run(self._db.threads.find(
                spec, limit=int(limit), sort=qf.sort(qf.DESCENDING("updated_at"))))
            return [json.loads(r["body"]) for r in rows]
        return defer.ensureDeferred(run())


def _seq_floor() -> int:
    return int(time.time() * 1000) << SEQ_SHIFT


def _with_timeout(d, seconds, reactor):
    d = defer.ensureDeferred(d) if not isinstance(d, defer.Deferred) else d
    return d.addTimeout(seconds, reactor)


def _sleep(reactor, seconds):
    d = defer.Deferred()
    reactor.callLater(seconds, d.callback, None)
    return d
