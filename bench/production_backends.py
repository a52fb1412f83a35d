"""Throughput of flowtwist on its production backends (or the embedded ones).

    .venv/bin/python -m bench.production_backends --backend production --seconds 15
    .venv/bin/python -m bench.production_backends --backend embedded

Two figures:

1. delivered: posts accepted with 201 (stored and published: REST waits for the
   consumer) and received by every one of 10 stream subscribers on the same process,
   per second.
2. ingest: posts accepted per second through 1 process, then through 2 processes
   sharing the backends (production only), the load split evenly between the
   processes and spread over 16 flows, two in each of the 8 queue partitions (the
   queue is partitioned by conversation, and each process consumes its share of the
   partitions; posts into one flow are consumed by one process at a time).

The load comes from an asyncio client in a separate process with keep-alive
connections; redis-server, FerretDB and PostgreSQL are started by tests/servers.py.
Everything shares this machine's cores, which is what limits the figures: see the
per-process CPU times printed at the end of each run.
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import json
import multiprocessing
import os
import sys
import time
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from tests.conftest import World  # noqa: E402
from tests.support import Flowtwist  # noqa: E402


async def _post_loop(host, port, token, flow_id, deadline, counts):
    reader, writer = await asyncio.open_connection(host, port)
    auth = base64.b64encode(f"{token}:x".encode()).decode()
    while time.monotonic() < deadline:
        body = json.dumps({"flow": flow_id, "event": "message", "content": "bench message",
                           "uuid": uuid.uuid4().hex}).encode()
        writer.write(b"POST /messages HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json"
                     b"\r\nAuthorization: Basic " + auth.encode() + b"\r\nContent-Length: "
                     + str(len(body)).encode() + b"\r\n\r\n" + body)
        status_line = await reader.readline()
        status = int(status_line.split()[1])
        length = 0
        while True:
            line = await reader.readline()
            if line in (b"\r\n", b""):
                break
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        await reader.readexactly(length)
        counts[status] = counts.get(status, 0) + 1
    writer.close()


def _client(targets, token, flow_ids, seconds, connections, queue):
    async def main():
        counts: dict[int, int] = {}
        deadline = time.monotonic() + seconds
        await asyncio.gather(*[
            _post_loop("127.0.0.1", targets[i % len(targets)], token,
                       flow_ids[i // len(targets) % len(flow_ids)], deadline, counts)
            for i in range(connections)])
        return counts
    queue.put(asyncio.run(main()))


def _subscriber(port, token, flow_id, seconds, queue, ready):
    async def main():
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        auth = base64.b64encode(f"{token}:x".encode()).decode()
        writer.write(f"GET /flows?filter={flow_id} HTTP/1.1\r\nHost: bench\r\n"
                     f"Accept: application/json\r\nAuthorization: Basic {auth}\r\n\r\n".encode())
        await reader.readuntil(b"\r\n\r\n")
        ready.set()
        count = 0
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                data = await asyncio.wait_for(reader.read(1 << 16),
                                              max(0.01, deadline - time.monotonic()))
            except asyncio.TimeoutError:
                break
            if not data:
                break
            count += data.count(b'"event":"message"')
        return count
    queue.put(asyncio.run(main()))


def cpu_seconds(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except OSError:
        return 0.0


def tree_cpu_seconds(pid: int) -> float:
    """CPU of a process and its children (PostgreSQL's backends)."""
    total = cpu_seconds(pid)
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if ppid == pid:
                total += cpu_seconds(int(entry))
    return total


def spread_flows(world, count=16, partitions=None):
    """`count` flows of alice's, the same number in each queue partition."""
    from flowtwist.bus.redis import PARTITIONS, partition_of
    partitions = partitions or PARTITIONS
    per = count // partitions
    chosen: dict[int, list] = {k: [] for k in range(partitions)}
    n = 0
    while any(len(v) < per for v in chosen.values()):
        n += 1
        flow = world.server.create_flow("acme", f"Spread {n}", [world.alice])
        bucket = chosen[partition_of(flow["id"], partitions)]
        if len(bucket) < per:
            bucket.append(flow["id"])
    return [f for k in range(partitions) for f in chosen[k]]


def run_load(servers, world, seconds, connections, subscribers=0, flows=None):
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    subs = []
    for _ in range(subscribers):
        ready = ctx.Event()
        p = ctx.Process(target=_subscriber, args=(servers[0].stream_port, world.bob.token,
                                                  world.main["id"], seconds + 5, queue, ready))
        p.start()
        ready.wait(10)
        subs.append(p)
    started = time.monotonic()
    client = ctx.Process(target=_client, args=([s.http_port for s in servers],
                                               world.alice.token, flows or [world.main["id"]],
                                               seconds, connections, queue))
    client.start()
    results = [queue.get() for _ in range(1 + subscribers)]
    elapsed = time.monotonic() - started
    client.join()
    for p in subs:
        p.join()
    counts = next(r for r in results if isinstance(r, dict))
    delivered = [r for r in results if isinstance(r, int)]
    return counts, delivered, elapsed


def report_cpu(label, pids, before):
    parts = [f"{name} {tree_cpu_seconds(pid) - before.get(pid, 0):.1f}s"
             for name, pid in pids]
    print(f"  CPU during {label}: " + ", ".join(parts))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=["embedded", "production"], default="production")
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--connections", type=int, default=64)
    args = parser.parse_args(argv)

    backends, extra = [], []
    if args.backend == "production":
        from tests.servers import MongoServer, PostgresServer, RedisServer
        backends = [RedisServer().start(), MongoServer().start(), PostgresServer().start()]
        redis, mongo, pg = backends
        extra = ["--redis", redis.url, "--mongo", mongo.url.rstrip("/") + "/bench",
                 "--postgres", pg.dsn]
    first = Flowtwist(extra_args=extra).start()
    servers = [first]
    try:
        world = World(first)
        pids = [("flowtwist#1", first.proc.pid)] + [
            (b.name, b.proc.pid) for b in backends]
        if backends and getattr(backends[1], "postgres", None) is not None:
            pids.append(("ferretdb's postgres", backends[1].postgres.proc.pid))
        # warm-up
        run_load([first], world, 2, args.connections)

        before = {pid: tree_cpu_seconds(pid) for _, pid in pids}
        counts, delivered, elapsed = run_load([first], world, args.seconds, args.connections,
                                              subscribers=10)
        ok = counts.get(201, 0)
        print(f"[{args.backend}] 1 process, 10 subscribers, {args.connections} posting "
              f"connections, {elapsed:.1f}s, load average {os.getloadavg()[0]:.1f}")
        print(f"  accepted+persisted (201): {ok / args.seconds:.0f} msg/s  statuses {counts}")
        print(f"  delivered to each of 10 subscribers: min {min(delivered) / args.seconds:.0f} "
              f"msg/s (total deliveries {sum(delivered) / args.seconds:.0f}/s)")
        report_cpu("delivery run", pids, before)

        flows = spread_flows(world) if args.backend == "production" else None
        if flows:
            run_load([first], world, 2, args.connections, flows=flows)
        before = {pid: tree_cpu_seconds(pid) for _, pid in pids}
        counts, _, _ = run_load([first], world, args.seconds, args.connections, flows=flows)
        one = sum(v for k, v in counts.items() if 200 <= k < 300) / args.seconds
        print(f"  ingest, 1 process{', 16 flows' if flows else ''}: {one:.0f} msg/s "
              f"accepted  statuses {counts}  load average {os.getloadavg()[0]:.1f}")
        report_cpu("1-process ingest", pids, before)
        if args.backend == "production":
            second = Flowtwist(extra_args=extra).start()
            servers.append(second)
            pids.append(("flowtwist#2", second.proc.pid))
            # the second process takes its share of the queue partitions
            run_load(servers, world, 4, args.connections, flows=flows)
            before = {pid: tree_cpu_seconds(pid) for _, pid in pids}
            counts, _, _ = run_load(servers, world, args.seconds, args.connections,
                                    flows=flows)
            two = sum(v for k, v in counts.items() if 200 <= k < 300) / args.seconds
            print(f"  ingest, 2 processes, 16 flows: {two:.0f} msg/s accepted "
                  f"({two / one:.2f}x)  statuses {counts}  "
                  f"load average {os.getloadavg()[0]:.1f}")
            report_cpu("2-process ingest", pids, before)
        print(f"  machine: {os.cpu_count()} CPUs")
    finally:
        for s in servers:
            s.close()
        for b in backends:
            b.close()


if __name__ == "__main__":
    main()
