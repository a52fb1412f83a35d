"""The real-server harness (tests/servers.py): every server starts, answers real
commands, and goes away cleanly; failures are loud."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid

import pytest

from tests.servers import (
    MongoServer, PostgresServer, RedisServer, ServerError, ZooKeeperServer)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie still answers kill(0); look at its state
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


# --- each server answers a real command ------------------------------------

def test_redis_set_get(redis_server):
    import redis
    assert redis_server.url == f"redis://127.0.0.1:{redis_server.port}/0"
    client = redis.Redis.from_url(redis_server.url)
    try:
        client.set("greeting", "hello")
        assert client.get("greeting") == b"hello"
        assert client.config_get("save") == {"save": ""}
        assert client.config_get("appendonly") == {"appendonly": "no"}
    finally:
        client.close()
    assert redis_server.command("PING") == b"+PONG"


def test_postgres_create_insert_select(postgres_server):
    import psycopg2
    assert postgres_server.dsn == (
        f"postgresql://postgres@127.0.0.1:{postgres_server.port}/flowtwist")
    conn = psycopg2.connect(postgres_server.dsn)
    try:
        with conn, conn.cursor() as cur:
            cur.execute("CREATE TABLE t_servers (id serial PRIMARY KEY, body text)")
            cur.execute("INSERT INTO t_servers (body) VALUES (%s), (%s)", ("a", "b"))
        with conn.cursor() as cur:
            cur.execute("SELECT body FROM t_servers ORDER BY id")
            assert [r[0] for r in cur.fetchall()] == ["a", "b"]
            cur.execute("SELECT current_database(), current_user")
            assert cur.fetchone() == ("flowtwist", "postgres")
            cur.execute("DROP TABLE t_servers")
        conn.commit()
    finally:
        conn.close()


def test_postgres_create_database(postgres_server):
    import psycopg2
    name = "extra_" + uuid.uuid4().hex[:8]
    dsn = postgres_server.create_database(name)
    assert postgres_server.create_database(name) == dsn     # idempotent
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT current_database()")
            assert cur.fetchone() == (name,)
    finally:
        conn.close()


def test_ferretdb_insert_find(mongo_server):
    import pymongo
    assert mongo_server.url == f"mongodb://127.0.0.1:{mongo_server.port}/"
    client = pymongo.MongoClient(mongo_server.url, serverSelectionTimeoutMS=5000)
    try:
        coll = client.flowtwist_test.messages
        coll.insert_many([{"flow": "main", "n": i} for i in range(3)])
        docs = list(coll.find({"flow": "main"}, {"_id": False}).sort("n", 1))
        assert docs == [{"flow": "main", "n": 0}, {"flow": "main", "n": 1},
                        {"flow": "main", "n": 2}]
        coll.update_one({"n": 1}, {"$set": {"edited": True}})
        assert coll.find_one({"n": 1})["edited"] is True
        client.drop_database("flowtwist_test")
    finally:
        client.close()


def test_zookeeper_create_get(zookeeper_server):
    from kazoo.client import KazooClient
    assert zookeeper_server.hosts == f"127.0.0.1:{zookeeper_server.port}"
    zk = KazooClient(hosts=zookeeper_server.hosts, timeout=5)
    zk.start(timeout=10)
    try:
        path = "/flowtwist-test/" + uuid.uuid4().hex
        zk.create(path, b"leader=a", makepath=True)
        data, stat = zk.get(path)
        assert data == b"leader=a" and stat.version == 0
        zk.set(path, b"leader=b")
        assert zk.get(path)[0] == b"leader=b"
        eph = zk.create(path + "/node-", b"", ephemeral=True, sequence=True)
        assert zk.get_children(path) == [eph.rsplit("/", 1)[1]]
        zk.delete("/flowtwist-test", recursive=True)
    finally:
        zk.stop()
        zk.close()
    assert zookeeper_server.four_letter_word("ruok") == "imok"


# --- life cycle ---------------------------------------------------------------

def test_close_stops_process_and_removes_tmpdir():
    server = RedisServer().start()
    pid, tmpdir = server.proc.pid, server.tmpdir
    assert _pid_alive(pid) and os.path.isdir(tmpdir)
    server.close()
    assert not _pid_alive(pid)
    assert not os.path.exists(tmpdir)
    server.close()      # twice is fine


def test_restart_keeps_port_and_data():
    import psycopg2
    with PostgresServer() as pg:
        port = pg.port
        conn = psycopg2.connect(pg.dsn)
        with conn, conn.cursor() as cur:
            cur.execute("CREATE TABLE kept (x int)")
            cur.execute("INSERT INTO kept VALUES (42)")
        conn.close()
        pg.kill()                       # a crash, then recovery
        assert not pg.running
        pg.start()
        assert pg.port == port
        conn = psycopg2.connect(pg.dsn)
        with conn.cursor() as cur:
            cur.execute("SELECT x FROM kept")
            assert cur.fetchall() == [(42,)]
        conn.close()


def test_two_servers_of_a_kind_get_different_ports():
    with RedisServer() as a, RedisServer() as b:
        assert a.port != b.port and a.tmpdir != b.tmpdir
        a.command("SET", "k", "a")
        assert b.command("GET", "k") == b"$-1"      # nil: separate servers


def test_servers_die_with_the_test_process():
    """A pytest killed outright leaves no server behind (PR_SET_PDEATHSIG)."""
    code = textwrap.dedent("""
        import sys, time
        sys.path.insert(0, %r)
        from tests.servers import RedisServer
        s = RedisServer().start()
        print(s.proc.pid, s.tmpdir, flush=True)
        time.sleep(60)
    """ % ROOT)
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        pid, tmpdir = child.stdout.readline().split()
        pid = int(pid)
        assert _pid_alive(pid)
        child.send_signal(signal.SIGKILL)
        child.wait()
        deadline = time.monotonic() + 10
        while _pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _pid_alive(pid)
    finally:
        child.kill()
        child.wait()
        import shutil
        shutil.rmtree(tmpdir, ignore_errors=True)


# --- loud failures ------------------------------------------------------------

def test_missing_binary_is_loud(monkeypatch):
    monkeypatch.setenv("FERRETDB_BIN", "/nonexistent/ferretdb")
    with pytest.raises(ServerError, match="/nonexistent/ferretdb"):
        MongoServer()


def test_server_that_exits_raises_with_log_tail():
    server = RedisServer("--no-such-option", "1")
    with pytest.raises(ServerError) as info:
        server.start()
    message = str(info.value)
    assert "exited with status" in message
    assert "no-such-option" in message          # from redis-server's own log
    assert server.tmpdir is None                # cleaned up


def test_server_that_never_answers_times_out():
    class Silent(RedisServer):
        def _ping(self):
            return False
    server = Silent(start_timeout=0.5)
    with pytest.raises(ServerError, match="did not answer"):
        server.start()
    assert server.proc is None and server.tmpdir is None


def test_zookeeper_config_is_minimal_and_private(zookeeper_server):
    with open(zookeeper_server.config_path) as f:
        config = dict(line.strip().split("=", 1) for line in f if "=" in line)
    assert config["clientPort"] == str(zookeeper_server.port)
    assert config["admin.enableServer"] == "false"
    assert config["dataDir"].startswith(zookeeper_server.tmpdir)
    assert "Mode: standalone" in zookeeper_server.four_letter_word("srvr")
