"""Shared fixtures: a running flowtwist with two users in one flow, and the real
servers (Redis, PostgreSQL, FerretDB, ZooKeeper) of tests/servers.py."""
from __future__ import annotations

import pytest

from tests.support import Flowtwist

try:    # the real-server fixtures (tests/conftest_servers.py)
    from tests.conftest_servers import *  # noqa: F401,F403
except ModuleNotFoundError as e:
    if e.name != "tests.conftest_servers":
        raise


class World:
    """A server with organization `acme`, users alice (admin), bob, carol (outsider)
    and flows `acme/main` (alice, bob) and `acme/side` (alice only)."""

    def __init__(self, server: Flowtwist):
        self.server = server
        server.create_org("Acme")
        server.create_org("Other")
        self.alice = server.create_user("alice", "acme", admin=True)
        self.bob = server.create_user("bob", "acme")
        self.carol = server.create_user("carol", "other")
        self.main = server.create_flow("acme", "Main", [self.alice, self.bob])
        self.side = server.create_flow("acme", "Side", [self.alice])


@pytest.fixture(scope="module")
def server():
    s = Flowtwist()
    try:
        yield s.start()
    finally:
        s.close()


@pytest.fixture(scope="module")
def world(server):
    return World(server)
