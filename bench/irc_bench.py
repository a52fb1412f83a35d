"""IRC fan-out benchmark: N IRC clients joined to one flow, a REST client posting
at a fixed rate; reports IRC deliveries per second, REST-post → IRC-delivery
latency (p50/p90/p99/max), and the CPU time the server and the load generator
spent per delivery (a figure that does not depend on what else the machine runs).

    .venv/bin/python bench/irc_bench.py [--clients 1000] [--rate 50] [--seconds 20] [--runs 3]

Starts its own flowtwist (tests/support.Flowtwist, embedded stores) on free
loopback ports.  IRC clients are raw non-blocking sockets read by worker
processes with epoll: every Nth ("timed") client is read at once by one worker
that parses its lines and records latencies; the others only count line ends and
are read every --pause seconds, so that the load generator costs as little as
possible (the server's work per delivery is the same).  With --runs the same connections see
several posting rounds, each reported on its own.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import multiprocessing as mp
import os
import resource
import select
import socket
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests.support import Flowtwist  # noqa: E402

CHANNEL = "#bench/main"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def raise_nofile(want: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = min(max(soft, want), hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def load_average() -> float:
    return os.getloadavg()[0]


class Client:
    """One IRC connection, read by the worker's epoll loop.  Until the registration
    PING it reads lines; after it, an untimed client only counts line ends (one
    C-level count per read), a timed one parses
    `:web!… PRIVMSG #bench/main :bench <seq> <sent>` for the latency."""
    __slots__ = ("sock", "timed", "joined", "tail")

    def __init__(self, sock: socket.socket, timed: bool):
        self.sock = sock
        self.timed = timed
        self.joined = False
        self.tail = b""


class Worker:
    """Some of the clients in one process: non-blocking sockets on one epoll, no
    event-loop framework, so that a delivery costs the load generator one recv()
    and a count.  The sockets were connected (in an order that spreads timed
    clients over the server's fan-out order) before this process was forked.
    A worker of untimed clients reads every `pause` seconds, so that one recv()
    takes several messages: the server's work per delivery is the same."""

    def __init__(self, socks: list, timed: bool, pause: float, control):
        self.n = len(socks)
        self.pause = pause
        self.control = control          # multiprocessing Connection to the main process
        self.epoll = select.epoll()
        self.clients: dict[int, Client] = {}
        for sock in socks:
            self.clients[sock.fileno()] = Client(sock, timed)
            self.epoll.register(sock.fileno(), select.EPOLLIN)
        self.joined = 0
        self.lines = 0
        self.latencies: list[float] = []
        self.bad = 0

    def wait_joined(self) -> None:
        while self.joined < self.n:
            self.poll(0.2)

    def poll(self, timeout: float) -> None:
        clients = self.clients
        for fd, _ in self.epoll.poll(timeout):
            client = clients[fd]
            try:
                data = client.sock.recv(262144)
            except BlockingIOError:
                continue
            if not data:
                raise RuntimeError("the server closed an IRC connection")
            if client.tail:
                data = client.tail + data
            end = data.rfind(b"\n") + 1
            if end != len(data):
                client.tail = data[end:]
                data = data[:end]
            elif client.tail:
                client.tail = b""
            if data:
                self.received(client, data)

    def received(self, client: Client, chunk: bytes) -> None:
        """Complete lines (CRLF-terminated) from one client."""
        if client.joined and not client.timed:
            n = chunk.count(b"\n")
            if b"PING " in chunk:
                n -= self.pings(client, chunk)
            self.lines += n
            return
        now = time.time()
        lines = chunk.split(b"\r\n")
        lines.pop()
        for line in lines:
            if line.startswith(b"PING "):
                self.pings(client, line + b"\r\n")
                if not client.joined:   # the end of the registration burst
                    client.joined = True
                    self.joined += 1
                continue
            if not client.joined:
                continue
            text = line.rsplit(b" :", 1)[-1].split()
            if len(text) == 3 and text[0] == b"bench":
                self.latencies.append(now - float(text[2]))
                self.lines += 1
            else:
                self.bad += 1

    @staticmethod
    def pings(client: Client, chunk: bytes) -> int:
        count = 0
        for line in chunk.split(b"\r\n"):
            if line.startswith(b"PING "):
                client.sock.send(b"PONG " + line[5:] + b"\r\n")
                count += 1
        return count

    def round(self) -> None:
        """One posting round: told the number of messages, then when posting ended."""
        while True:
            while not self.control.poll():
                self.poll(0.05)         # earlier lines (warm-up, late ones) do not count
            what, total = self.control.recv()
            if what == "go":            # (not a previous round's "until")
                break
        cpu0 = time.process_time()
        self.lines, self.latencies, self.bad = 0, [], 0
        expected = total * self.n
        deadline = None
        while self.lines < expected and (deadline is None or time.time() < deadline):
            self.poll(0.05)
            if self.pause:
                time.sleep(self.pause)
            if deadline is None and self.control.poll():
                deadline = self.control.recv()[1]
        self.control.send((self.latencies, self.lines, self.bad,
                           time.process_time() - cpu0, time.time()))


def worker(socks: list, timed: bool, pause: float, runs: int, control) -> None:
    w = Worker(socks, timed, pause, control)
    w.wait_joined()
    control.send(w.n)
    for _ in range(runs):
        w.round()


def percentile(values: list[float], q: float) -> float:
    return values[min(len(values) - 1, int(q * len(values)))] * 1000


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, default=1000)
    p.add_argument("--rate", type=float, default=50.0, help="REST posts per second")
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--runs", type=int, default=1, help="posting rounds on the same clients")
    p.add_argument("--workers", type=int, default=2,
                   help="client processes: one for the timed clients, the rest for the others")
    p.add_argument("--pause", type=float, default=0.1,
                   help="seconds between reads of the untimed clients")
    p.add_argument("--timed-every", type=int, default=10,
                   help="every Nth client parses lines and records latencies")
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
        pid = server.proc.pid

        # Connect here, in order, every Nth client a timed one; then fork the
        # workers: one reads the timed clients at once, the others the rest.
        hello = f"PASS {password}\r\nNICK b\r\nUSER b 0 * :Bench\r\n".encode()
        timed, bulk = [], []
        t_connect = time.time()
        for i in range(args.clients):
            sock = socket.create_connection(("127.0.0.1", server.ports["irc"]))
            sock.sendall(hello)
            sock.setblocking(False)
            (timed if i % args.timed_every == 0 else bulk).append(sock)
            if i % 50 == 49:
                time.sleep(0.02)
        n_bulk = max(1, args.workers - 1)
        groups = [(timed, True, 0.0)] + [(bulk[i::n_bulk], False, args.pause)
                                         for i in range(n_bulk)]
        groups = [g for g in groups if g[0]]
        ctx = mp.get_context("fork")  # the workers inherit the sockets
        pipes = [ctx.Pipe() for _ in groups]
        procs = [ctx.Process(target=worker, args=(socks, is_timed, pause, args.runs, child))
                 for (socks, is_timed, pause), (_, child) in zip(groups, pipes)]
        controls = [parent for parent, _ in pipes]
        for proc in procs:
            proc.start()
        for sock in timed + bulk:
            sock.close()                # the workers have their own copies
        for control in controls:
            if not control.poll(300):
                raise RuntimeError("IRC clients did not all join")
            control.recv()
        print(f"{args.clients} IRC clients joined {CHANNEL} in {time.time() - t_connect:.1f} s "
              f"({len(procs)} client processes)", flush=True)
        # a first message (not measured) warms the caches of every connection
        web.post("/messages", {"flow": flow["id"], "event": "message", "content": "warm-up"})
        time.sleep(2.0)

        summary = []
        for run in range(1, args.runs + 1):
            summary.append(one_run(args, web, flow, pid, controls, run))
        for proc in procs:
            proc.join(30)
        if args.runs > 1:
            print("runs: " + "; ".join(
                f"p50 {s['p50']:.1f} / p99 {s['p99']:.1f} ms, {s['server_us']:.2f} µs, "
                f"load {s['load']:.1f}" for s in summary))
            print(f"best p99 {min(s['p99'] for s in summary):.1f} ms, median p99 "
                  f"{statistics.median(s['p99'] for s in summary):.1f} ms; server CPU per "
                  f"delivery best {min(s['server_us'] for s in summary):.2f} µs, median "
                  f"{statistics.median(s['server_us'] for s in summary):.2f} µs")
    finally:
        server.close()


def one_run(args, web, flow, pid, controls, run: int) -> dict:
    total = int(args.rate * args.seconds)
    failures = 0
    post_times = []

    def post(seq: int, due: float) -> None:
        """One REST post, stamped with the time it was due (a post that waited
        for a free thread counts that wait in its latency)."""
        nonlocal failures
        try:
            r = web.post("/messages", {"flow": flow["id"], "event": "message",
                                       "content": f"bench {seq} {due:.6f}"}, timeout=60)
            if r.status_code != 201:
                failures += 1
        except Exception:
            failures += 1
        post_times.append(time.time() - due)

    for control in controls:
        control.send(("go", total))
    time.sleep(0.5)                     # the workers reset their counters
    load_before = load_average()
    cpu_before = cpu_seconds(pid)
    start = time.time()
    with concurrent.futures.ThreadPoolExecutor(max_workers=32) as pool:
        for seq in range(total):
            due = start + seq / args.rate
            delay = due - time.time()
            if delay > 0:
                time.sleep(delay)
            pool.submit(post, seq, due)
    posting = time.time() - start
    for control in controls:
        control.send(("until", time.time() + 10.0))       # wait at most 10 s more for the deliveries
    latencies, delivered, bad, client_cpu, last = [], 0, 0, 0.0, start
    for control in controls:
        if not control.poll(120):
            raise RuntimeError("a client process did not report")
        lat, count, wrong, cpu, t_last = control.recv()
        latencies += lat
        delivered += count
        bad += wrong
        client_cpu += cpu
        last = max(last, t_last)
    server_cpu = cpu_seconds(pid) - cpu_before
    load_after = load_average()
    latencies.sort()

    expected = total * args.clients
    span = max(posting, last - start)
    stats = {"p50": percentile(latencies, 0.5) if latencies else float("nan"),
             "p99": percentile(latencies, 0.99) if latencies else float("nan"),
             "server_us": server_cpu / max(delivered, 1) * 1e6,
             "load": max(load_before, load_after)}
    print(f"run {run}: posted {total} messages in {posting:.1f} s ({total / posting:.1f}/s), "
          f"{failures} failed; REST p50 {sorted(post_times)[len(post_times) // 2] * 1000:.1f} ms")
    print(f"  delivered {delivered}/{expected} IRC lines{f', {bad} unexpected' if bad else ''} "
          f"({delivered / span:.0f} deliveries/s)")
    if latencies:
        print(f"  REST post -> IRC delivery latency ({len(latencies)} deliveries to every "
              f"{args.timed_every}th client): p50 {stats['p50']:.1f} ms, "
              f"p90 {percentile(latencies, 0.9):.1f} ms, p99 {stats['p99']:.1f} ms, "
              f"max {latencies[-1] * 1000:.1f} ms")
    print(f"  CPU: server {server_cpu:.2f} s = {stats['server_us']:.2f} µs per delivery "
          f"(= ms per 1,000 deliveries; includes the REST posts and storing: "
          f"{server_cpu / total * 1000:.2f} ms per posted message in all); clients {client_cpu:.2f} s = "
          f"{client_cpu / max(delivered, 1) * 1e6:.2f} µs per delivery; "
          f"load average {load_before:.2f} -> {load_after:.2f}", flush=True)
    return stats


if __name__ == "__main__":
    main()
