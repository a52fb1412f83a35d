"""WebSocket fan-out benchmark: one sender, many WebSocket clients on one flow.

    .venv/bin/python -m bench.ws_bench                 # all phases, ~2 minutes
    .venv/bin/python -m bench.ws_bench --only memory   # throughput | latency | memory

(a) throughput: one sender posts over its own WebSocket (pipelined `post` ops, at
    most 64 unanswered) to a flow with 100, then 1,000 subscribed WebSocket clients;
    deliveries/s = messages x receivers / (first send → last delivery at any client).
(b) latency: 100 msg/s for 10 s to 1,000 clients; each message carries its send time,
    one client in 10 measures send → receipt (same clock) for every message; p50/p99/max.
(c) memory: VmRSS of the server before and after 10,000 idle subscribed WebSocket
    connections (after a warm-up of 200 opened and closed), divided by 10,000.

Every phase also prints the server's CPU time (user + system, from /proc/<pid>/stat
before and after) per delivery: unlike deliveries/s and latency it barely depends on
what else the machine runs.  `--profile PATH` runs the server under cProfile.

The receivers are plain sockets spread over 4 processes (epoll, no asyncio): each
walks the frame boundaries of what it reads (answering pings, counting messages) and
only one client in 10 looks inside a message for its send time, so that the clients,
not the server, are the cheap side.  The sender is one asyncio WebSocket.
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import json
import multiprocessing
import os
import re
import resource
import select
import socket
import struct
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.core_bench import loadavg, machine, pct, raise_nofile, rss_kib  # noqa: E402
from tests.conftest import World  # noqa: E402
from tests.support import Flowtwist  # noqa: E402

CTX = multiprocessing.get_context("fork")
SENT_AT = re.compile(rb'"content":"t=([0-9.]+) ')


# ------------------------------------------------------------------ a tiny client

class Socket:
    def __init__(self, reader, writer):
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int, token: str) -> "Socket":
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write((f"GET /ws?access_token={token} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                      f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                      "Sec-WebSocket-Version: 13\r\n\r\n").encode())
        head = await reader.readuntil(b"\r\n\r\n")
        if b" 101 " not in head.split(b"\r\n", 1)[0]:
            raise RuntimeError(head.decode(errors="replace"))
        return cls(reader, writer)

    def send(self, obj, opcode: int = 1) -> None:
        data = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
        mask = os.urandom(4)
        n = len(data)
        head = bytes([0x80 | opcode])
        if n < 126:
            head += bytes([0x80 | n])
        elif n < 65536:
            head += bytes([0x80 | 126]) + struct.pack("!H", n)
        else:
            head += bytes([0x80 | 127]) + struct.pack("!Q", n)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(data)) if n < 256 else \
            (int.from_bytes(data, "big") ^ int.from_bytes((mask * (n // 4 + 1))[:n], "big")
             ).to_bytes(n, "big")
        self.writer.write(head + mask + masked)

    async def recv(self) -> bytes:
        """The next text frame's payload (answers pings itself)."""
        while True:
            b0, b1 = await self.reader.readexactly(2)
            n = b1 & 0x7F
            if n == 126:
                n = struct.unpack("!H", await self.reader.readexactly(2))[0]
            elif n == 127:
                n = struct.unpack("!Q", await self.reader.readexactly(8))[0]
            payload = await self.reader.readexactly(n) if n else b""
            opcode = b0 & 0x0F
            if opcode == 9:
                self.send(payload, opcode=10)
            elif opcode == 8:
                raise EOFError("closed by the server")
            elif opcode == 1:
                return payload

    async def until(self, marker: bytes) -> bytes:
        while True:
            frame = await self.recv()
            if marker in frame:
                return frame


async def subscriber(port, token, flow, ready: list) -> Socket:
    s = await Socket.open(port, token)
    await s.until(b'"op":"hello"')
    s.send({"op": "subscribe", "flows": [flow], "private": False})
    await s.until(b'"op":"synced"')
    ready.append(s)
    return s


# ------------------------------------------------------------------ receiver processes

class Raw:
    """A blocking-then-non-blocking socket for the receivers: every frame boundary is
    walked (to answer pings and count messages) but only sampled clients look inside
    a message for its send time, so that reading 100,000 frames/s stays cheap."""
    __slots__ = ("sock", "buf", "count", "last", "sample")

    def __init__(self, sock, sample: bool):
        self.sock, self.buf, self.count, self.last, self.sample = sock, bytearray(), 0, 0.0, sample

    def send(self, data: bytes, opcode: int = 1) -> None:
        mask = os.urandom(4)
        n = len(data)
        head = bytes([0x80 | opcode]) + (bytes([0x80 | n]) if n < 126 else
                                         bytes([0x80 | 126]) + struct.pack("!H", n))
        self.sock.sendall(head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(data)))

    def until(self, marker: bytes) -> None:
        """Blocking: read frames until a text frame containing `marker`."""
        while True:
            p = 0
            for opcode, a, b in self._walk():
                p = b
                if opcode == 1 and self.buf.find(marker, a, b) >= 0:
                    del self.buf[:p]
                    return
            del self.buf[:p]
            data = self.sock.recv(1 << 16)
            if not data:
                raise EOFError("closed by the server")
            self.buf += data

    def _walk(self):
        buf, p, size = self.buf, 0, len(self.buf)
        while size - p >= 2:
            n = buf[p + 1] & 0x7F
            h = 2
            if n == 126:
                if size - p < 4:
                    break
                n, h = (buf[p + 2] << 8) | buf[p + 3], 4
            elif n == 127:
                if size - p < 10:
                    break
                n, h = int.from_bytes(buf[p + 2:p + 10], "big"), 10
            if size - p < h + n:
                break
            if buf[p] & 0x0F == 9:
                self.send(bytes(buf[p + h:p + h + n]), opcode=10)
            yield buf[p] & 0x0F, p + h, p + h + n
            p += h + n


def open_raw(port: int, token: str, sample: bool) -> Raw:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall((f"GET /ws?access_token={token} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                  f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                  "Sec-WebSocket-Version: 13\r\n\r\n").encode())
    return Raw(sock, sample)


def handshake(raw: Raw) -> None:
    while b"\r\n\r\n" not in raw.buf:
        data = raw.sock.recv(4096)
        if not data:
            raise EOFError("closed during the handshake")
        raw.buf += data
    head, _, rest = bytes(raw.buf).partition(b"\r\n\r\n")
    if b" 101 " not in head.split(b"\r\n", 1)[0]:
        raise RuntimeError(head.decode(errors="replace"))
    raw.buf = bytearray(rest)


def connect_raw(port, token, flow, n, sample_every, batch=50) -> list[Raw]:
    """n subscribed clients, opened `batch` at a time with pipelined requests."""
    out: list[Raw] = []
    sub = json.dumps({"op": "subscribe", "flows": [flow], "private": False}).encode()
    for i in range(0, n, batch):
        group = [open_raw(port, token, (i + j) % sample_every == 0)
                 for j in range(min(batch, n - i))]
        for raw in group:
            handshake(raw)
            raw.until(b'"op":"hello"')
            raw.send(sub)
        for raw in group:
            raw.until(b'"op":"synced"')
        out += group
    return out


def _receivers(port, token, flow, n, expected, sample_every, started, go, out):
    clients = connect_raw(port, token, flow, n, sample_every)
    started.put(len(clients))
    ep = select.epoll()
    by_fd = {}
    for raw in clients:
        raw.sock.setblocking(False)
        by_fd[raw.sock.fileno()] = raw
        ep.register(raw.sock.fileno(), select.EPOLLIN)
    latencies: list[float] = []
    waiting = len(clients)
    marker = b'"event":"message"'
    deadline = time.time() + 600
    pause = CLIENT_PAUSE
    while waiting and time.time() < deadline:
        if pause:
            time.sleep(pause)
        for fd, _ in ep.poll(1.0):
            raw = by_fd[fd]
            try:
                data = raw.sock.recv(1 << 18)
            except BlockingIOError:
                continue
            if not data:
                ep.unregister(fd)
                waiting -= raw.count < expected
                raw.count = expected + 1
                continue
            now = time.time()
            raw.buf += data
            buf = raw.buf
            p = 0
            for opcode, a, b in raw._walk():
                p = b
                if opcode == 1 and buf.find(marker, a, b) >= 0:
                    raw.count += 1
                    if raw.sample:
                        m = SENT_AT.search(buf, a, b)
                        if m:
                            latencies.append(now - float(m.group(1)))
            del buf[:p]
            if raw.count >= expected and not raw.last:
                raw.last = now
                waiting -= 1
    ru = resource.getrusage(resource.RUSAGE_SELF)
    out.put((sum(min(r.count, expected) for r in clients), max(r.last for r in clients),
             latencies, ru.ru_utime + ru.ru_stime))
    for raw in clients:
        raw.sock.close()


def _idle(port, token, flow, n, started, done):
    async def main():
        ready: list[Socket] = []
        for i in range(0, n, 200):
            await asyncio.gather(*(subscriber(port, token, flow, ready)
                                   for _ in range(min(200, n - i))))
        started.put(len(ready))

        async def drain(s):      # answer pings, ignore the rest
            try:
                while True:
                    await s.recv()
            except Exception:
                pass
        tasks = [asyncio.ensure_future(drain(s)) for s in ready]
        await asyncio.get_running_loop().run_in_executor(None, done.get)
        for t in tasks:
            t.cancel()
        for s in ready:
            s.writer.close()

    asyncio.run(main())


# ------------------------------------------------------------------ the sender

async def send_messages(port, token, flow, count, rate=None, window=64) -> float:
    """Post `count` messages over one WebSocket; returns the first send time."""
    s = await Socket.open(port, token)
    await s.until(b'"op":"hello"')
    acks = asyncio.Semaphore(window)
    answered = [0]

    async def read_acks():
        while answered[0] < count:
            frame = await s.recv()
            if b'"op":"ack"' in frame or b'"op":"error"' in frame:
                if b'"op":"error"' in frame:
                    print("sender error:", frame[:200])
                answered[0] += 1
                acks.release()
    reader = asyncio.ensure_future(read_acks())
    start = time.time()
    for i in range(count):
        if rate:
            delay = start + i / rate - time.time()
            if delay > 0:
                await asyncio.sleep(delay)
        await acks.acquire()
        s.send({"op": "post", "ref": i, "flow": flow, "event": "message",
                "content": f"t={time.time():.6f} message {i}"})
    await reader
    s.writer.close()
    return start


PROCS = 4              # receiver processes
SAMPLE_EVERY = 10      # one client in 10 reads every message's send time
# Receivers sleep this long between reading rounds instead of waiting in epoll: over
# loopback, waking a receiver that waits in epoll_wait is work the kernel does in the
# server's send() and charges to the server (a remote client costs it nothing).
CLIENT_PAUSE = 0.001


def fan_out(server, world, receivers, count, rate=None):
    started, out = CTX.Queue(), CTX.Queue()
    procs = PROCS
    per = [receivers // procs + (1 if i < receivers % procs else 0) for i in range(procs)]
    workers = [CTX.Process(target=_receivers, args=(server.http_port, world.bob.token,
                                                   world.main["id"], n, count, SAMPLE_EVERY,
                                                   started, None, out)) for n in per if n]
    for w in workers:
        w.start()
    connected = sum(started.get(timeout=300) for _ in workers)
    assert connected == receivers, connected
    cpu0 = server_cpu(server)
    first = asyncio.run(send_messages(server.http_port, world.alice.token, world.main["id"],
                                      count, rate))
    results = [out.get(timeout=600) for _ in workers]
    cpu = server_cpu(server) - cpu0
    for w in workers:
        w.join(30)
    delivered = sum(r[0] for r in results)
    last = max(r[1] for r in results)
    latencies = sorted(x for r in results for x in r[2])
    return Run(delivered, last - first, latencies, cpu, sum(r[3] for r in results), loadavg())


class Run:
    def __init__(self, delivered, elapsed, latencies, cpu, client_cpu, load):
        self.delivered, self.elapsed, self.latencies = delivered, elapsed, latencies
        self.cpu, self.client_cpu, self.load = cpu, client_cpu, load

    def costs(self) -> str:
        """The load-independent figure: server CPU (user + system, from /proc) per
        delivery, which includes the per-message work (REST-like post op, store,
        bus) spread over the receivers."""
        return (f"server CPU {self.cpu:.1f} s = {self.cpu / max(1, self.delivered) * 1e6:.1f} µs "
                f"per delivery; receivers' CPU {self.client_cpu:.1f} s; load average "
                f"{self.load}")


def server_cpu(server) -> float:
    with open(f"/proc/{server.proc.pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


PROFILE: str | None = None     # --profile: cProfile stats of the server (twistd --profile)


class ProfiledFlowtwist(Flowtwist):
    def args(self) -> list[str]:
        args = super().args()
        i = args.index("flowtwist")
        return args[:i] + [f"--profile={PROFILE}", "--profiler=cprofile", "--savestats"] + \
            args[i:]


def fresh_server():
    server = (ProfiledFlowtwist() if PROFILE else Flowtwist()).start()
    return server, World(server)


def throughput(receivers, count):
    server, world = fresh_server()
    try:
        run = fan_out(server, world, receivers, count)
        delivered, elapsed, lat = run.delivered, run.elapsed, run.latencies
        print(f"(a) throughput, {receivers} clients, {count} messages: "
              f"{delivered:,} / {receivers * count:,} delivered in {elapsed:.2f} s = "
              f"{delivered / elapsed:,.0f} deliveries/s ({count / elapsed:,.0f} msg/s); "
              f"p50 {pct(lat, .5):.0f} ms p99 {pct(lat, .99):.0f} ms; {run.costs()}",
              flush=True)
    finally:
        server.close()


def latency(receivers=1000, rate=100, seconds=10):
    server, world = fresh_server()
    try:
        count = rate * seconds
        run = fan_out(server, world, receivers, count, rate=rate)
        delivered, elapsed, lat = run.delivered, run.elapsed, run.latencies
        print(f"(b) latency, {rate} msg/s for {seconds} s to {receivers} clients: "
              f"p50 {pct(lat, .5):.1f} ms p99 {pct(lat, .99):.1f} ms max {lat[-1] * 1000:.1f} ms "
              f"({len(lat):,} sampled); {delivered:,} / {receivers * count:,} delivered in "
              f"{elapsed:.1f} s; {run.costs()}", flush=True)
    finally:
        server.close()


def memory(n=10000, procs=4):
    server, world = fresh_server()
    try:
        warm_started, warm_done = CTX.Queue(), CTX.Queue()
        w = CTX.Process(target=_idle, args=(server.http_port, world.bob.token, world.main["id"],
                                           200, warm_started, warm_done))
        w.start()
        warm_started.get(timeout=120)
        warm_done.put(1)
        w.join(30)
        time.sleep(2)
        before = rss_kib(server.proc.pid)
        started, done = CTX.Queue(), CTX.Queue()
        workers = [CTX.Process(target=_idle, args=(server.http_port, world.bob.token,
                                                  world.main["id"], n // procs, started, done))
                   for _ in range(procs)]
        for w in workers:
            w.start()
        opened = sum(started.get(timeout=600) for _ in workers)
        time.sleep(2)
        after = rss_kib(server.proc.pid)
        print(f"(c) memory: {opened:,} idle WebSockets: RSS {before / 1024:.0f} → "
              f"{after / 1024:.0f} MiB = {(after - before) / opened:.1f} KiB per connection",
              flush=True)
        for _ in workers:
            done.put(1)
        for w in workers:
            w.join(60)
    finally:
        server.close()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", choices=("throughput", "latency", "memory"))
    parser.add_argument("--rate", type=int, default=100, help="latency phase: msg/s")
    parser.add_argument("--clients", type=int, default=1000, help="latency phase: clients")
    parser.add_argument("--seconds", type=int, default=10, help="latency phase: duration")
    parser.add_argument("--idle", type=int, default=10000, help="memory phase: connections")
    parser.add_argument("--procs", type=int, default=4, help="receiver processes")
    parser.add_argument("--client-pause", type=float, default=1.0, metavar="MS",
                        help="receivers' sleep between reading rounds (0: wait in epoll)")
    parser.add_argument("--profile", metavar="PATH",
                        help="run the server under cProfile; stats of the last server in PATH")
    args = parser.parse_args()
    global PROCS, PROFILE, CLIENT_PAUSE
    PROCS = args.procs
    CLIENT_PAUSE = args.client_pause / 1000
    PROFILE = os.path.abspath(args.profile) if args.profile else None
    raise_nofile()
    print(f"machine: {machine()}; load average {loadavg()}", flush=True)
    if args.only in (None, "throughput"):
        throughput(100, 2000)
        throughput(1000, 300)
    if args.only in (None, "latency"):
        latency(args.clients, args.rate, args.seconds)
    if args.only in (None, "memory"):
        memory(args.idle)
    print(f"load average after: {loadavg()}")


if __name__ == "__main__":
    main()
