"""Core benchmark: flowtwist on the embedded default (SQLite stores, in-process bus).

    .venv/bin/python -m bench              # full run, about 70 seconds
    .venv/bin/python -m bench --quick      # about 35 seconds
    .venv/bin/python -m bench --backend production [--redis URL --mongo URL --postgres DSN]

(`python -m bench` is this module, bench/core_bench.py.)

Starts `twistd -n flowtwist --demo no` on free loopback ports with a temporary data
folder (tests/support.Flowtwist; users and flows made with flowtwist-admin) and
reports three figures:

a. throughput: REST `POST /messages` answered 201 (stored and published: a user's post
   waits for the consumer) per second, from 64 keep-alive connections, while 10 JSON
   stream subscribers of the flow must each receive every message;
b. latency: post-to-delivery p50/p99/max at a fixed rate of 300 msg/s (open loop: the
   clock starts at the scheduled send time) with 100 JSON stream subscribers;
c. memory: server RSS per idle JSON stream connection at 2,000 and 10,000
   connections (on a fresh server; VmRSS before and after, divided).

The load generators are asyncio processes on raw sockets, separate from the server;
their CPU time is printed next to the server's so that one can see which side was
the bottleneck.  Everything stays on 127.0.0.1 and every phase is bounded in time.
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import json
import multiprocessing
import os
import platform
import resource
import socket
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.production_backends import cpu_seconds, run_load  # noqa: E402
from tests.conftest import World  # noqa: E402
from tests.support import Flowtwist  # noqa: E402

CTX = multiprocessing.get_context("fork")


# ------------------------------------------------------------------ helpers

def raise_nofile() -> int:
    """Raise this process's file limit to the hard limit (inherited by the server)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def loadavg() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def machine() -> str:
    import twisted
    model = "?"
    try:
        with open("/proc/cpuinfo") as f:
            model = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    with open("/proc/meminfo") as f:
        mem = int(f.readline().split()[1]) // 1024
    return (f"{os.cpu_count()} CPUs ({model}), {mem} MiB RAM, Python "
            f"{platform.python_version()}, Twisted {twisted.__version__}, {platform.system()} "
            f"{platform.release()}")


def calibrate() -> float:
    """Milliseconds of CPU for a fixed piece of Python (JSON and dict work like a
    message's): this VM's speed varies over time, by up to ~1.5x between runs, and
    every figure above moves with it."""
    doc = {"event": "message", "content": "calibration message #tag @bob", "tags": ["tag"],
           "uuid": "0123456789abcdef", "user": "1", "sent": 1700000000000, "id": 1,
           "thread": {"id": "abc", "title": "calibration", "internal_comments": 0}}
    t = time.process_time()
    for i in range(20000):
        d = json.loads(json.dumps(doc))
        d["id"] = i
        {k: v for k, v in d.items() if k != "thread"}
    return (time.process_time() - t) * 1000


def pct(values: list[float], q: float) -> float:
    return values[min(len(values) - 1, int(q * len(values)))] * 1000 if values else float("nan")


def thread_cpu(pid: int) -> dict[int, tuple[str, float]]:
    """CPU seconds of each thread of a process: {tid: (name, seconds)}."""
    out = {}
    tick = os.sysconf("SC_CLK_TCK")
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        out[int(tid)] = (stat[stat.index("(") + 1:stat.rindex(")")],
                         (int(fields[11]) + int(fields[12])) / tick)
    return out


def thread_split(pid: int, before: dict[int, tuple[str, float]]) -> str:
    """'reactor 12.3s, other threads 4.5s' since `before` (the main thread is the reactor;
    the others are the SQLite worker and Twisted's thread pool)."""
    main = other = 0.0
    for tid, (_, seconds) in thread_cpu(pid).items():
        spent = seconds - before.get(tid, ("", 0.0))[1]
        if tid == pid:
            main += spent
        else:
            other += spent
    return f"reactor thread {main:.1f}s, other threads {other:.1f}s"


class Backend:
    """Where the server keeps its data.

    embedded: SQLite stores and the in-process bus in a fresh temporary data folder
    (every server gets its own, so each needs its own users and flows);
    production: Redis bus, MongoDB message store, PostgreSQL directory, at the given
    URLs or, for those not given, on servers started here (tests/servers.py).  Every
    server of a run shares them, so users and flows are made once.
    """

    def __init__(self, kind: str = "embedded", redis: str | None = None,
                 mongo: str | None = None, postgres: str | None = None):
        self.kind = kind
        self.args: list[str] = []
        self.started: list = []
        self.world = None
        if kind == "production":
            from tests.servers import MongoServer, PostgresServer, RedisServer
            if not redis:
                self.started.append(RedisServer().start())
                redis = self.started[-1].url
            if not mongo:
                self.started.append(MongoServer().start())
                mongo = self.started[-1].url.rstrip("/") + "/bench"
            if not postgres:
                self.started.append(PostgresServer().start())
                postgres = self.started[-1].dsn
            self.args = ["--redis", redis, "--mongo", mongo, "--postgres", postgres]

    def describe(self) -> str:
        if self.kind == "embedded":
            return "embedded (SQLite stores, in-process bus)"
        return "production (" + " ".join(self.args) + ")"

    def world_for(self, server) -> World:
        if self.kind == "embedded":
            return World(server)
        if self.world is None:
            self.world = World(server)
        self.world.server = server
        return self.world

    def close(self) -> None:
        for s in self.started:
            s.close()


class BenchServer(Flowtwist):
    """Flowtwist on a Backend, with an optional cProfile run (twistd --profile)."""

    def __init__(self, profile: str | None = None, backend: Backend | None = None):
        super().__init__(extra_args=backend.args if backend else ())
        self.profile = profile

    def args(self) -> list[str]:
        args = super().args()
        if self.profile:
            i = args.index("flowtwist")
            args[i:i] = [f"--profile={self.profile}", "--profiler=cprofile", "--savestats"]
        return args


def auth_header(token: str) -> bytes:
    return b"Authorization: Basic " + base64.b64encode(f"{token}:x".encode()) + b"\r\n"


async def read_response(reader) -> int:
    status = int((await reader.readline()).split()[1])
    length = 0
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b""):
            break
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    await reader.readexactly(length)
    return status


# ------------------------------------------------------------------ (b) latency

def _latency_subscribers(port, token, flow_id, n, timed_every, ready, done, out):
    """n stream connections; every `timed_every`th parses latencies, all count."""
    async def client(i, latencies, counts):
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 22)
        writer.write(f"GET /flows?filter={flow_id} HTTP/1.1\r\nHost: bench\r\n"
                     f"Accept: application/json\r\n".encode() + auth_header(token) + b"\r\n")
        await reader.readuntil(b"\r\n\r\n")
        counts[0] += 1
        timed = i % timed_every == 0
        tail = b""
        while True:
            data = await reader.read(1 << 16)
            if not data:
                return
            now = time.time()
            if not timed:
                counts[1] += data.count(b'"content":"lat ')
                continue
            lines = (tail + data).split(b"\n")
            tail = lines.pop()
            for line in lines:
                at = line.find(b'"content":"lat ')
                if at >= 0:
                    seq, sent = line[at + 15:line.index(b'"', at + 15)].split()
                    latencies.append(now - float(sent))
                    counts[1] += 1

    async def main():
        latencies, counts = [], [0, 0]
        tasks = [asyncio.create_task(client(i, latencies, counts)) for i in range(n)]
        while counts[0] < n:
            await asyncio.sleep(0.02)
        ready.set()
        await asyncio.get_running_loop().run_in_executor(None, done.wait)
        await asyncio.sleep(1.0)        # the last deliveries
        for t in tasks:
            t.cancel()
        out.put((latencies, counts[1]))
    asyncio.run(main())


def _fixed_rate_poster(port, token, flow_id, rate, seconds, connections, out):
    async def main():
        queue: asyncio.Queue = asyncio.Queue()
        statuses: dict[int, int] = {}
        auth = auth_header(token)

        async def worker():
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            while True:
                item = await queue.get()
                if item is None:
                    writer.close()
                    return
                seq, sent = item
                body = json.dumps({"flow": flow_id, "event": "message",
                                   "content": f"lat {seq} {sent:.6f}"}).encode()
                writer.write(b"POST /messages HTTP/1.1\r\nHost: bench\r\n"
                             b"Content-Type: application/json\r\n" + auth
                             + b"Content-Length: %d\r\n\r\n" % len(body) + body)
                status = await read_response(reader)
                statuses[status] = statuses.get(status, 0) + 1

        workers = [asyncio.create_task(worker()) for _ in range(connections)]
        await asyncio.sleep(0.2)
        total = int(rate * seconds)
        start_wall, start = time.time(), time.monotonic()
        for seq in range(total):
            delay = start + seq / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            queue.put_nowait((seq, start_wall + seq / rate))
        for _ in workers:
            queue.put_nowait(None)
        await asyncio.gather(*workers)
        out.put((total, statuses, time.monotonic() - start))
    asyncio.run(main())


def latency_phase(server, world, rate, seconds, subscribers, sub_procs=2, timed_every=4):
    out = CTX.Queue()
    done = CTX.Event()
    procs, readies = [], []
    per = [subscribers // sub_procs + (i < subscribers % sub_procs) for i in range(sub_procs)]
    for n in per:
        ready = CTX.Event()
        p = CTX.Process(target=_latency_subscribers,
                        args=(server.stream_port, world.bob.token, world.main["id"], n,
                              timed_every, ready, done, out))
        p.start()
        procs.append(p)
        readies.append(ready)
    for ready in readies:
        if not ready.wait(60):
            raise RuntimeError("latency subscribers did not connect")
    cpu0, srv0, load0 = children_cpu(), cpu_seconds(server.proc.pid), loadavg()
    threads0 = thread_cpu(server.proc.pid)
    poster = CTX.Process(target=_fixed_rate_poster,
                         args=(server.http_port, world.alice.token, world.main["id"], rate,
                               seconds, 16, out))
    poster.start()
    total, statuses, elapsed = out.get(timeout=seconds + 120)
    poster.join()
    done.set()
    latencies, delivered = [], 0
    for _ in procs:
        lat, count = out.get(timeout=60)
        latencies += lat
        delivered += count
    for p in procs:
        p.join()
    latencies.sort()
    srv = cpu_seconds(server.proc.pid) - srv0
    gen = children_cpu() - cpu0
    print(f"(b) latency: {rate:.0f} msg/s for {elapsed:.1f} s, {subscribers} JSON stream "
          f"subscribers; posted {total}, statuses {statuses}")
    print(f"    delivered {delivered}/{total * subscribers}; post->delivery "
          f"({len(latencies)} samples on every {timed_every}th subscriber): "
          f"p50 {pct(latencies, .5):.1f} ms, p99 {pct(latencies, .99):.1f} ms, "
          f"max {pct(latencies, 1):.1f} ms")
    print(f"    CPU: server {srv:.1f}s ({srv / elapsed:.0%} of a core; "
          f"{thread_split(server.proc.pid, threads0)}), load generator "
          f"{gen:.1f}s; load average {load0} -> {loadavg()}")
    return {"p50_ms": pct(latencies, .5), "p99_ms": pct(latencies, .99),
            "delivered": delivered, "expected": total * subscribers}


# ------------------------------------------------------------------ (a) throughput

def throughput_phase(server, world, seconds, connections=64):
    run_load([server], world, 2, connections)            # warm-up
    cpu0, srv0, load0 = children_cpu(), cpu_seconds(server.proc.pid), loadavg()
    threads0 = thread_cpu(server.proc.pid)
    counts, delivered, elapsed = run_load([server], world, seconds, connections,
                                          subscribers=10)
    srv = cpu_seconds(server.proc.pid) - srv0
    gen = children_cpu() - cpu0
    ok = counts.get(201, 0)
    print(f"(a) throughput: {connections} posting connections for {seconds:.0f} s, "
          f"10 JSON stream subscribers")
    print(f"    accepted (201): {ok / seconds:.0f} msg/s   statuses {counts}")
    print(f"    delivered: every subscriber got min {min(delivered)} / max {max(delivered)} "
          f"of {ok} ({min(delivered) / seconds:.0f} msg/s each, "
          f"{sum(delivered) / seconds:.0f} deliveries/s)")
    print(f"    CPU: server {srv:.1f}s ({srv / seconds:.0%} of a core; "
          f"{thread_split(server.proc.pid, threads0)}; {srv / max(ok, 1) * 1e6:.0f} µs per "
          f"message), load generator {gen:.1f}s; load average {load0} -> {loadavg()}")
    return {"accepted_per_s": ok / seconds, "delivered_min": min(delivered), "accepted": ok}


# ------------------------------------------------------------------ (c) memory

def _idle_streams(port, token, flow_id, cmd, out):
    """Hold idle stream connections: cmd gives a target count, or None to close."""
    raise_nofile()

    async def main():
        loop = asyncio.get_running_loop()
        socks: list[socket.socket] = []
        request = (f"GET /flows?filter={flow_id} HTTP/1.1\r\nHost: bench\r\n"
                   f"Accept: application/json\r\n").encode() + auth_header(token) + b"\r\n"
        gate = asyncio.Semaphore(50)

        async def one():
            async with gate:
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                s.setblocking(False)
                await loop.sock_connect(s, ("127.0.0.1", port))
                await loop.sock_sendall(s, request)
                head = b""
                while b"\r\n\r\n" not in head:
                    chunk = await asyncio.wait_for(loop.sock_recv(s, 4096), 30)
                    if not chunk:
                        raise ConnectionError("stream closed: " + head.decode("latin-1"))
                    head += chunk
                if b" 200 " not in head.split(b"\r\n", 1)[0]:
                    raise ConnectionError(head.split(b"\r\n", 1)[0].decode("latin-1"))
                socks.append(s)

        while True:
            target = await loop.run_in_executor(None, cmd.get)
            if target is None:
                break
            await asyncio.gather(*[one() for _ in range(target - len(socks))])
            out.put(len(socks))
        for s in socks:
            s.close()
    asyncio.run(main())


def memory_phase(profile, counts, backend, procs=4):
    limit = raise_nofile()
    need = max(counts) + 200
    if limit < need:
        print(f"(c) memory: RLIMIT_NOFILE hard limit {limit} < {need}; capping")
        counts = [c for c in counts if c + 200 <= limit] or [limit - 200]
    server = BenchServer(profile, backend).start()
    try:
        world = backend.world_for(server)
        pid = server.proc.pid
        # Warm up the stream path (imports, caches) with a few connections, closed again.
        cmd, out = CTX.Queue(), CTX.Queue()
        warm = CTX.Process(target=_idle_streams, args=(server.stream_port, world.bob.token,
                                                       world.main["id"], cmd, out))
        warm.start()
        cmd.put(50)
        out.get(timeout=60)
        cmd.put(None)
        warm.join()
        time.sleep(1.0)
        base, base_fds = rss_kib(pid), open_fds(pid)
        cmds = [CTX.Queue() for _ in range(procs)]
        workers = [CTX.Process(target=_idle_streams, args=(server.stream_port,
                                                           world.bob.token, world.main["id"],
                                                           c, out)) for c in cmds]
        cpu0, load0 = children_cpu(), loadavg()
        for w in workers:
            w.start()
        results = []
        for n in counts:
            t0 = time.monotonic()
            for i, c in enumerate(cmds):
                c.put(n // procs + (i < n % procs))
            got = sum(out.get(timeout=300) for _ in cmds)
            opened = time.monotonic() - t0
            time.sleep(2.0)
            rss, fds = rss_kib(pid), open_fds(pid)
            per = (rss - base) / got
            results.append((got, per))
            print(f"(c) memory: {got} idle JSON streams (server holds {fds - base_fds} more "
                  f"fds; opened in {opened:.1f} s): RSS {base / 1024:.1f} -> "
                  f"{rss / 1024:.1f} MiB = {per:.1f} KiB per connection")
        for c in cmds:
            c.put(None)
        for w in workers:
            w.join()
        print(f"    load generator CPU {children_cpu() - cpu0:.1f}s; "
              f"load average {load0} -> {loadavg()}")
        return results
    finally:
        server.close()


# ------------------------------------------------------------------ main

def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bench",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="5 s phases, 500 and 2,000 connections (a smoke run, ~35 s)")
    parser.add_argument("--only", choices=["throughput", "latency", "memory"], action="append",
                        help="run only these phases (repeatable)")
    parser.add_argument("--seconds", type=float, help="length of phases a and b (default 20)")
    parser.add_argument("--posters", type=int, default=64,
                        help="phase a keep-alive posting connections (default 64)")
    parser.add_argument("--rate", type=float, default=300.0, help="phase b posts per second")
    parser.add_argument("--subscribers", type=int, default=100, help="phase b subscribers")
    parser.add_argument("--connections", type=int, nargs="+",
                        help="phase c connection counts (default 2000 10000)")
    parser.add_argument("--profile", metavar="FILE",
                        help="run the server under cProfile (twistd --profile), stats to FILE")
    parser.add_argument("--backend", choices=["embedded", "production"], default="embedded",
                        help="embedded (default: SQLite, in-process bus) or production "
                             "(Redis, MongoDB, PostgreSQL; those not given by URL below are "
                             "started on private ports)")
    parser.add_argument("--redis", metavar="URL", help="production: Redis URL")
    parser.add_argument("--mongo", metavar="URL", help="production: MongoDB URL with database")
    parser.add_argument("--postgres", metavar="DSN", help="production: PostgreSQL DSN")
    args = parser.parse_args(argv)
    if args.backend == "embedded" and (args.redis or args.mongo or args.postgres):
        parser.error("--redis/--mongo/--postgres need --backend production")
    seconds = args.seconds or (5.0 if args.quick else 20.0)
    counts = args.connections or ([500, 2000] if args.quick else [2000, 10000])
    phases = args.only or ["throughput", "latency", "memory"]
    raise_nofile()
    print(f"machine: {machine()}; load average {loadavg()}; calibration "
          f"{calibrate():.0f} ms (lower is faster)", flush=True)
    started = time.monotonic()
    backend = Backend(args.backend, args.redis, args.mongo, args.postgres)
    print(f"backend: {backend.describe()}", flush=True)
    try:
        if "throughput" in phases or "latency" in phases:
            server = BenchServer(args.profile, backend).start()
            try:
                world = backend.world_for(server)
                if "throughput" in phases:
                    throughput_phase(server, world, seconds, args.posters)
                    sys.stdout.flush()
                if "latency" in phases:
                    latency_phase(server, world, args.rate, seconds, args.subscribers)
                    sys.stdout.flush()
            finally:
                server.close()
        if "memory" in phases:
            memory_phase(None if args.profile and len(phases) > 1 else args.profile, counts,
                         backend)
    finally:
        backend.close()
    print(f"total {time.monotonic() - started:.0f} s; calibration {calibrate():.0f} ms")


if __name__ == "__main__":
    main()
