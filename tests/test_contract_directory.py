"""The Directory contract, run against SqliteDirectory and PostgresDirectory (a real
PostgreSQL started by tests/servers.py; a fresh database per test)."""
from __future__ import annotations

import uuid

import pytest
import pytest_twisted

from flowtwist.model import Unavailable
from flowtwist.store.postgres import PostgresDirectory
from flowtwist.store.sqlite import SqliteDirectory


def _factory(request, tmp_path):
    """A function that makes (another) directory on the same storage."""
    if request.param == "sqlite":
        path = str(tmp_path / "directory.sqlite3")
        return lambda: SqliteDirectory(path)
    server = request.getfixturevalue("postgres_server")
    dsn = server.create_database("t" + uuid.uuid4().hex[:12])
    return lambda: PostgresDirectory(dsn)


@pytest.fixture(params=["sqlite", "postgres"])
def make_directory(request, tmp_path):
    return _factory(request, tmp_path)


@pytest_twisted.async_yield_fixture
async def directory(make_directory):
    d = make_directory()
    await d.start()
    yield d
    await d.stop()


@pytest_twisted.ensureDeferred
async def test_organizations(directory):
    acme = await directory.create_organization("Acme Inc")
    other = await directory.create_organization("Other", "other-org")
    assert (acme.name, acme.parameterized_name) == ("Acme Inc", "acme-inc")
    assert other.parameterized_name == "other-org"
    assert await directory.get_organization(acme.id) == acme
    assert await directory.get_organization(999999) is None
    assert await directory.organization_by_name("other-org") == other
    assert await directory.organization_by_name("nope") is None
    assert await directory.organizations() == [acme, other]
    renamed = await directory.rename_organization(acme.id, "Acme Corp")
    assert renamed.name == "Acme Corp" and renamed.parameterized_name == "acme-inc"
    with pytest.raises(Exception):
        await directory.create_organization("Acme again", "acme-inc")
    assert len(await directory.organizations()) == 2


@pytest_twisted.ensureDeferred
async def test_users(directory):
    alice = await directory.create_user("Alice@Example.com", "alice", "Alice", "hash1")
    bob = await directory.create_user("bob@example.com", "bob", "Bob", "hash2")
    assert alice.id != bob.id and alice.api_token and alice.api_token != bob.api_token
    assert alice.password_hash == "hash1" and not alice.disabled
    assert await directory.get_user(alice.id) == alice
    assert await directory.get_user(424242) is None
    assert await directory.user_by_email("alice@example.COM") == alice
    assert await directory.user_by_email("nobody@example.com") is None
    assert await directory.user_by_token(bob.api_token) == bob
    assert await directory.user_by_token("nope") is None
    assert await directory.users() == [alice, bob]
    with pytest.raises(Exception):
        await directory.create_user("ALICE@example.com", "alice2", "Alice 2", "x")
    updated = await directory.update_user(alice.id, nick="ali", avatar="https://a/b.png",
                                          website="https://w", disabled=True,
                                          password_hash="hash3")
    assert (updated.nick, updated.avatar, updated.website, updated.disabled,
            updated.password_hash) == ("ali", "https://a/b.png", "https://w", True, "hash3")
    assert await directory.get_user(alice.id) == updated
    with pytest.raises(ValueError):
        await directory.update_user(alice.id, api_token="stolen")


@pytest_twisted.ensureDeferred
async def test_org_members_and_removal_cascades_to_flows(directory):
    acme = await directory.create_organization("Acme")
    other = await directory.create_organization("Other")
    alice = await directory.create_user("alice@example.com", "alice", "Alice", "h")
    bob = await directory.create_user("bob@example.com", "bob", "Bob", "h")
    await directory.add_org_member(acme.id, alice.id, admin=True)
    await directory.add_org_member(acme.id, bob.id)
    await directory.add_org_member(other.id, bob.id)
    assert await directory.org_members(acme.id) == [(alice, True), (bob, False)]
    await directory.add_org_member(acme.id, bob.id, admin=True)      # again: admin changes
    assert await directory.org_members(acme.id) == [(alice, True), (bob, True)]
    assert await directory.organizations_of(bob.id) == [acme, other]
    main = await directory.create_flow(acme.id, "Main")
    elsewhere = await directory.create_flow(other.id, "Elsewhere")
    await directory.add_flow_member(main.id, bob.id)
    await directory.add_flow_member(elsewhere.id, bob.id)
    await directory.remove_org_member(acme.id, bob.id)
    assert await directory.org_members(acme.id) == [(alice, True)]
    assert await directory.organizations_of(bob.id) == [other]
    assert await directory.get_membership(main.id, bob.id) is None
    assert await directory.get_membership(elsewhere.id, bob.id) is not None


@pytest_twisted.ensureDeferred
async def test_flows(directory):
    acme = await directory.create_organization("Acme")
    main = await directory.create_flow(acme.id, "Main Room")
    side = await directory.create_flow(acme.id, "side", access_mode="invitation")
    big = await directory.create_flow(acme.id, "Zed")
    assert (main.name, main.parameterized_name, main.access_mode, main.organization_id) == (
        "Main Room", "main-room", "organization", acme.id)
    assert side.access_mode == "invitation" and main.api_token and main.id != side.id
    assert await directory.get_flow(main.id) == main
    assert await directory.get_flow("nope") is None
    assert await directory.flow_by_name("acme", "main-room") == main
    assert await directory.flow_by_name("acme", "nope") is None
    assert await directory.flow_by_token(side.api_token) == side
    # by name, byte order (upper case first), as SQLite sorts
    assert await directory.flows_of_org(acme.id) == [main, big, side]
    with pytest.raises(Exception):
        await directory.create_flow(acme.id, "main room")     # same parameterized name
    updated = await directory.update_flow(main.id, name="Lobby", parameterized_name="lobby",
                                          access_mode="link", disabled=True,
                                          description="the lobby")
    assert (updated.name, updated.parameterized_name, updated.access_mode, updated.disabled,
            updated.description) == ("Lobby", "lobby", "link", True, "the lobby")
    assert await directory.flow_by_name("acme", "lobby") == updated
    with pytest.raises(ValueError):
        await directory.update_flow(main.id, api_token="x")


@pytest_twisted.ensureDeferred
async def test_flow_memberships(directory):
    acme = await directory.create_organization("Acme")
    main = await directory.create_flow(acme.id, "Main")
    side = await directory.create_flow(acme.id, "Side")
    alice = await directory.create_user("alice@example.com", "alice", "Alice", "h")
    bob = await directory.create_user("bob@example.com", "bob", "Bob", "h")
    await directory.add_flow_member(main.id, alice.id)
    await directory.add_flow_member(main.id, alice.id)      # idempotent
    await directory.add_flow_member(main.id, bob.id)
    await directory.add_flow_member(side.id, alice.id)
    members = await directory.flow_members(main.id)
    assert [(u, m.user_id, m.flow_id) for u, m in members] == [
        (alice, alice.id, main.id), (bob, bob.id, main.id)]
    member = members[0][1]
    assert (member.disabled, member.status, member.last_activity, member.open) == (
        False, None, 0, True)
    assert sorted(m.flow_id for m in await directory.memberships_of(alice.id)) == sorted(
        [main.id, side.id])
    await directory.update_membership(main.id, alice.id, status="busy",
                                      last_activity=1234567890123, open=False, disabled=True)
    m = await directory.get_membership(main.id, alice.id)
    assert (m.status, m.last_activity, m.open, m.disabled) == ("busy", 1234567890123,
                                                               False, True)
    with pytest.raises(ValueError):
        await directory.update_membership(main.id, alice.id, role="x")
    await directory.remove_flow_member(main.id, bob.id)
    assert await directory.get_membership(main.id, bob.id) is None
    assert [u for u, _ in await directory.flow_members(main.id)] == [alice]


@pytest_twisted.ensureDeferred
async def test_private_state(directory):
    assert await directory.private_open(1, 2) is None
    await directory.set_private_open(1, 3, True)
    await directory.set_private_open(1, 2, False)
    await directory.set_private_open(2, 1, True)
    assert await directory.private_open(1, 2) is False
    assert await directory.private_open(1, 3) is True
    await directory.set_private_open(1, 2, True)
    assert await directory.private_open(1, 2) is True
    assert await directory.private_partners(1) == [2, 3]
    assert await directory.private_partners(9) == []


@pytest_twisted.ensureDeferred
async def test_sources(directory):
    acme = await directory.create_organization("Acme")
    main = await directory.create_flow(acme.id, "Main")
    alice = await directory.create_user("alice@example.com", "alice", "Alice", "h")
    ci = await directory.create_source(main.id, "CI", alice.id, "https://ci.example.com")
    feed = await directory.create_source(main.id, "Feed", None)
    assert (ci.flow_id, ci.name, ci.creator_id, ci.external_url, ci.deleted) == (
        main.id, "CI", alice.id, "https://ci.example.com", False)
    assert ci.flow_token and ci.flow_token != feed.flow_token and ci.created_at > 0
    assert ci.created_at == ci.updated_at
    assert await directory.get_source(ci.id) == ci
    assert await directory.source_by_token(feed.flow_token) == feed
    assert await directory.sources_of_flow(main.id) == [ci, feed]
    updated = await directory.update_source(ci.id, name="CI 2", error_message="boom",
                                            configuration_url="https://conf")
    assert (updated.name, updated.error_message, updated.configuration_url) == (
        "CI 2", "boom", "https://conf")
    assert updated.updated_at >= ci.updated_at
    with pytest.raises(ValueError):
        await directory.update_source(ci.id, flow_token="x")
    await directory.delete_source(ci.id)
    assert await directory.get_source(ci.id) is None
    gone = await directory.source_by_token(ci.flow_token)
    assert gone is not None and gone.deleted and gone.id == ci.id
    assert await directory.sources_of_flow(main.id) == [feed]


@pytest_twisted.ensureDeferred
async def test_invitations(directory):
    acme = await directory.create_organization("Acme")
    main = await directory.create_flow(acme.id, "Main")
    first = await directory.create_invitation(main.id, "Guest@Example.com", "welcome")
    assert (first.flow_id, first.email, first.state, first.message) == (
        main.id, "Guest@Example.com", "pending", "welcome")
    again = await directory.create_invitation(main.id, "guest@example.com", "second")
    assert again.id == first.id and again.message == "second"
    other = await directory.create_invitation(main.id, "other@example.com")
    assert await directory.get_invitation(first.id) == again
    assert await directory.invitations_of_flow(main.id) == [again, other]
    await directory.delete_invitation(first.id)
    assert await directory.get_invitation(first.id) is None
    assert await directory.invitations_of_flow(main.id) == [other]


@pytest_twisted.ensureDeferred
async def test_feeds(directory):
    acme = await directory.create_organization("Acme")
    main = await directory.create_flow(acme.id, "Main")
    feed, created = await directory.create_feed(main.id, "rss", "https://x/feed", 7)
    assert created and feed["flow"] == main.id and feed["kind"] == "rss"
    assert (feed["target"], feed["creator"], feed["announced"], feed["removed"],
            feed["state"]) == ("https://x/feed", 7, True, False, {})
    same, created = await directory.create_feed(main.id, "rss", "https://x/feed", 8)
    assert not created and same == feed
    tw, _ = await directory.create_feed(main.id, "twitter_search", "#x", None, announced=False)
    assert tw["announced"] is False and tw["creator"] is None
    await directory.update_feed(feed["id"], state={"etag": "abc", "seen": [1, 2]},
                                removed=True)
    got = await directory.get_feed(feed["id"])
    assert got["state"] == {"etag": "abc", "seen": [1, 2]} and got["removed"] is True
    revived, created = await directory.create_feed(main.id, "rss", "https://x/feed", 9)
    assert created and revived["id"] == feed["id"] and not revived["removed"]
    assert [f["id"] for f in await directory.feeds(main.id)] == [feed["id"], tw["id"]]
    assert [f["id"] for f in await directory.feeds()] == [feed["id"], tw["id"]]
    with pytest.raises(ValueError):
        await directory.update_feed(feed["id"], target="y")
    await directory.delete_feed(tw["id"])
    assert await directory.get_feed(tw["id"]) is None


@pytest_twisted.ensureDeferred
async def test_settings(directory):
    assert await directory.get_setting("rss:state") is None
    await directory.set_setting("rss:state", {"etag": "x", "seen": [1, 2, "three"]})
    assert await directory.get_setting("rss:state") == {"etag": "x", "seen": [1, 2, "three"]}
    await directory.set_setting("rss:state", 5)
    assert await directory.get_setting("rss:state") == 5


@pytest_twisted.ensureDeferred
async def test_data_survives_a_restart(make_directory):
    first = make_directory()
    await first.start()
    org = await first.create_organization("Acme")
    user = await first.create_user("a@example.com", "a", "A", "h")
    await first.stop()
    second = make_directory()      # schema set-up / migrations run again: a no-op
    await second.start()
    try:
        assert await second.get_organization(org.id) == org
        assert await second.user_by_token(user.api_token) == user
    finally:
        await second.stop()


@pytest_twisted.ensureDeferred
async def test_postgres_records_its_migrations(postgres_server):
    from flowtwist.store.postgres import migrations
    dsn = postgres_server.create_database("t" + uuid.uuid4().hex[:12])
    # Two processes starting at once: each migration still runs exactly once.
    a, b = PostgresDirectory(dsn), PostgresDirectory(dsn)
    import twisted.internet.defer as defer
    await defer.gatherResults([defer.ensureDeferred(a.start()), defer.ensureDeferred(b.start())])
    try:
        rows = await a._rows("SELECT version, name FROM schema_version ORDER BY version")
        assert [(r["version"], r["name"]) for r in rows] == [(v, n) for v, n, _ in migrations()]
    finally:
        await a.stop()
        await b.stop()


@pytest_twisted.ensureDeferred
async def test_postgres_down_means_unavailable_then_recovers():
    from tests.servers import PostgresServer
    server = PostgresServer()
    server.start()
    directory = PostgresDirectory(server.dsn, timeout=3.0)
    try:
        await directory.start()
        org = await directory.create_organization("Acme")
        server.stop()
        with pytest.raises(Unavailable):
            await directory.get_organization(org.id)
        with pytest.raises(Unavailable):        # fails fast while reconnecting
            await directory.organizations()
        server.start()
        await _eventually(lambda: directory.get_organization(org.id), org)
    finally:
        await directory.stop()
        server.close()


async def _eventually(call, expected, timeout=30.0):
    import time

    from twisted.internet import reactor, task
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = await call()
            if result == expected:
                return
        except Unavailable:
            if time.monotonic() > deadline:
                raise
        await task.deferLater(reactor, 0.1, lambda: None)
