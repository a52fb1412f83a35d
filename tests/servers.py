"""Real servers for the test suite: Redis, PostgreSQL, FerretDB (MongoDB wire protocol)
and ZooKeeper, each started on a free loopback port in its own temporary directory.

    with RedisServer() as redis:
        client = redis_client(redis.url)
        ...

Each server is ready when it has answered a real request (Redis PING, a PostgreSQL
connection, a MongoDB ping, ZooKeeper `srvr`). A missing binary, a server that exits
early or one that is not ready within `start_timeout` seconds (default 30, or
$FLOWTWIST_SERVER_TIMEOUT) raises `ServerError` carrying the tail of the server's log.

Life cycle: `start()` (first start picks a port and a temp dir), `stop()` (terminate,
then kill; the data stays, so `start()` again brings the same server back on the same
port), `kill()` (SIGKILL, a crash), `restart()`, and `close()` (stop and remove the temp
dir). Every server still open when the interpreter exits is closed, and the servers are
started with PR_SET_PDEATHSIG so that they die with the test process even if it is
killed outright.

The binaries come from the Debian packages redis-server, postgresql and zookeeper and
from FerretDB v1.24.2 built by scripts/install-test-deps; they are looked up on PATH
and in known places (/usr/lib/postgresql/*/bin, $HOME/go/bin, /root/go/bin, ...).
Environment overrides: REDIS_SERVER_BIN, PG_BINDIR, FERRETDB_BIN, ZOOKEEPER_CLASSPATH,
JAVA_BIN.
"""
from __future__ import annotations

import atexit
import ctypes
import glob
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import weakref
from typing import Callable, Sequence

__all__ = [
    "ServerError", "Server", "RedisServer", "PostgresServer", "MongoServer",
    "ZooKeeperServer", "find_binary", "free_port",
]

HOST = "127.0.0.1"
INSTALL_HINT = "run scripts/install-test-deps (or `make test`) to install it"


class ServerError(RuntimeError):
    """A test server could not be found, started, or reached."""


# ---------------------------------------------------------------------------
# helpers

def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _version_key(path: str):
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", path)]


def find_binary(name: str, extra_dirs: Sequence[str] = (), env: str | None = None) -> str:
    """The path of executable `name`: $env if set, else PATH, else `extra_dirs`
    (which may be glob patterns; the highest version wins). Raises ServerError."""
    if env and os.environ.get(env):
        path = os.environ[env]
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
        raise ServerError(f"${env}={path!r} is not an executable file")
    found = shutil.which(name)
    if found:
        return found
    tried = []
    for pattern in extra_dirs:
        dirs = sorted(glob.glob(os.path.expanduser(pattern)), key=_version_key, reverse=True)
        tried.append(pattern)
        for d in dirs:
            candidate = os.path.join(d, name)
            if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
                return candidate
    raise ServerError(
        f"{name} not found on PATH nor in {', '.join(tried) or '(no other place)'}; "
        f"{INSTALL_HINT}")


_PR_SET_PDEATHSIG = 1
try:
    _libc = ctypes.CDLL(None, use_errno=True)
    _prctl = _libc.prctl
except (OSError, AttributeError):  # not Linux
    _prctl = None


def _die_with_parent() -> None:
    """preexec_fn: the server gets SIGKILL when the test process goes away."""
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


_open_servers: "weakref.WeakSet[Server]" = weakref.WeakSet()


@atexit.register
def _close_all() -> None:
    for server in list(_open_servers):
        try:
            server.close()
        except Exception:
            pass


class _PortTaken(Exception):
    pass


# ---------------------------------------------------------------------------
# the base class

class Server:
    """One server process on a private port and temp dir. Subclasses provide
    `_command()` and `_ping()`, and optionally `_prepare()` and `_after_start()`."""

    name = "server"
    stop_signal = signal.SIGTERM
    stop_timeout = 10.0
    attempts = 3            # a port taken between free_port() and bind() is retried

    def __init__(self, start_timeout: float | None = None):
        if start_timeout is None:
            start_timeout = float(os.environ.get("FLOWTWIST_SERVER_TIMEOUT", "30"))
        self.start_timeout = start_timeout
        self.host = HOST
        self.port: int | None = None
        self.tmpdir: str | None = None
        self.proc: subprocess.Popen | None = None
        self.startup_seconds: float | None = None

    # -- for subclasses ------------------------------------------------------

    def _command(self) -> list[str]:
        raise NotImplementedError

    def _ping(self) -> bool:
        """True once the server answers a real request; may raise OSError."""
        raise NotImplementedError

    def _prepare(self) -> None:
        """Runs before each start (the temp dir and port exist)."""

    def _after_start(self) -> None:
        """Runs once the server answers."""

    def _popen_kwargs(self) -> dict:
        return {}

    # -- paths ---------------------------------------------------------------

    @property
    def log_path(self) -> str:
        assert self.tmpdir
        return os.path.join(self.tmpdir, f"{self.name}.log")

    def log_tail(self, lines: int = 40) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - 16384))
                text = f.read().decode("utf-8", "replace")
        except (OSError, AssertionError):
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:]) or "(empty log)"

    # -- life cycle ----------------------------------------------------------

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> "Server":
        if self.running:
            return self
        fresh = self.tmpdir is None
        for attempt in range(self.attempts):
            if fresh:
                self.tmpdir = tempfile.mkdtemp(prefix=f"flowtwist-{self.name}-")
                self.port = free_port()
                _open_servers.add(self)
            try:
                self._start_once()
                return self
            except _PortTaken:
                if not fresh or attempt == self.attempts - 1:
                    tail = self.log_tail()
                    self.close() if fresh else self.stop()
                    raise ServerError(
                        f"{self.name}: port {self.port} is in use\n--- log tail ---\n"
                        f"{tail}") from None
                self.close()
            except BaseException:
                if fresh:
                    self.close()
                else:
                    self.stop()
                raise
        raise AssertionError("unreachable")

    def _start_once(self) -> None:
        began = time.monotonic()
        self._prepare()
        cmd = self._command()
        kwargs = dict(cwd=self.tmpdir, stdin=subprocess.DEVNULL,
                      start_new_session=True, preexec_fn=_die_with_parent)
        kwargs.update(self._popen_kwargs())
        with open(self.log_path, "ab") as log:
            try:
                self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                             **kwargs)
            except OSError as e:
                raise ServerError(f"{self.name}: cannot run {cmd[0]}: {e}") from e
        self._wait_ready(cmd)
        self._after_start()
        self.startup_seconds = time.monotonic() - began

    def _wait_ready(self, cmd: list[str]) -> None:
        deadline = time.monotonic() + self.start_timeout
        last_error: BaseException | None = None
        while True:
            code = self.proc.poll()
            if code is not None:
                tail = self.log_tail()
                if "address already in use" in tail.lower():
                    raise _PortTaken()
                raise ServerError(
                    f"{self.name} exited with status {code} before it was ready\n"
                    f"command: {' '.join(cmd)}\n--- log tail ({self.log_path}) ---\n{tail}")
            try:
                if self._ping():
                    return
            except Exception as e:  # not up yet
                last_error = e
            if time.monotonic() > deadline:
                self.stop()
                raise ServerError(
                    f"{self.name} did not answer on {self.host}:{self.port} within "
                    f"{self.start_timeout:.0f}s (last error: {last_error!r})\n"
                    f"command: {' '.join(cmd)}\n--- log tail ({self.log_path}) ---\n"
                    f"{self.log_tail()}")
            time.sleep(0.05)

    def stop(self) -> None:
        """Stop the process (gracefully, then SIGKILL); keep port and data."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        try:
            proc.send_signal(self.stop_signal)
            proc.wait(timeout=self.stop_timeout)
        except subprocess.TimeoutExpired:
            self._kill_group(proc)
        except ProcessLookupError:
            pass
        # Children that outlived their leader (e.g. PostgreSQL backends).
        self._kill_group(proc)

    def kill(self) -> None:
        """SIGKILL the server, as a crash would; keep port and data."""
        proc, self.proc = self.proc, None
        if proc is not None:
            self._kill_group(proc)

    @staticmethod
    def _kill_group(proc: subprocess.Popen) -> None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            proc.kill()
        except ProcessLookupError:
            pass
        proc.wait()

    def restart(self) -> "Server":
        self.stop()
        return self.start()

    def close(self) -> None:
        """Stop the server and remove its temp dir."""
        self.stop()
        _open_servers.discard(self)
        tmpdir, self.tmpdir = self.tmpdir, None
        if tmpdir:
            shutil.rmtree(tmpdir, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        state = "running" if self.running else "stopped"
        return f"<{type(self).__name__} {self.host}:{self.port} {state}>"


# ---------------------------------------------------------------------------
# Redis

class RedisServer(Server):
    """redis-server without persistence. `.url` is redis://127.0.0.1:PORT/0."""

    name = "redis"

    def __init__(self, *extra_args: str, start_timeout: float | None = None):
        super().__init__(start_timeout)
        self.extra_args = list(extra_args)
        self.binary = find_binary("redis-server", ["/usr/local/bin", "/usr/sbin"],
                                  env="REDIS_SERVER_BIN")

    @property
    def url(self) -> str:
        return self.url_for(0)

    def url_for(self, db: int) -> str:
        return f"redis://{self.host}:{self.port}/{db}"

    def _command(self):
        return [self.binary,
                "--port", str(self.port), "--bind", self.host,
                "--dir", self.tmpdir,
                "--save", "", "--appendonly", "no",
                "--daemonize", "no", "--logfile", "",
                *self.extra_args]

    def command(self, *args: str | bytes, timeout: float = 5.0) -> bytes:
        """Send one command over a raw socket; the first line of the reply."""
        parts = [a.encode() if isinstance(a, str) else a for a in args]
        payload = b"*%d\r\n" % len(parts) + b"".join(
            b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)
        with socket.create_connection((self.host, self.port), timeout=timeout) as s:
            s.sendall(payload)
            data = b""
            while b"\r\n" not in data:
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
        return data.split(b"\r\n", 1)[0]

    def _ping(self):
        return self.command("PING", timeout=1.0) == b"+PONG"


# ---------------------------------------------------------------------------
# PostgreSQL

def _pg_bindir() -> str:
    if os.environ.get("PG_BINDIR"):
        return os.environ["PG_BINDIR"]
    # Debian's versioned directories first (highest version), then PATH; a symlinked
    # initdb (e.g. /usr/local/bin/initdb) is followed to the directory of the real one.
    for pattern in ["/usr/lib/postgresql/*/bin", "/usr/pgsql-*/bin", "/usr/local/pgsql/bin"]:
        for d in sorted(glob.glob(pattern), key=_version_key, reverse=True):
            if os.access(os.path.join(d, "initdb"), os.X_OK):
                return d
    initdb = find_binary("initdb")
    return os.path.dirname(os.path.realpath(initdb))


class PostgresServer(Server):
    """A throwaway PostgreSQL cluster (fsync off, trust auth) with a database
    `flowtwist`. `.dsn` is postgresql://postgres@127.0.0.1:PORT/flowtwist.

    initdb and postgres refuse to run as root, so as root they run as the system user
    `postgres` (created by the Debian package), or $FLOWTWIST_PG_USER."""

    name = "postgres"
    stop_signal = signal.SIGINT       # "fast" shutdown; SIGTERM waits for clients
    superuser = "postgres"

    def __init__(self, database: str = "flowtwist", start_timeout: float | None = None):
        super().__init__(start_timeout)
        self.database = database
        self.bindir = _pg_bindir()
        for tool in ("initdb", "postgres"):
            if not os.access(os.path.join(self.bindir, tool), os.X_OK):
                raise ServerError(f"{tool} not found in {self.bindir}; {INSTALL_HINT}")
        self.os_user: pwd.struct_passwd | None = None
        if os.geteuid() == 0:
            user = os.environ.get("FLOWTWIST_PG_USER", "postgres")
            try:
                self.os_user = pwd.getpwnam(user)
            except KeyError:
                raise ServerError(
                    f"running as root, PostgreSQL needs an unprivileged system user "
                    f"{user!r}, which does not exist; {INSTALL_HINT} "
                    f"(the postgresql package creates it)") from None

    @property
    def data_dir(self) -> str:
        return os.path.join(self.tmpdir, "data")

    @property
    def dsn(self) -> str:
        return self.dsn_for(self.database)

    def dsn_for(self, database: str) -> str:
        return f"postgresql://{self.superuser}@{self.host}:{self.port}/{database}"

    def _popen_kwargs(self):
        env = dict(os.environ, LC_ALL="C", LANG="C", TZ="UTC")
        if self.os_user is None:
            return {"env": env}
        env.update(HOME=self.tmpdir, USER=self.os_user.pw_name,
                   LOGNAME=self.os_user.pw_name)
        return {"env": env, "user": self.os_user.pw_uid, "group": self.os_user.pw_gid,
                "extra_groups": []}

    def _prepare(self):
        if self.os_user is not None:
            os.chown(self.tmpdir, self.os_user.pw_uid, self.os_user.pw_gid)
        if os.path.exists(os.path.join(self.data_dir, "PG_VERSION")):
            return
        cmd = [os.path.join(self.bindir, "initdb"), "-D", self.data_dir,
               "-U", self.superuser, "-A", "trust", "-E", "UTF8", "--locale=C",
               "--no-sync"]
        with open(self.log_path, "ab") as log:
            result = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, cwd=self.tmpdir,
                                    timeout=120, **self._popen_kwargs())
        if result.returncode != 0:
            raise ServerError(f"initdb failed (status {result.returncode})\n"
                              f"command: {' '.join(cmd)}\n--- log tail ---\n"
                              f"{self.log_tail()}")

    def _command(self):
        settings = {
            "listen_addresses": self.host,
            "port": str(self.port),
            "unix_socket_directories": self.tmpdir,
            # fsync off loses data only in an OS crash; a killed server keeps every
            # commit (synchronous_commit stays on for crash tests to mean something).
            "fsync": "off",
            "full_page_writes": "off",
            "max_connections": "200",
            "shared_buffers": "32MB",
            "logging_collector": "off",
            "log_min_messages": "warning",
        }
        cmd = [os.path.join(self.bindir, "postgres"), "-D", self.data_dir]
        for key, value in settings.items():
            cmd += ["-c", f"{key}={value}"]
        return cmd

    def connect(self, database: str | None = None, **kwargs):
        import psycopg2
        conn = psycopg2.connect(host=self.host, port=self.port, user=self.superuser,
                                dbname=database or self.database, **kwargs)
        return conn

    def _ping(self):
        conn = self.connect("postgres", connect_timeout=2)
        conn.close()
        return True

    def _after_start(self):
        self.create_database(self.database)

    def create_database(self, name: str) -> str:
        """Create database `name` unless it exists; its DSN."""
        conn = self.connect("postgres")
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
                if cur.fetchone() is None:
                    cur.execute('CREATE DATABASE "%s"' % name.replace('"', '""'))
        finally:
            conn.close()
        return self.dsn_for(name)


# ---------------------------------------------------------------------------
# FerretDB (MongoDB wire protocol)

class MongoServer(Server):
    """FerretDB v1.24 on its PostgreSQL backend. `.url` is mongodb://127.0.0.1:PORT/.

    The PostgreSQL is one of its own (a `PostgresServer`, started on first start and
    closed with this server; `stop()`/`kill()` stop FerretDB only, so data survives a
    restart as it would with MongoDB), or the one passed as `postgres` (a database
    `ferretdb_<port>` on it).  The PostgreSQL backend filters by equality in SQL;
    FerretDB's SQLite backend (`handler="sqlite"`) decodes the whole collection in Go
    for anything but an `_id` lookup, which makes every uncached read cost ~1 s per
    20,000 messages."""

    name = "ferretdb"

    def __init__(self, start_timeout: float | None = None, *,
                 postgres: "PostgresServer | None" = None, handler: str = "postgresql"):
        super().__init__(start_timeout)
        self.binary = find_binary("ferretdb", ["~/go/bin", "/root/go/bin", "/usr/local/bin"],
                                  env="FERRETDB_BIN")
        if handler not in ("postgresql", "sqlite"):
            raise ValueError(f"unknown FerretDB handler {handler!r}")
        self.handler = handler
        self.postgres = postgres
        self._own_postgres = postgres is None and handler == "postgresql"
        self._pg_url: str | None = None

    @property
    def url(self) -> str:
        return f"mongodb://{self.host}:{self.port}/"

    def _prepare(self):
        if self.handler == "sqlite":
            os.makedirs(os.path.join(self.tmpdir, "sqlite"), exist_ok=True)
            return
        if self.postgres is None:
            self.postgres = PostgresServer(database="ferretdb",
                                           start_timeout=self.start_timeout)
        if not self.postgres.running:
            self.postgres.start()
        if self._pg_url is None:
            name = "ferretdb" if self._own_postgres else f"ferretdb_{self.port}"
            self._pg_url = self.postgres.create_database(name)

    def _command(self):
        if self.handler == "sqlite":
            backend = ["--handler=sqlite", f"--sqlite-url=file:{self.tmpdir}/sqlite/"]
        else:
            backend = ["--handler=postgresql", f"--postgresql-url={self._pg_url}"]
        return [self.binary,
                *backend,
                f"--listen-addr={self.host}:{self.port}",
                f"--state-dir={self.tmpdir}",
                "--debug-addr=-",          # no metrics/pprof listener on :8088
                "--telemetry=disable",
                "--log-level=info"]

    def close(self) -> None:
        super().close()
        if self._own_postgres and self.postgres is not None:
            self.postgres.close()
            self.postgres = None
            self._pg_url = None

    def _ping(self):
        try:
            import pymongo
        except ImportError:  # the test extra is missing: settle for the listener
            socket.create_connection((self.host, self.port), timeout=1).close()
            return True
        client = pymongo.MongoClient(self.url, serverSelectionTimeoutMS=1000,
                                     connectTimeoutMS=1000, directConnection=True)
        try:
            return client.admin.command("ping").get("ok") == 1
        finally:
            client.close()

    def _wait_ready(self, cmd):
        try:
            super()._wait_ready(cmd)
        except ServerError as e:
            if "version.txt" in str(e):
                raise ServerError(
                    f"{e}\n\n{self.binary} is a `go install` build of FerretDB, which cannot "
                    f"start; scripts/install-test-deps rebuilds it properly") from None
            raise


# ---------------------------------------------------------------------------
# ZooKeeper

def _zookeeper_classpath() -> str:
    if os.environ.get("ZOOKEEPER_CLASSPATH"):
        return os.environ["ZOOKEEPER_CLASSPATH"]
    # Debian: /usr/share/java/zookeeper.jar names its dependencies in its manifest.
    debian = "/usr/share/java/zookeeper.jar"
    if os.path.isfile(debian):
        jars = [debian]
        simple = "/usr/share/java/slf4j-simple.jar"     # logging to stderr, if present
        if os.path.isfile(simple):
            jars.append(simple)
        return ":".join(jars)
    # An Apache tarball unpacked somewhere usual.
    for home in [os.environ.get("ZOOKEEPER_HOME", ""), "/opt/zookeeper",
                 "/usr/local/zookeeper", "/usr/share/zookeeper"]:
        if home and glob.glob(os.path.join(home, "lib", "zookeeper-*.jar")):
            return os.path.join(home, "lib", "*")
    raise ServerError(f"ZooKeeper jars not found (/usr/share/java/zookeeper.jar); "
                      f"{INSTALL_HINT}")


class ZooKeeperServer(Server):
    """A standalone ZooKeeper (ZooKeeperServerMain, in the foreground) with a minimal
    zoo.cfg. `.hosts` is 127.0.0.1:PORT (a kazoo `hosts` string)."""

    name = "zookeeper"

    def __init__(self, start_timeout: float | None = None):
        super().__init__(start_timeout)
        self.java = find_binary("java", ["/usr/lib/jvm/*/bin"], env="JAVA_BIN")
        self.classpath = _zookeeper_classpath()

    @property
    def hosts(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def config_path(self) -> str:
        return os.path.join(self.tmpdir, "zoo.cfg")

    def _prepare(self):
        data = os.path.join(self.tmpdir, "data")
        os.makedirs(data, exist_ok=True)
        config = {
            "tickTime": "2000",
            "dataDir": data,
            "clientPort": str(self.port),
            "clientPortAddress": self.host,
            "maxClientCnxns": "0",
            "forceSync": "no",
            "admin.enableServer": "false",
            "4lw.commands.whitelist": "ruok,srvr,stat,mntr,cons",
        }
        with open(self.config_path, "w") as f:
            f.writelines(f"{k}={v}\n" for k, v in config.items())

    def _command(self):
        return [self.java,
                "-Xmx256m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1",
                "-Djava.net.preferIPv4Stack=true",
                "-Dzookeeper.admin.enableServer=false",
                "-Dzookeeper.jmx.log4j.disable=true",
                "-Dorg.slf4j.simpleLogger.showDateTime=true",
                "-cp", self.classpath,
                "org.apache.zookeeper.server.ZooKeeperServerMain",
                self.config_path]

    def four_letter_word(self, word: str, timeout: float = 2.0) -> str:
        with socket.create_connection((self.host, self.port), timeout=timeout) as s:
            s.sendall(word.encode())
            chunks = []
            while True:
                chunk = s.recv(4096)
                if not chunk:
                    break
                chunks.append(chunk)
        return b"".join(chunks).decode("utf-8", "replace")

    def _ping(self):
        # `srvr` reports the mode only once the server is actually serving requests.
        return "Mode:" in self.four_letter_word("srvr", timeout=1.0)
