"""IRC fan-out benchmark: N IRC clients joined to one flow, a REST client posting
at a fixed rate; reports IRC deliveries per second and REST-post → IRC-delivery
latency (p50/p99/max).

    .venv/bin/python bench/irc_bench.py [--clients 1000] [--rate 50] [--seconds 20]

Starts its own flowtwist (tests/support.Flowtwist, embedded stores) on free
loopback ports.  IRC clients are plain asyncio sockets spread over worker
processes so that the load generator is not what limits the figures.
"""
from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import resource
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests.support import Flowtwist  # noqa: E402

CHANNEL = "#bench/main"


def raise_nofile(want: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = min(max(soft, want), hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


async def irc_client(port: int, password: str, ready: asyncio.Event, counter: list,
                     latencies: list, received: dict, stop: asyncio.Event,
                     timed: bool = True) -> None:
    """One IRC connection.  A timed client parses every line for its latency;
    the others only count lines (so that the load generator stays light)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)
    writer.write(f"PASS {password}\r\nNICK b\r\nUSER b 0 * :Bench\r\n".encode())
    joined = False
    while not stop.is_set():
        line = await reader.readline()
        if not line:
            break
        if not joined:
            if line.startswith(b"PING "):
                joined = True
                counter[0] += 1
                if counter[0] == counter[1]:
                    ready.set()
            continue
        if not timed:
            if b" PRIVMSG " in line:
                received[-1] = received.get(-1, 0) + 1
            elif line.startswith(b"PING "):
                writer.write(b"PONG " + line[5:])
            continue
        if b" PRIVMSG " in line:
            # ":web!… PRIVMSG #bench/main :bench <seq> <sent>"
            now = time.time()
            text = line.rsplit(b" :", 1)[-1].split()
            if len(text) == 3 and text[0] == b"bench":
                latencies.append(now - float(text[2]))
                received[int(text[1])] = received.get(int(text[1]), 0) + 1
        elif line.startswith(b"PING "):
            writer.write(b"PONG " + line[5:])
    writer.close()


def worker(port: int, password: str, n: int, ready_q, go_q, result_q, seconds: float,
           timed_every: int) -> None:
    raise_nofile(n + 100)

    async def main():
        ready, stop = asyncio.Event(), asyncio.Event()
        counter, latencies, received = [0, n], [], {}
        tasks = []
        for i in range(n):
            tasks.append(asyncio.create_task(
                irc_client(port, password, ready, counter, latencies, received, stop,
                           timed=i % timed_every == 0)))
            if i % 50 == 49:
                await asyncio.sleep(0.05)
        await ready.wait()
        ready_q.put(n)
        await asyncio.get_running_loop().run_in_executor(None, go_q.get)   # posting done
        await asyncio.sleep(2.0)     # let the last deliveries arrive
        stop.set()
        result_q.put((latencies, sum(received.values())))
        for t in tasks:
            t.cancel()

    asyncio.run(main())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, default=1000)
    p.add_argument("--rate", type=float, default=50.0, help="REST posts per second")
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--timed-every", type=int, default=10,
                   help="every Nth client records latencies (all count deliveries)")
    args = p.parse_args()
    raise_nofile(args.clients * 2 + 200)      # inherited by the server process

    server = Flowtwist(ports=("irc",))
    server.start()
    try:
        server.create_org("Bench")
        listener = server.create_user("listener", "bench")
        web = server.create_user("web", "bench")
        flow = server.create_flow("bench", "Main", [listener, web])
        password = f"{listener.email} {listener.password}"

        ready_q, go_q, result_q = mp.Queue(), mp.Queue(), mp.Queue()
        per = [args.clients // args.workers + (1 if i < args.clients % args.workers else 0)
               for i in range(args.workers)]
        procs = [mp.Process(target=worker, args=(server.ports["irc"], password, n, ready_q,
                                                 go_q, result_q, args.seconds,
                                                 args.timed_every))
                 for n in per if n]
        t_connect = time.time()
        for proc in procs:
            proc.start()
        for _ in procs:
            ready_q.get(timeout=300)
        print(f"{args.clients} IRC clients joined {CHANNEL} in {time.time() - t_connect:.1f} s",
              flush=True)

        total = int(args.rate * args.seconds)
        failures = 0
        post_times = []

        def post(seq: int) -> None:
            nonlocal failures
            sent = time.time()
            r = web.post("/messages", {"flow": flow["id"], "event": "message",
                                       "content": f"bench {seq} {sent:.6f}"})
            post_times.append(time.time() - sent)
            if r.status_code != 201:
                failures += 1

        start = time.time()
        threads = []
        for seq in range(total):
            delay = start + seq / args.rate - time.time()
            if delay > 0:
                time.sleep(delay)
            t = threading.Thread(target=post, args=(seq,))
            t.start()
            threads.append(t)
        for t in threads:
            t.join()
        posting = time.time() - start
        for _ in procs:
            go_q.put(True)
        latencies, delivered = [], 0
        for _ in procs:
            lat, count = result_q.get(timeout=120)
            latencies += lat
            delivered += count
        for proc in procs:
            proc.join(30)
        latencies.sort()

        def pct(q):
            return latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000

        expected = total * args.clients
        print(f"posted {total} messages in {posting:.1f} s ({total / posting:.1f}/s), "
              f"{failures} failed; REST p50 {sorted(post_times)[len(post_times) // 2] * 1000:.1f} ms")
        print(f"delivered {delivered}/{expected} IRC lines "
              f"({delivered / posting:.0f} messages/s to IRC clients)")
        if latencies:
            print(f"REST post -> IRC delivery latency ({len(latencies)} deliveries to "
                  f"every {args.timed_every}th client): p50 {pct(0.5):.1f} ms, "
                  f"p99 {pct(0.99):.1f} ms, max {latencies[-1] * 1000:.1f} ms")
    finally:
        server.close()


if __name__ == "__main__":
    main()
