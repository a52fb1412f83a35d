"""Run a real flowtwist process for integration tests, and talk to it."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import closing

import requests

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)


def free_port() -> int:
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout: float = 20.0, proc=None, log_path=None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"flowtwist exited with {proc.returncode}:\n{_tail(log_path)}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"port {port} did not open within {timeout}s:\n{_tail(log_path)}")


def _tail(path, n=40) -> str:
    if not path or not os.path.exists(path):
        return ""
    with open(path, errors="replace") as f:
        return "".join(f.readlines()[-n:])


def test_env(**extra) -> dict:
    env = dict(os.environ)
    env["FLOWTWIST_BCRYPT_ROUNDS"] = "4"     # the slow hash is not what we test here
    env.pop("FLOWTWIST_CONFIG", None)
    # twistd finds twisted/plugins/flowtwist_plugin.py through sys.path; a
    # setuptools "editable finder" install does not expose it from another cwd.
    env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, env.get("PYTHONPATH")) if p)
    env.update(extra)
    return env


class Flowtwist:
    """A `twistd -n flowtwist` process on free loopback ports with its own data folder.

    `extra_args` add options (e.g. ["--irc", "tcp:PORT"]); `ports` names more
    listeners to open on free ports, e.g. {"irc": None} → `--irc tcp:<port>:interface=127.0.0.1`.
    """

    def __init__(self, data_dir: str | None = None, extra_args=(), ports=(), env=None,
                 demo: bool = False):
        self._tmp = None
        if data_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="flowtwist-test-")
            data_dir = self._tmp.name
        self.data = data_dir
        self.http_port = free_port()
        self.stream_port = free_port()
        self.ports = {name: free_port() for name in ports}
        self.api = f"http://127.0.0.1:{self.http_port}"
        self.stream = f"http://127.0.0.1:{self.stream_port}"
        self.extra_args = list(extra_args)
        self.env = test_env(**(env or {}))
        self.demo = demo
        self.proc = None
        self.log_path = os.path.join(self.data, "twistd.log")

    def args(self) -> list[str]:
        args = [os.path.join(BIN, "twistd"), "-n", "--pidfile=", "flowtwist",
                "--data", self.data, "--demo", "yes" if self.demo else "no",
                "--http", f"tcp:{self.http_port}:interface=127.0.0.1",
                "--stream", f"tcp:{self.stream_port}:interface=127.0.0.1",
                "--public-url", self.api]
        for name, port in self.ports.items():
            args += [f"--{name}", f"tcp:{port}:interface=127.0.0.1"]
        return args + self.extra_args

    def start(self) -> "Flowtwist":
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.args(), stdout=log, stderr=subprocess.STDOUT,
                                     cwd=self.data, env=self.env)
        log.close()
        for port in [self.http_port, self.stream_port, *self.ports.values()]:
            wait_for_port(port, proc=self.proc, log_path=self.log_path)
        return self

    def stop(self, kill: bool = False) -> None:
        if self.proc is not None and self.proc.poll() is None:
            if kill:
                self.proc.kill()
            else:
                self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def close(self) -> None:
        self.stop()
        if self._tmp is not None:
            self._tmp.cleanup()

    def log(self) -> str:
        return _tail(self.log_path, 200)

    # ------------------------------------------------------------ admin

    def admin(self, *args: str) -> str:
        """Run flowtwist-admin on this server's configuration; returns its output."""
        result = subprocess.run(
            [os.path.join(BIN, "flowtwist-admin"), "--data", self.data, *self.admin_args(), *args],
            capture_output=True, text=True, env=self.env, timeout=60)
        if result.returncode != 0:
            raise RuntimeError(f"flowtwist-admin {args} failed: {result.stderr}")
        return result.stdout

    def admin_args(self) -> list[str]:
        out = []
        for i, arg in enumerate(self.extra_args):
            if arg in ("--postgres",):
                out += [arg, self.extra_args[i + 1]]
        return out

    def create_org(self, name: str) -> str:
        return self.admin("create-org", name).split()[2]

    def create_user(self, nick: str, org: str | None = None, password: str = "secret",
                    admin: bool = False) -> "User":
        args = ["create-user", "--email", f"{nick}@example.com", "--nick", nick,
                "--name", nick.title(), "--password", password]
        if org:
            args += ["--org", org]
        if admin:
            args.append("--admin")
        out = self.admin(*args).splitlines()
        uid = int(out[0].split()[1])
        token = out[1].split()[-1]
        return User(self, uid, f"{nick}@example.com", nick, password, token)

    def create_flow(self, org: str, name: str, members=(), access_mode="organization") -> dict:
        out = self.admin("create-flow", org, name, "--access-mode", access_mode).splitlines()
        flow_id, path = out[0].split()[1:3]
        for user in members:
            self.admin("add-member", path, user.email)
        return {"id": flow_id, "path": path, "api_token": out[1].split()[-1]}


class User:
    def __init__(self, server: Flowtwist, id: int, email: str, nick: str, password: str,
                 token: str):
        self.server, self.id, self.email, self.nick = server, id, email, nick
        self.password, self.token = password, token
        self.session = requests.Session()
        self.session.auth = (token, "DUMMY")
        self.session.headers["Accept"] = "application/json"

    def request(self, method: str, path: str, **kw) -> requests.Response:
        kw.setdefault("timeout", 30)
        return self.session.request(method, self.server.api + path, **kw)

    def get(self, path, **kw):
        return self.request("GET", path, **kw)

    def post(self, path, json_body=None, **kw):
        return self.request("POST", path, json=json_body, **kw)

    def put(self, path, json_body=None, **kw):
        return self.request("PUT", path, json=json_body, **kw)

    def delete(self, path, **kw):
        return self.request("DELETE", path, **kw)

    def say(self, flow: dict, content: str, **fields) -> dict:
        r = self.post("/messages", {"flow": flow["id"], "event": "message",
                                    "content": content, **fields})
        assert r.status_code == 201, r.text
        return r.json()

    def stream(self, params: dict | str, accept: str = "application/json",
               headers=None, path: str = "/flows") -> "StreamReader":
        return StreamReader(self, params, accept, headers or {}, path)


class StreamReader:
    """A streaming API client on a raw requests response."""

    def __init__(self, user: User, params, accept: str, headers: dict, path: str):
        if isinstance(params, str):
            params = {"filter": params}
        self.response = requests.get(user.server.stream + path, params=params,
                                     auth=(user.token, "x"), stream=True, timeout=10,
                                     headers={"Accept": accept, **headers})
        self.status = self.response.status_code
        self.sse = accept == "text/event-stream"
        self._raw = self.response.raw
        self._buffer = b""

    def _fill(self, deadline: float) -> bool:
        sock = self._socket()
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        sock.settimeout(remaining)
        try:
            chunk = self._raw.read1(65536) if hasattr(self._raw, "read1") else self._raw.read(1)
        except (socket.timeout, TimeoutError):
            return False
        except Exception as e:
            if "timed out" in str(e):
                return False
            raise
        if not chunk:
            raise EOFError("stream closed")
        self._buffer += chunk
        return True

    def _socket(self):
        fp = self._raw._fp.fp
        return fp.raw._sock if hasattr(fp, "raw") else fp._sock

    def next(self, timeout: float = 5.0) -> dict:
        """The next event (keep-alives skipped); raises TimeoutError."""
        deadline = time.monotonic() + timeout
        while True:
            event = self._take()
            if event is not None:
                return event
            if not self._fill(deadline):
                raise TimeoutError("no event in time")

    def _take(self):
        if self.sse:
            while b"\n\n" in self._buffer:
                block, self._buffer = self._buffer.split(b"\n\n", 1)
                event = {"data": None, "id": None}
                for line in block.split(b"\n"):
                    if line.startswith(b"data: "):
                        event["data"] = json.loads(line[6:])
                    elif line.startswith(b"id: "):
                        event["id"] = line[4:].decode()
                if event["data"] is not None:
                    msg = event["data"]
                    msg["_sse_id"] = event["id"]
                    return msg
            return None
        self._buffer = self._buffer.lstrip(b"\n")
        if b"\r\n" in self._buffer:
            line, self._buffer = self._buffer.split(b"\r\n", 1)
            return json.loads(line)
        return None

    def events(self, n: int, timeout: float = 10.0, skip=("activity.user",)) -> list[dict]:
        out = []
        deadline = time.monotonic() + timeout
        while len(out) < n:
            event = self.next(max(0.01, deadline - time.monotonic()))
            if event.get("event") not in skip:
                out.append(event)
        return out

    def quiet(self, seconds: float = 0.5, skip=("activity.user",)) -> list[dict]:
        """Everything that arrives within `seconds` (for asserting nothing arrives)."""
        out = []
        deadline = time.monotonic() + seconds
        while True:
            try:
                event = self.next(max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                return out
            if event.get("event") not in skip:
                out.append(event)

    def close(self):
        self.response.close()
