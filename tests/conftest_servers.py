"""Session-wide real servers for tests (see tests/servers.py). tests/conftest.py
imports these fixtures; each server starts the first time a test asks for it and
is stopped, its temp dir removed, at the end of the session.

    def test_x(redis_server):      redis_server.url    -> redis://127.0.0.1:PORT/0
    def test_y(postgres_server):   postgres_server.dsn -> postgresql://postgres@127.0.0.1:PORT/flowtwist
    def test_z(mongo_server):      mongo_server.url    -> mongodb://127.0.0.1:PORT/
    def test_w(zookeeper_server):  zookeeper_server.hosts -> 127.0.0.1:PORT
"""
from __future__ import annotations

import pytest

from tests.servers import MongoServer, PostgresServer, RedisServer, ZooKeeperServer

__all__ = ["redis_server", "postgres_server", "mongo_server", "zookeeper_server"]


def _serve(factory):
    server = factory()
    try:
        server.start()
        yield server
    finally:
        server.close()


@pytest.fixture(scope="session")
def redis_server():
    yield from _serve(RedisServer)


@pytest.fixture(scope="session")
def postgres_server():
    yield from _serve(PostgresServer)


@pytest.fixture(scope="session")
def mongo_server():
    yield from _serve(MongoServer)


@pytest.fixture(scope="session")
def zookeeper_server():
    yield from _serve(ZooKeeperServer)
