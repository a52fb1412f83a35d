"""The production directory: PostgreSQL through txpostgres (psycopg2's asynchronous
mode driven by the reactor; no threads).

The schema lives in versioned SQL files, flowtwist/store/migrations/NNNN_name.sql,
applied in order at start; `schema_version` records what ran.  Several processes may
start at once: an advisory lock serialises them, so each migration runs exactly once.

Behaviour matches SqliteDirectory method for method (the contract tests in
tests/test_contract_directory.py run against both): e-mail addresses compare without
case, flows list by name in byte order, deleted sources stay findable by token.

When PostgreSQL goes away the pool is dropped and rebuilt in the background with
backoff; meanwhile every call fails at once with Unavailable (HTTP 503).
"""
from __future__ import annotations

import json
import os
import re

import attrs
import psycopg2
import psycopg2.extras
from twisted.internet import defer
from twisted.logger import Logger
from txpostgres import txpostgres

from flowtwist.model import (Flow, FlowMember, Invitation, Organization, Source,
                             Unavailable, User, new_token, new_uuid, now_ms,
                             parameterize)

log = Logger()

MIGRATIONS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "migrations")
MIGRATION_LOCK = 0x666c6f77      # "flow": the advisory lock id for migrations
DOWN = (psycopg2.OperationalError, psycopg2.InterfaceError, defer.TimeoutError,
        txpostgres.AlreadyConnected)


def migrations() -> list[tuple[int, str, str]]:
    """(version, name, sql) of every migration file, in version order."""
    out = []
    for name in sorted(os.listdir(MIGRATIONS)):
        m = re.fullmatch(r"(\d+)_(\w+)\.sql", name)
        if m:
            with open(os.path.join(MIGRATIONS, name)) as f:
                out.append((int(m.group(1)), m.group(2), f.read()))
    return out


def _record(cls, row):
    if row is None:
        return None
    names = {f.name for f in attrs.fields(cls)}
    return cls(**{k: v for k, v in row.items() if k in names})


class PostgresDirectory:
    USER_FIELDS = {"nick", "email", "name", "avatar", "website", "password_hash", "disabled"}
    FLOW_FIELDS = {"name", "parameterized_name", "access_mode", "disabled", "description"}
    MEMBER_FIELDS = {"disabled", "status", "last_activity", "open"}
    SOURCE_FIELDS = {"name", "external_url", "error_message", "configuration_url"}

    def __init__(self, dsn: str, reactor=None, *, pool_size: int = 4, timeout: float = 5.0):
        if reactor is None:
            from twisted.internet import reactor
        self._reactor = reactor
        self._dsn = dsn
        self._pool_size = pool_size
        self._timeout = timeout
        self._pool: txpostgres.ConnectionPool | None = None
        self._running = False
        self._reconnecting: defer.Deferred | None = None

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Connect (logging and retrying while the server is down) and migrate."""
        self._running = True
        await self._connect()
        await self._migrate()

    async def stop(self) -> None:
        self._running = False
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    async def _connect(self) -> None:
        delay, attempt = 0.5, 0
        while self._running:
            attempt += 1
            pool = txpostgres.ConnectionPool(
                None, self._dsn, min=self._pool_size,
                cursor_factory=psycopg2.extras.RealDictCursor)
            try:
                await pool.start().addTimeout(10, self._reactor)
            except Exception as e:
                try:
                    pool.close()
                except Exception:
                    pass
                if attempt == 1 or attempt % 10 == 0:
                    log.warn("PostgreSQL at {dsn} not available ({e}); retrying in {d:.1f}s",
                             dsn=_safe(self._dsn), e=str(e).strip(), d=delay)
                await _sleep(self._reactor, delay)
                delay = min(delay * 2, 5.0)
                continue
            self._pool = pool
            if attempt > 1:
                log.info("PostgreSQL at {dsn} connected", dsn=_safe(self._dsn))
            return

    def _lost(self, error) -> None:
        """A connection error: drop the pool, fail fast, reconnect in the background."""
        if self._pool is None or not self._running:
            return
        log.warn("PostgreSQL connection lost ({e}); reconnecting", e=str(error).strip())
        pool, self._pool = self._pool, None
        try:
            pool.close()
        except Exception:
            pass
        if self._reconnecting is None:
            self._reconnecting = defer.ensureDeferred(self._connect())
            self._reconnecting.addBoth(self._reconnected)

    def _reconnected(self, _):
        self._reconnecting = None

    async def _migrate(self) -> None:
        async def migrate(cur):
            await cur.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
            await cur.execute("CREATE TABLE IF NOT EXISTS schema_version ("
                              " version INTEGER PRIMARY KEY, name TEXT NOT NULL,"
                              " applied_at TIMESTAMPTZ NOT NULL DEFAULT now())")
            await cur.execute("SELECT version FROM schema_version")
            done = {row["version"] for row in cur.fetchall()}
            for version, name, sql in migrations():
                if version not in done:
                    log.info("applying PostgreSQL migration {v} {name}", v=version, name=name)
                    await cur.execute(sql)
                    await cur.execute("INSERT INTO schema_version (version, name) "
                                      "VALUES (%s, %s)", (version, name))
        await self._transaction(migrate)

    # ------------------------------------------------------------ plumbing

    async def _guard(self, make):
        pool = self._pool
        if pool is None:
            raise Unavailable("Directory unavailable, try again later")
        try:
            return await make(pool).addTimeout(self._timeout, self._reactor)
        except DOWN as e:
            self._lost(e)
            raise Unavailable("Directory unavailable, try again later") from e

    async def _rows(self, sql, args=()):
        return await self._guard(lambda pool: pool.runQuery(sql, args))

    async def _execute(self, sql, args=()):
        async def run(cur):
            await cur.execute(sql, args)
            return cur.rowcount
        return await self._transaction(run)

    async def _transaction(self, fn):
        return await self._guard(lambda pool: pool.runInteraction(
            lambda cur: defer.ensureDeferred(fn(cur))))

    def _one(self, cls, sql, *args):
        async def one():
            rows = await self._rows(sql, args)
            return _record(cls, rows[0]) if rows else None
        return defer.ensureDeferred(one())

    def _all(self, cls, sql, *args):
        async def all_():
            return [_record(cls, r) for r in await self._rows(sql, args)]
        return defer.ensureDeferred(all_())

    def _write(self, sql, *args):
        return defer.ensureDeferred(self._execute(sql, args))

    def _returning(self, cls, sql, *args):
        async def run(cur):
            await cur.execute(sql, args)
            return _record(cls, cur.fetchone())
        return defer.ensureDeferred(self._transaction(run))

    # ------------------------------------------------------------ organizations

    def create_organization(self, name, parameterized_name=None):
        return self._returning(Organization, "INSERT INTO organizations (name, parameterized_name)"
                               " VALUES (%s, %s) RETURNING *",
                               name, parameterized_name or parameterize(name))

    def get_organization(self, org_id):
        return self._one(Organization, "SELECT * FROM organizations WHERE id=%s", int(org_id))

    def organization_by_name(self, parameterized_name):
        return self._one(Organization, "SELECT * FROM organizations WHERE parameterized_name=%s",
                         parameterized_name)

    def organizations(self):
        return self._all(Organization, "SELECT * FROM organizations ORDER BY id")

    def rename_organization(self, org_id, name):
        return self._returning(Organization, "UPDATE organizations SET name=%s WHERE id=%s "
                               "RETURNING *", name, int(org_id))

    def organizations_of(self, user_id):
        return self._all(Organization,
                         "SELECT o.* FROM organizations o JOIN org_members m ON m.org_id=o.id "
                         "WHERE m.user_id=%s ORDER BY o.id", int(user_id))

    def add_org_member(self, org_id, user_id, admin=False):
        return self._write("INSERT INTO org_members VALUES (%s, %s, %s) "
                           "ON CONFLICT (org_id, user_id) DO UPDATE SET admin=excluded.admin",
                           int(org_id), int(user_id), bool(admin))

    def remove_org_member(self, org_id, user_id):
        async def remove(cur):
            await cur.execute("DELETE FROM flow_members WHERE user_id=%s AND flow_id IN "
                              "(SELECT id FROM flows WHERE organization_id=%s)",
                              (int(user_id), int(org_id)))
            await cur.execute("DELETE FROM org_members WHERE org_id=%s AND user_id=%s",
                              (int(org_id), int(user_id)))
        return defer.ensureDeferred(self._transaction(remove))

    def org_members(self, org_id):
        async def members():
            rows = await self._rows(
                "SELECT u.*, m.admin FROM users u JOIN org_members m ON m.user_id=u.id "
                "WHERE m.org_id=%s ORDER BY u.id", (int(org_id),))
            return [(_record(User, r), bool(r["admin"])) for r in rows]
        return defer.ensureDeferred(members())

    # ------------------------------------------------------------ users

    def create_user(self, email, nick, name, password_hash):
        return self._returning(User, "INSERT INTO users (email, nick, name, password_hash,"
                               " api_token) VALUES (%s, %s, %s, %s, %s) RETURNING *",
                               email, nick, name, password_hash, new_token())

    def get_user(self, user_id):
        return self._one(User, "SELECT * FROM users WHERE id=%s", int(user_id))

    def user_by_email(self, email):
        return self._one(User, "SELECT * FROM users WHERE lower(email)=lower(%s)", email)

    def user_by_token(self, token):
        return self._one(User, "SELECT * FROM users WHERE api_token=%s", token)

    def users(self):
        return self._all(User, "SELECT * FROM users ORDER BY id")

    def update_user(self, user_id, **fields):
        return self._update("users", User, self.USER_FIELDS, "id=%s", (int(user_id),), fields)

    def _update(self, table, cls, allowed, where, keys, fields):
        unknown = set(fields) - allowed
        if unknown:
            raise ValueError(f"cannot set {sorted(unknown)} on {table}")

        async def update(cur):
            if fields:
                sets = ", ".join(f"{k}=%s" for k in fields)
                await cur.execute(f"UPDATE {table} SET {sets} WHERE {where}",
                                  (*fields.values(), *keys))
            if cls is not None:
                await cur.execute(f"SELECT * FROM {table} WHERE {where}", keys)
                return _record(cls, cur.fetchone())
        return defer.ensureDeferred(self._transaction(update))

    # ------------------------------------------------------------ flows

    def create_flow(self, org_id, name, access_mode="organization"):
        return self._returning(Flow, "INSERT INTO flows (id, organization_id, name,"
                               " parameterized_name, access_mode, api_token)"
                               " VALUES (%s, %s, %s, %s, %s, %s) RETURNING *",
                               new_uuid(), int(org_id), name, parameterize(name), access_mode,
                               new_token())

    def get_flow(self, flow_id):
        return self._one(Flow, "SELECT * FROM flows WHERE id=%s", str(flow_id))

    def flow_by_name(self, org_name, flow_name):
        return self._one(Flow, "SELECT f.* FROM flows f JOIN organizations o "
                               "ON o.id=f.organization_id WHERE o.parameterized_name=%s "
                               "AND f.parameterized_name=%s", org_name, flow_name)

    def flow_by_token(self, api_token):
        return self._one(Flow, "SELECT * FROM flows WHERE api_token=%s", api_token)

    def flows_of_org(self, org_id):
        return self._all(Flow, 'SELECT * FROM flows WHERE organization_id=%s '
                               'ORDER BY name COLLATE "C"', int(org_id))

    def update_flow(self, flow_id, **fields):
        return self._update("flows", Flow, self.FLOW_FIELDS, "id=%s", (str(flow_id),), fields)

    # ------------------------------------------------------------ memberships

    def add_flow_member(self, flow_id, user_id):
        return self._write("INSERT INTO flow_members (flow_id, user_id) VALUES (%s, %s) "
                           "ON CONFLICT DO NOTHING", flow_id, int(user_id))

    def remove_flow_member(self, flow_id, user_id):
        return self._write("DELETE FROM flow_members WHERE flow_id=%s AND user_id=%s",
                           flow_id, int(user_id))

    def flow_members(self, flow_id):
        async def members():
            rows = await self._rows(
                "SELECT u.*, m.flow_id, m.user_id, m.disabled AS m_disabled, m.status,"
                " m.last_activity, m.open FROM users u JOIN flow_members m"
                " ON m.user_id=u.id WHERE m.flow_id=%s ORDER BY u.id", (flow_id,))
            return [(_record(User, r),
                     FlowMember(flow_id=r["flow_id"], user_id=r["user_id"],
                                disabled=r["m_disabled"], status=r["status"],
                                last_activity=r["last_activity"], open=r["open"]))
                    for r in rows]
        return defer.ensureDeferred(members())

    def memberships_of(self, user_id):
        return self._all(FlowMember, "SELECT * FROM flow_members WHERE user_id=%s "
                                     "ORDER BY flow_id", int(user_id))

    def get_membership(self, flow_id, user_id):
        return self._one(FlowMember, "SELECT * FROM flow_members WHERE flow_id=%s AND user_id=%s",
                         flow_id, int(user_id))

    def update_membership(self, flow_id, user_id, **fields):
        return self._update("flow_members", None, self.MEMBER_FIELDS,
                            "flow_id=%s AND user_id=%s", (flow_id, int(user_id)), fields)

    # ------------------------------------------------------------ private conversations

    def private_open(self, user_id, other_id):
        async def get():
            rows = await self._rows("SELECT open FROM private_state WHERE user_id=%s "
                                    "AND other_id=%s", (int(user_id), int(other_id)))
            return bool(rows[0]["open"]) if rows else None
        return defer.ensureDeferred(get())

    def set_private_open(self, user_id, other_id, open):
        return self._write("INSERT INTO private_state VALUES (%s, %s, %s) "
                           "ON CONFLICT (user_id, other_id) DO UPDATE SET open=excluded.open",
                           int(user_id), int(other_id), bool(open))

    def private_partners(self, user_id):
        async def partners():
            rows = await self._rows("SELECT other_id FROM private_state WHERE user_id=%s "
                                    "ORDER BY other_id", (int(user_id),))
            return [r["other_id"] for r in rows]
        return defer.ensureDeferred(partners())

    # ------------------------------------------------------------ sources

    def create_source(self, flow_id, name, creator_id, external_url=""):
        now = now_ms()
        return self._returning(Source, "INSERT INTO sources (flow_id, name, flow_token,"
                               " creator_id, external_url, created_at, updated_at)"
                               " VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING *",
                               flow_id, name, new_token(), creator_id, external_url, now, now)

    def get_source(self, source_id):
        return self._one(Source, "SELECT * FROM sources WHERE id=%s AND NOT deleted",
                         int(source_id))

    def source_by_token(self, flow_token):
        return self._one(Source, "SELECT * FROM sources WHERE flow_token=%s", flow_token)

    def sources_of_flow(self, flow_id):
        return self._all(Source, "SELECT * FROM sources WHERE flow_id=%s AND NOT deleted "
                                 "ORDER BY id", flow_id)

    def update_source(self, source_id, **fields):
        fields = dict(fields)
        unknown = set(fields) - self.SOURCE_FIELDS
        if unknown:
            raise ValueError(f"cannot set {sorted(unknown)} on sources")
        fields["updated_at"] = now_ms()
        return self._update("sources", Source, self.SOURCE_FIELDS | {"updated_at"}, "id=%s",
                            (int(source_id),), fields)

    def delete_source(self, source_id):
        return self._write("UPDATE sources SET deleted=TRUE WHERE id=%s", int(source_id))

    # ------------------------------------------------------------ invitations

    def create_invitation(self, flow_id, email, message=""):
        return self._returning(Invitation, "INSERT INTO invitations (flow_id, email, message)"
                               " VALUES (%s, %s, %s) ON CONFLICT (flow_id, lower(email))"
                               " DO UPDATE SET message=excluded.message RETURNING *",
                               flow_id, email, message)

    def get_invitation(self, invitation_id):
        return self._one(Invitation, "SELECT * FROM invitations WHERE id=%s",
                         int(invitation_id))

    def invitations_of_flow(self, flow_id):
        return self._all(Invitation, "SELECT * FROM invitations WHERE flow_id=%s AND "
                                     "state='pending' ORDER BY id", flow_id)

    def delete_invitation(self, invitation_id):
        return self._write("DELETE FROM invitations WHERE id=%s", int(invitation_id))

    # ------------------------------------------------------------ feed subscriptions

    def create_feed(self, flow_id, kind, target, creator_id, announced=True):
        async def create(cur):
            await cur.execute("SELECT * FROM feeds WHERE flow_id=%s AND kind=%s AND target=%s "
                              "FOR UPDATE", (flow_id, kind, target))
            row = cur.fetchone()
            if row is not None and not row["removed"]:
                return _feed(row), False
            if row is not None:
                await cur.execute("UPDATE feeds SET removed=FALSE, announced=%s, creator_id=%s "
                                  "WHERE id=%s RETURNING *", (bool(announced), creator_id,
                                                             row["id"]))
            else:
                await cur.execute("INSERT INTO feeds (flow_id, kind, target, creator_id,"
                                  " created_at, announced) VALUES (%s, %s, %s, %s, %s, %s)"
                                  " ON CONFLICT (flow_id, kind, target) DO NOTHING RETURNING *",
                                  (flow_id, kind, target, creator_id, now_ms(),
                                   bool(announced)))
            row = cur.fetchone()
            if row is None:     # another process created it a moment ago
                await cur.execute("SELECT * FROM feeds WHERE flow_id=%s AND kind=%s AND "
                                  "target=%s", (flow_id, kind, target))
                return _feed(cur.fetchone()), False
            return _feed(row), True
        return defer.ensureDeferred(self._transaction(create))

    def get_feed(self, feed_id):
        async def get():
            rows = await self._rows("SELECT * FROM feeds WHERE id=%s", (int(feed_id),))
            return _feed(rows[0]) if rows else None
        return defer.ensureDeferred(get())

    def feeds(self, flow_id=None):
        async def feeds():
            if flow_id is None:
                rows = await self._rows("SELECT * FROM feeds ORDER BY id")
            else:
                rows = await self._rows("SELECT * FROM feeds WHERE flow_id=%s ORDER BY id",
                                        (flow_id,))
            return [_feed(r) for r in rows]
        return defer.ensureDeferred(feeds())

    def update_feed(self, feed_id, **fields):
        unknown = set(fields) - {"announced", "removed", "state"}
        if unknown:
            raise ValueError(f"cannot update feed fields {sorted(unknown)}")
        values = {k: (json.dumps(v) if k == "state" else bool(v)) for k, v in fields.items()}
        if not values:
            return defer.succeed(None)
        sets = ", ".join(f"{k}=%s" for k in values)
        d = self._write(f"UPDATE feeds SET {sets} WHERE id=%s", *values.values(), int(feed_id))
        return d.addCallback(lambda _: None)

    def delete_feed(self, feed_id):
        return self._write("DELETE FROM feeds WHERE id=%s", int(feed_id))

    # ------------------------------------------------------------ settings

    def get_setting(self, key):
        async def get():
            rows = await self._rows("SELECT value FROM settings WHERE key=%s", (key,))
            return json.loads(rows[0]["value"]) if rows else None
        return defer.ensureDeferred(get())

    def set_setting(self, key, value):
        return self._write("INSERT INTO settings VALUES (%s, %s) ON CONFLICT (key) "
                           "DO UPDATE SET value=excluded.value", key, json.dumps(value))


def _feed(row):
    return {"id": row["id"], "flow": row["flow_id"], "kind": row["kind"],
            "target": row["target"], "creator": row["creator_id"],
            "created_at": row["created_at"], "announced": bool(row["announced"]),
            "removed": bool(row["removed"]), "state": json.loads(row["state"] or "{}")}


def _safe(dsn: str) -> str:
    """The DSN without its password, for logs."""
    return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", re.sub(r"password=\S+", "password=***", dsn))


def _sleep(reactor, seconds):
    d = defer.Deferred()
    reactor.callLater(seconds, d.callback, None)
    return d
