"""The embedded stores: messages and the directory in SQLite files.

SQLite calls block, so each database is owned by one worker thread with one
connection; the reactor thread only ever waits on Deferreds.
"""
from __future__ import annotations

import json
import os
import sqlite3
from typing import Any, Callable

import attrs
from twisted.internet import threads
from twisted.python.threadpool import ThreadPool

from flowtwist.model import (Flow, FlowMember, Invitation, Organization, Source,
                             User, new_token, new_uuid, now_ms, parameterize)


class SqliteWorker:
    """One connection used from one dedicated thread."""

    def __init__(self, path: str, schema: str, reactor=None):
        if reactor is None:
            from twisted.internet import reactor
        self._reactor = reactor
        self._path = path
        self._schema = schema
        self._pool = ThreadPool(1, 1, name=f"sqlite:{os.path.basename(path)}")
        self._conn: sqlite3.Connection | None = None

    def start(self):
        self._pool.start()
        return self.run(self._open)

    def _open(self, _conn):
        if self._path != ":memory:":
            os.makedirs(os.path.dirname(os.path.abspath(self._path)), exist_ok=True)
        conn = sqlite3.connect(self._path, check_same_thread=False, isolation_level=None)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.executescript(self._schema)
        self._conn = conn

    def run(self, fn: Callable, *args, **kwargs):
        """Run fn(connection, *args) on the worker thread; a Deferred of its result."""
        return threads.deferToThreadPool(
            self._reactor, self._pool, lambda: fn(self._conn, *args, **kwargs))

    def transaction(self, fn: Callable, *args, **kwargs):
        def in_transaction(conn, *a, **kw):
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = fn(conn, *a, **kw)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            return result
        return self.run(in_transaction, *args, **kwargs)

    async def stop(self):
        if self._conn is not None:
            await self.run(lambda conn: conn.close())
            self._conn = None
        self._pool.stop()


# ---------------------------------------------------------------- message store

MESSAGE_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    seq INTEGER PRIMARY KEY,
    conversation TEXT NOT NULL,
    id INTEGER NOT NULL,
    uuid TEXT,
    event TEXT NOT NULL,
    thread_id TEXT,
    tags TEXT NOT NULL DEFAULT '[]',
    search_text TEXT NOT NULL DEFAULT '',
    doc TEXT NOT NULL,
    UNIQUE (conversation, id)
);
CREATE UNIQUE INDEX IF NOT EXISTS messages_uuid ON messages (conversation, uuid);
CREATE INDEX IF NOT EXISTS messages_thread ON messages (conversation, thread_id, id);
CREATE TABLE IF NOT EXISTS counters (conversation TEXT PRIMARY KEY, last_id INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS threads (
    id TEXT PRIMARY KEY,
    flow TEXT,
    source_key TEXT,
    external_id TEXT,
    updated_at INTEGER NOT NULL,
    application TEXT,
    empty INTEGER NOT NULL DEFAULT 0,
    doc TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS threads_flow ON threads (flow, updated_at);
CREATE UNIQUE INDEX IF NOT EXISTS threads_external ON threads (source_key, external_id);
"""


def searchable_text(doc) -> str:
    """What `search=` matches: the message text, or the text fields of its content."""
    content = doc.get("content")
    parts = []
    if isinstance(content, str):
        parts.append(content)
    elif isinstance(content, dict):
        parts.extend(str(v) for v in content.values() if isinstance(v, (str, int)))
    for key in ("title", "body"):
        if isinstance(doc.get(key), str):
            parts.append(doc[key])
    return "\n".join(parts).lower()


class SqliteMessageStore:
    def __init__(self, path: str, reactor=None):
        self._db = SqliteWorker(path, MESSAGE_SCHEMA, reactor)

    def start(self):
        return self._db.start()

    def stop(self):
        from twisted.internet import defer
        return defer.ensureDeferred(self._db.stop())

    def insert_many(self, docs):
        return self._db.transaction(self._insert_many, [dict(d) for d in docs])

    @staticmethod
    def _insert_many(conn, docs):
        """Dedupe, number and insert a batch with a handful of statements: one uuid
        lookup and one counter update per conversation, one executemany for the rows
        (every statement costs the reactor thread a GIL hand-off)."""
        by_conv: dict[str, list] = {}
        for doc in docs:
            by_conv.setdefault(doc["conversation"], []).append(doc)
        existing: dict[tuple, Any] = {}
        for conv, group in by_conv.items():
            uuids = list({d["uuid"] for d in group if d.get("uuid")})
            for i in range(0, len(uuids), 500):
                chunk = uuids[i:i + 500]
                for row in conn.execute(
                        "SELECT doc, seq, uuid FROM messages WHERE conversation=? AND uuid IN "
                        f"({','.join('?' * len(chunk))})", (conv, *chunk)):
                    existing[(conv, row[2])] = row
        results: list = []
        fresh: list = []            # (index in results, doc), in batch order
        first: dict[tuple, int] = {}     # uuid -> index of its new doc in this batch
        counts: dict[str, int] = {}
        for doc in docs:
            conv, uuid = doc["conversation"], doc.get("uuid")
            if uuid:
                row = existing.get((conv, uuid))
                if row is not None:
                    results.append((_load(row), False))
                    continue
                if (conv, uuid) in first:        # twice in one batch: the first wins
                    results.append(first[(conv, uuid)])      # resolved below
                    continue
                first[(conv, uuid)] = len(results)
            counts[conv] = counts.get(conv, 0) + 1
            fresh.append((len(results), doc))
            results.append(None)
        if not fresh:
            return results
        next_id = {}
        for conv, n in counts.items():
            (last,) = conn.execute(
                "INSERT INTO counters VALUES (?, ?) ON CONFLICT(conversation) "
                "DO UPDATE SET last_id = last_id + excluded.last_id RETURNING last_id",
                (conv, n)).fetchone()
            next_id[conv] = last - n + 1
        # seq is the rowid SQLite would pick (max + 1), given here so that one
        # executemany stores the batch; the transaction holds the write lock.
        (seq,) = conn.execute("SELECT coalesce(max(seq), 0) FROM messages").fetchone()
        rows = []
        for index, doc in fresh:
            conv = doc["conversation"]
            doc["id"] = next_id[conv]
            next_id[conv] += 1
            thread = doc.get("thread")
            if isinstance(thread, dict) and thread.get("initial_message") is None:
                thread["initial_message"] = doc["id"]
            # The stored JSON has no "seq": _load takes it from the row.
            doc.pop("seq", None)
            seq += 1
            rows.append((seq, conv, doc["id"], doc.get("uuid"), doc["event"],
                         doc.get("thread_id"),
                         json.dumps([t.lower() for t in doc.get("tags", [])]),
                         searchable_text(doc), json.dumps(doc, separators=(",", ":"))))
            doc["seq"] = seq
            results[index] = (doc, True)
        conn.executemany(
            "INSERT INTO messages (seq, conversation, id, uuid, event, thread_id, tags,"
            " search_text, doc) VALUES (?,?,?,?,?,?,?,?,?)", rows)
        # A duplicate later in the batch answers with its first copy, as stored.
        for i, result in enumerate(results):
            if isinstance(result, int):
                results[i] = (dict(results[result][0]), False)
        return results

    def get(self, conversation, message_id):
        return self._db.run(_one, "SELECT doc, seq FROM messages WHERE conversation=? AND id=?",
                            (conversation, int(message_id)))

    def find_uuid(self, conversation, uuid):
        return self._db.run(_one, "SELECT doc, seq FROM messages WHERE conversation=? AND uuid=?",
                            (conversation, uuid))

    def update(self, conversation, message_id, changes):
        return self._db.transaction(self._update, conversation, int(message_id), changes)

    @staticmethod
    def _update(conn, conversation, message_id, changes):
        doc = _one(conn, "SELECT doc, seq FROM messages WHERE conversation=? AND id=?",
                   (conversation, message_id))
        if doc is None:
            return None
        doc.update(changes)
        conn.execute(
            "UPDATE messages SET doc=?, tags=?, search_text=?, thread_id=? WHERE seq=?",
            (json.dumps(doc, separators=(",", ":")),
             json.dumps([t.lower() for t in doc.get("tags", [])]),
             searchable_text(doc), doc.get("thread_id"), doc["seq"]))
        return doc

    def remove(self, conversation, message_id):
        def remove(conn):
            cur = conn.execute("DELETE FROM messages WHERE conversation=? AND id=?",
                               (conversation, int(message_id)))
            return cur.rowcount > 0
        return self._db.transaction(remove)

    def query(self, conversation, *, events=None, limit=30, newest_first=True,
              since_id=None, until_id=None, tags=None, tag_mode="and", search=None,
              skip=0, thread_id=None):
        where = ["conversation = ?"]
        args: list[Any] = [conversation]
        if events:
            where.append("event IN (%s)" % ",".join("?" * len(events)))
            args.extend(events)
        if thread_id is not None:
            where.append("thread_id = ?")
            args.append(thread_id)
        if search:
            for word in search:
                where.append("instr(search_text, ?) > 0")
                args.append(word.lower())
        else:
            if since_id is not None:
                where.append("id > ?")
                args.append(int(since_id))
            if until_id is not None:
                where.append("id < ?")
                args.append(int(until_id))
        if tags:
            clauses = ["EXISTS (SELECT 1 FROM json_each(messages.tags) WHERE value = ?)"] * len(tags)
            where.append("(" + (" OR " if tag_mode == "or" else " AND ").join(clauses) + ")")
            args.extend(t.lower() for t in tags)
        order = "DESC" if newest_first else "ASC"
        sql = (f"SELECT doc, seq FROM messages WHERE {' AND '.join(where)} "
               f"ORDER BY id {order} LIMIT ? OFFSET ?")
        args.extend([int(limit), int(skip)])

        def run(conn):
            docs = [_load(r) for r in conn.execute(sql, args)]
            docs.sort(key=lambda d: d["id"])
            return docs
        return self._db.run(run)

    def after_seq(self, conversations, seq, limit=1000):
        conversations = list(conversations)
        if not conversations:
            from twisted.internet import defer
            return defer.succeed([])
        sql = ("SELECT doc, seq FROM messages WHERE seq > ? AND conversation IN (%s) "
               "ORDER BY seq LIMIT ?" % ",".join("?" * len(conversations)))
        return self._db.run(lambda conn: [
            _load(r) for r in conn.execute(sql, [int(seq), *conversations, int(limit)])])

    def last_seq(self):
        return self._db.run(lambda conn: conn.execute(
            "SELECT COALESCE(MAX(seq), 0) FROM messages").fetchone()[0])

    # threads
    def save_thread(self, thread):
        return self._db.run(_save_threads, [thread])

    def save_threads(self, threads):
        """Several threads in one transaction (the consumer saves a batch's at once)."""
        return self._db.transaction(_save_threads, list(threads))

    def get_thread(self, thread_id):
        return self._db.run(_one_thread, "SELECT doc FROM threads WHERE id=?", (thread_id,))

    def find_external_thread(self, source_key, external_id):
        return self._db.run(_one_thread,
                            "SELECT doc FROM threads WHERE source_key=? AND external_id=?",
                            (source_key, external_id))

    def list_threads(self, flow_id, *, until=None, since=None, limit=30,
                     application=None, include_empty=False):
        where, args = ["flow = ?"], [flow_id]
        if until is not None:
            where.append("updated_at < ?")
            args.append(until)
        if since is not None:
            where.append("updated_at > ?")
            args.append(since)
        if application is not None:
            where.append("application = ?")
            args.append(application)
        if not include_empty:
            where.append("empty = 0")
        sql = (f"SELECT doc FROM threads WHERE {' AND '.join(where)} "
               "ORDER BY updated_at DESC LIMIT ?")
        args.append(int(limit))
        return self._db.run(lambda conn: [json.loads(r[0]) for r in conn.execute(sql, args)])


def _save_threads(conn, threads):
    conn.executemany(
        "INSERT OR REPLACE INTO threads (id, flow, source_key, external_id,"
        " updated_at, application, empty, doc) VALUES (?,?,?,?,?,?,?,?)",
        [(thread["id"], thread.get("flow"), thread.get("_source_key"),
          thread.get("_external_id"), thread.get("_updated_ms", 0),
          thread.get("_application"), int(bool(thread.get("_empty"))),
          json.dumps(thread)) for thread in threads])


def _load(row):
    doc = json.loads(row[0])
    doc["seq"] = row[1]
    return doc


def _one(conn, sql, args):
    row = conn.execute(sql, args).fetchone()
    return _load(row) if row else None


def _one_thread(conn, sql, args):
    row = conn.execute(sql, args).fetchone()
    return json.loads(row[0]) if row else None


# ---------------------------------------------------------------- directory

DIRECTORY_SCHEMA = """
CREATE TABLE IF NOT EXISTS organizations (
    id INTEGER PRIMARY KEY, name TEXT NOT NULL, parameterized_name TEXT NOT NULL UNIQUE,
    user_limit INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS users (
    id INTEGER PRIMARY KEY, email TEXT NOT NULL UNIQUE COLLATE NOCASE, nick TEXT NOT NULL,
    name TEXT NOT NULL, password_hash TEXT NOT NULL, api_token TEXT NOT NULL UNIQUE,
    avatar TEXT NOT NULL DEFAULT '', website TEXT NOT NULL DEFAULT '',
    disabled INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS org_members (
    org_id INTEGER NOT NULL REFERENCES organizations(id), user_id INTEGER NOT NULL REFERENCES users(id),
    admin INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (org_id, user_id));
CREATE TABLE IF NOT EXISTS flows (
    id TEXT PRIMARY KEY, organization_id INTEGER NOT NULL REFERENCES organizations(id),
    name TEXT NOT NULL, parameterized_name TEXT NOT NULL, access_mode TEXT NOT NULL,
    api_token TEXT NOT NULL UNIQUE, disabled INTEGER NOT NULL DEFAULT 0,
    description TEXT NOT NULL DEFAULT '',
    UNIQUE (organization_id, parameterized_name));
CREATE TABLE IF NOT EXISTS flow_members (
    flow_id TEXT NOT NULL REFERENCES flows(id), user_id INTEGER NOT NULL REFERENCES users(id),
    disabled INTEGER NOT NULL DEFAULT 0, status TEXT, last_activity INTEGER NOT NULL DEFAULT 0,
    open INTEGER NOT NULL DEFAULT 1, PRIMARY KEY (flow_id, user_id));
CREATE TABLE IF NOT EXISTS private_state (
    user_id INTEGER NOT NULL, other_id INTEGER NOT NULL, open INTEGER NOT NULL,
    PRIMARY KEY (user_id, other_id));
CREATE TABLE IF NOT EXISTS sources (
    id INTEGER PRIMARY KEY, flow_id TEXT NOT NULL, name TEXT NOT NULL,
    flow_token TEXT NOT NULL UNIQUE, creator_id INTEGER, external_url TEXT NOT NULL DEFAULT '',
    error_message TEXT NOT NULL DEFAULT '', configuration_url TEXT NOT NULL DEFAULT '',
    created_at INTEGER NOT NULL, updated_at INTEGER NOT NULL, deleted INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS invitations (
    id INTEGER PRIMARY KEY, flow_id TEXT NOT NULL, email TEXT NOT NULL COLLATE NOCASE,
    state TEXT NOT NULL DEFAULT 'pending', message TEXT NOT NULL DEFAULT '',
    UNIQUE (flow_id, email));
CREATE TABLE IF NOT EXISTS settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS feeds (
    id INTEGER PRIMARY KEY, flow_id TEXT NOT NULL, kind TEXT NOT NULL, target TEXT NOT NULL,
    creator_id INTEGER, created_at INTEGER NOT NULL, announced INTEGER NOT NULL DEFAULT 1,
    removed INTEGER NOT NULL DEFAULT 0, state TEXT NOT NULL DEFAULT '{}',
    UNIQUE (flow_id, kind, target));
"""


def _record(cls, row):
    if row is None:
        return None
    values = dict(row)
    for field in attrs.fields(cls):
        if field.type in ("bool", bool) and field.name in values:
            values[field.name] = bool(values[field.name])
    return cls(**{f.name: values[f.name] for f in attrs.fields(cls) if f.name in values})


class SqliteDirectory:
    USER_FIELDS = {"nick", "email", "name", "avatar", "website", "password_hash", "disabled"}
    FLOW_FIELDS = {"name", "parameterized_name", "access_mode", "disabled", "description"}
    MEMBER_FIELDS = {"disabled", "status", "last_activity", "open"}
    SOURCE_FIELDS = {"name", "external_url", "error_message", "configuration_url"}

    def __init__(self, path: str, reactor=None):
        self._db = SqliteWorker(path, DIRECTORY_SCHEMA, reactor)

    def start(self):
        return self._db.start()

    def stop(self):
        from twisted.internet import defer
        return defer.ensureDeferred(self._db.stop())

    def _one(self, cls, sql, *args):
        return self._db.run(lambda c: _record(cls, c.execute(sql, args).fetchone()))

    def _all(self, cls, sql, *args):
        return self._db.run(lambda c: [_record(cls, r) for r in c.execute(sql, args)])

    def _write(self, sql, *args):
        return self._db.transaction(lambda c: c.execute(sql, args).rowcount)

    # organizations
    def create_organization(self, name, parameterized_name=None):
        pname = parameterized_name or parameterize(name)

        def create(c):
            cur = c.execute("INSERT INTO organizations (name, parameterized_name) VALUES (?,?)",
                            (name, pname))
            return Organization(id=cur.lastrowid, name=name, parameterized_name=pname)
        return self._db.transaction(create)

    def get_organization(self, org_id):
        return self._one(Organization, "SELECT * FROM organizations WHERE id=?", int(org_id))

    def organization_by_name(self, parameterized_name):
        return self._one(Organization, "SELECT * FROM organizations WHERE parameterized_name=?",
                         parameterized_name)

    def organizations(self):
        return self._all(Organization, "SELECT * FROM organizations ORDER BY id")

    def rename_organization(self, org_id, name):
        def rename(c):
            c.execute("UPDATE organizations SET name=? WHERE id=?", (name, org_id))
            return _record(Organization, c.execute(
                "SELECT * FROM organizations WHERE id=?", (org_id,)).fetchone())
        return self._db.transaction(rename)

    def organizations_of(self, user_id):
        return self._all(Organization,
                         "SELECT o.* FROM organizations o JOIN org_members m ON m.org_id=o.id "
                         "WHERE m.user_id=? ORDER BY o.id", int(user_id))

    def add_org_member(self, org_id, user_id, admin=False):
        return self._write("INSERT INTO org_members VALUES (?,?,?) ON CONFLICT(org_id, user_id) "
                           "DO UPDATE SET admin=excluded.admin", int(org_id), int(user_id),
                           int(admin))

    def remove_org_member(self, org_id, user_id):
        def remove(c):
            c.execute("DELETE FROM flow_members WHERE user_id=? AND flow_id IN "
                      "(SELECT id FROM flows WHERE organization_id=?)", (user_id, org_id))
            c.execute("DELETE FROM org_members WHERE org_id=? AND user_id=?", (org_id, user_id))
        return self._db.transaction(remove)

    def org_members(self, org_id):
        return self._db.run(lambda c: [
            (_record(User, r), bool(r["admin"])) for r in c.execute(
                "SELECT u.*, m.admin FROM users u JOIN org_members m ON m.user_id=u.id "
                "WHERE m.org_id=? ORDER BY u.id", (int(org_id),))])

    # users
    def create_user(self, email, nick, name, password_hash):
        def create(c):
            token = new_token()
            cur = c.execute("INSERT INTO users (email, nick, name, password_hash, api_token) "
                            "VALUES (?,?,?,?,?)", (email, nick, name, password_hash, token))
            return User(id=cur.lastrowid, email=email, nick=nick, name=name,
                        password_hash=password_hash, api_token=token)
        return self._db.transaction(create)

    def get_user(self, user_id):
        return self._one(User, "SELECT * FROM users WHERE id=?", int(user_id))

    def user_by_email(self, email):
        return self._one(User, "SELECT * FROM users WHERE email=?", email)

    def user_by_token(self, token):
        return self._one(User, "SELECT * FROM users WHERE api_token=?", token)

    def users(self):
        return self._all(User, "SELECT * FROM users ORDER BY id")

    def update_user(self, user_id, **fields):
        return self._update("users", User, self.USER_FIELDS, "id=?", (int(user_id),), fields)

    def _update(self, table, cls, allowed, where, keys, fields):
        unknown = set(fields) - allowed
        if unknown:
            raise ValueError(f"cannot set {sorted(unknown)} on {table}")

        def update(c):
            if fields:
                sets = ", ".join(f"{k}=?" for k in fields)
                c.execute(f"UPDATE {table} SET {sets} WHERE {where}",
                          (*[int(v) if isinstance(v, bool) else v for v in fields.values()],
                           *keys))
            if cls is not None:
                return _record(cls, c.execute(f"SELECT * FROM {table} WHERE {where}",
                                              keys).fetchone())
        return self._db.transaction(update)

    # flows
    def create_flow(self, org_id, name, access_mode="organization"):
        def create(c):
            flow = Flow(id=new_uuid(), organization_id=int(org_id), name=name,
                        parameterized_name=parameterize(name), access_mode=access_mode,
                        api_token=new_token())
            c.execute("INSERT INTO flows (id, organization_id, name, parameterized_name,"
                      " access_mode, api_token) VALUES (?,?,?,?,?,?)",
                      (flow.id, flow.organization_id, flow.name, flow.parameterized_name,
                       flow.access_mode, flow.api_token))
            return flow
        return self._db.transaction(create)

    def get_flow(self, flow_id):
        return self._one(Flow, "SELECT * FROM flows WHERE id=?", str(flow_id))

    def flow_by_name(self, org_name, flow_name):
        return self._one(Flow, "SELECT f.* FROM flows f JOIN organizations o "
                               "ON o.id=f.organization_id WHERE o.parameterized_name=? "
                               "AND f.parameterized_name=?", org_name, flow_name)

    def flow_by_token(self, api_token):
        return self._one(Flow, "SELECT * FROM flows WHERE api_token=?", api_token)

    def flows_of_org(self, org_id):
        return self._all(Flow, "SELECT * FROM flows WHERE organization_id=? ORDER BY name",
                         int(org_id))

    def update_flow(self, flow_id, **fields):
        return self._update("flows", Flow, self.FLOW_FIELDS, "id=?", (flow_id,), fields)

    # memberships
    def add_flow_member(self, flow_id, user_id):
        return self._write("INSERT INTO flow_members (flow_id, user_id) VALUES (?,?) "
                           "ON CONFLICT DO NOTHING", flow_id, int(user_id))

    def remove_flow_member(self, flow_id, user_id):
        return self._write("DELETE FROM flow_members WHERE flow_id=? AND user_id=?",
                           flow_id, int(user_id))

    def flow_members(self, flow_id):
        def members(c):
            rows = c.execute("SELECT u.*, m.flow_id, m.user_id, m.disabled AS m_disabled,"
                             " m.status, m.last_activity, m.open FROM users u JOIN flow_members m"
                             " ON m.user_id=u.id WHERE m.flow_id=? ORDER BY u.id", (flow_id,))
            out = []
            for r in rows:
                member = FlowMember(flow_id=r["flow_id"], user_id=r["user_id"],
                                    disabled=bool(r["m_disabled"]), status=r["status"],
                                    last_activity=r["last_activity"], open=bool(r["open"]))
                out.append((_record(User, r), member))
            return out
        return self._db.run(members)

    def memberships_of(self, user_id):
        return self._all(FlowMember, "SELECT * FROM flow_members WHERE user_id=?", int(user_id))

    def get_membership(self, flow_id, user_id):
        return self._one(FlowMember, "SELECT * FROM flow_members WHERE flow_id=? AND user_id=?",
                         flow_id, int(user_id))

    def update_membership(self, flow_id, user_id, **fields):
        return self._update("flow_members", None, self.MEMBER_FIELDS,
                            "flow_id=? AND user_id=?", (flow_id, int(user_id)), fields)

    # private conversations
    def private_open(self, user_id, other_id):
        return self._db.run(lambda c: _first_bool(c.execute(
            "SELECT open FROM private_state WHERE user_id=? AND other_id=?",
            (int(user_id), int(other_id))).fetchone()))

    def set_private_open(self, user_id, other_id, open):
        return self._write("INSERT INTO private_state VALUES (?,?,?) ON CONFLICT(user_id, other_id) "
                           "DO UPDATE SET open=excluded.open", int(user_id), int(other_id),
                           int(open))

    def private_partners(self, user_id):
        return self._db.run(lambda c: [r[0] for r in c.execute(
            "SELECT other_id FROM private_state WHERE user_id=? ORDER BY other_id",
            (int(user_id),))])

    # sources
    def create_source(self, flow_id, name, creator_id, external_url=""):
        def create(c):
            now = now_ms()
            token = new_token()
            cur = c.execute("INSERT INTO sources (flow_id, name, flow_token, creator_id,"
                            " external_url, created_at, updated_at) VALUES (?,?,?,?,?,?,?)",
                            (flow_id, name, token, creator_id, external_url, now, now))
            return Source(id=cur.lastrowid, flow_id=flow_id, name=name, flow_token=token,
                          creator_id=creator_id, external_url=external_url,
                          created_at=now, updated_at=now)
        return self._db.transaction(create)

    def get_source(self, source_id):
        return self._one(Source, "SELECT * FROM sources WHERE id=? AND deleted=0", int(source_id))

    def source_by_token(self, flow_token):
        return self._one(Source, "SELECT * FROM sources WHERE flow_token=?", flow_token)

    def sources_of_flow(self, flow_id):
        return self._all(Source, "SELECT * FROM sources WHERE flow_id=? AND deleted=0 ORDER BY id",
                         flow_id)

    def update_source(self, source_id, **fields):
        fields = dict(fields)
        unknown = set(fields) - self.SOURCE_FIELDS
        if unknown:
            raise ValueError(f"cannot set {sorted(unknown)} on sources")
        fields["updated_at"] = now_ms()
        return self._update("sources", Source, self.SOURCE_FIELDS | {"updated_at"}, "id=?",
                            (int(source_id),), fields)

    def delete_source(self, source_id):
        return self._write("UPDATE sources SET deleted=1 WHERE id=?", int(source_id))

    # invitations
    def create_invitation(self, flow_id, email, message=""):
        def create(c):
            c.execute("INSERT INTO invitations (flow_id, email, message) VALUES (?,?,?) "
                      "ON CONFLICT(flow_id, email) DO UPDATE SET message=excluded.message",
                      (flow_id, email, message))
            return _record(Invitation, c.execute(
                "SELECT * FROM invitations WHERE flow_id=? AND email=?",
                (flow_id, email)).fetchone())
        return self._db.transaction(create)

    def get_invitation(self, invitation_id):
        return self._one(Invitation, "SELECT * FROM invitations WHERE id=?", int(invitation_id))

    def invitations_of_flow(self, flow_id):
        return self._all(Invitation, "SELECT * FROM invitations WHERE flow_id=? AND "
                                     "state='pending' ORDER BY id", flow_id)

    def delete_invitation(self, invitation_id):
        return self._write("DELETE FROM invitations WHERE id=?", int(invitation_id))

    # feed subscriptions
    def create_feed(self, flow_id, kind, target, creator_id, announced=True):
        def create(c):
            row = c.execute("SELECT * FROM feeds WHERE flow_id=? AND kind=? AND target=?",
                            (flow_id, kind, target)).fetchone()
            if row is not None and not row["removed"]:
                return _feed(row), False
            if row is not None:
                c.execute("UPDATE feeds SET removed=0, announced=?, creator_id=? WHERE id=?",
                          (int(announced), creator_id, row["id"]))
                feed_id = row["id"]
            else:
                feed_id = c.execute(
                    "INSERT INTO feeds (flow_id, kind, target, creator_id, created_at, "
                    "announced) VALUES (?,?,?,?,?,?)",
                    (flow_id, kind, target, creator_id, now_ms(), int(announced))).lastrowid
            return _feed(c.execute("SELECT * FROM feeds WHERE id=?", (feed_id,)).fetchone()), True
        return self._db.transaction(create)

    def get_feed(self, feed_id):
        return self._db.run(lambda c: _feed(c.execute(
            "SELECT * FROM feeds WHERE id=?", (int(feed_id),)).fetchone()))

    def feeds(self, flow_id=None):
        if flow_id is None:
            return self._db.run(lambda c: [_feed(r) for r in c.execute(
                "SELECT * FROM feeds ORDER BY id")])
        return self._db.run(lambda c: [_feed(r) for r in c.execute(
            "SELECT * FROM feeds WHERE flow_id=? ORDER BY id", (flow_id,))])

    def update_feed(self, feed_id, **fields):
        unknown = set(fields) - {"announced", "removed", "state"}
        if unknown:
            raise ValueError(f"cannot update feed fields {sorted(unknown)}")
        values = {k: (json.dumps(v) if k == "state" else int(bool(v))) for k, v in fields.items()}
        if not values:
            from twisted.internet import defer
            return defer.succeed(None)
        sets = ", ".join(f"{k}=?" for k in values)
        return self._write(f"UPDATE feeds SET {sets} WHERE id=?", *values.values(), int(feed_id))

    def delete_feed(self, feed_id):
        return self._write("DELETE FROM feeds WHERE id=?", int(feed_id))

    # settings
    def get_setting(self, key):
        return self._db.run(lambda c: _json_or_none(c.execute(
            "SELECT value FROM settings WHERE key=?", (key,)).fetchone()))

    def set_setting(self, key, value):
        return self._write("INSERT INTO settings VALUES (?,?) ON CONFLICT(key) "
                           "DO UPDATE SET value=excluded.value", key, json.dumps(value))


def _feed(row):
    if row is None:
        return None
    return {"id": row["id"], "flow": row["flow_id"], "kind": row["kind"],
            "target": row["target"], "creator": row["creator_id"],
            "created_at": row["created_at"], "announced": bool(row["announced"]),
            "removed": bool(row["removed"]), "state": json.loads(row["state"] or "{}")}


def _first_bool(row):
    return None if row is None else bool(row[0])


def _json_or_none(row):
    return None if row is None else json.loads(row[0])
