"""A raw-socket IRC client for tests: send lines, read lines, sync with PING."""
from __future__ import annotations

import itertools
import socket
import time

_sync = itertools.count()


class RawClient:
    def __init__(self, port: int, timeout: float = 10.0):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buffer = b""
        self.timeout = timeout
        self.closed = False

    def send(self, *lines) -> None:
        data = b""
        for line in lines:
            data += (line if isinstance(line, bytes) else line.encode("utf-8")) + b"\r\n"
        self.sock.sendall(data)

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def line(self, timeout: float | None = None) -> str:
        """The next line (without CRLF); raises TimeoutError or EOFError."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while b"\r\n" not in self.buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no line in time; have {self.buffer!r}")
            self.sock.settimeout(remaining)
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                raise TimeoutError(f"no line in time; have {self.buffer!r}")
            if not chunk:
                self.closed = True
                raise EOFError(f"connection closed; have {self.buffer!r}")
            self.buffer += chunk
        raw, self.buffer = self.buffer.split(b"\r\n", 1)
        assert len(raw) + 2 <= 512, f"line over 512 bytes: {raw!r}"
        return raw.decode("utf-8")

    def until(self, predicate, timeout: float | None = None) -> list[str]:
        """Lines up to and including the first one matching `predicate` (a
        function or a substring)."""
        test = predicate if callable(predicate) else (lambda l: predicate in l)
        out = []
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            line = self.line(max(0.01, deadline - time.monotonic()))
            out.append(line)
            if test(line):
                return out

    def sync(self) -> list[str]:
        """Everything the server sent in reply to the lines before this call (the
        server handles one connection's lines in order), PINGs dropped."""
        token = f"sync{next(_sync)}"
        self.send(f"PING :{token}")
        lines = self.until(lambda l: l.endswith(f"PONG irc.example.com :{token}"))
        return [l for l in lines[:-1] if not l.startswith("PING ")]

    def command(self, *lines) -> list[str]:
        self.send(*lines)
        return self.sync()

    def quiet(self, seconds: float = 0.3) -> list[str]:
        out = []
        deadline = time.monotonic() + seconds
        while True:
            try:
                out.append(self.line(max(0.01, deadline - time.monotonic())))
            except TimeoutError:
                return [l for l in out if not l.startswith("PING ")]
            if time.monotonic() >= deadline:
                return [l for l in out if not l.startswith("PING ")]

    def wait_closed(self, timeout: float = 5.0) -> list[str]:
        out = []
        try:
            while True:
                out.append(self.line(timeout))
        except EOFError:
            return out

    def register(self, nick="guest", user="guest", password: str | None = None) -> list[str]:
        """NICK/USER (with PASS first if given); returns the lines through the PING."""
        if password is not None:
            self.send(f"PASS {password}")
        self.send(f"NICK {nick}", f"USER {user} 0 * :{nick.title()}")
        return self.until(lambda l: l.startswith("PING "))

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass
