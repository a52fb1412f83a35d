"""IRC fan-out cost in one process: the server CPU time per delivered line, from
the bus handing an event to the hub until every connection's socket has it.

    .venv/bin/python bench/irc_fanout_cpu.py [--clients 1000] [--events 500]

Unlike bench/irc_bench.py (the end-to-end figure through twistd, REST and the
store), this isolates the gateway's fan-out: real IRC connections on loopback TCP
registered with PASS/NICK/USER through the real code, with the accounts and chat
layer stubbed; each event is timed (process CPU time) from the publish to the
reactor having written it out, and the clients' sockets are read between events,
outside the timing.  CPU time barely depends on what else the machine runs.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import select
import socket
import statistics
import sys
import time
from types import SimpleNamespace

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from twisted.internet import epollreactor  # noqa: E402

epollreactor.install()

from twisted.internet import defer, reactor  # noqa: E402

from flowtwist.bridges.irc import IRCGateway  # noqa: E402
from flowtwist.bus.memory import MemoryBus  # noqa: E402
from flowtwist.model import Flow, FlowMember, Organization, User, flow_channel  # noqa: E402
from flowtwist.pipeline import Event, Hub  # noqa: E402

ORG = Organization(1, "Bench", "bench")
FLOW = Flow("f1", 1, "Main", "main")
LISTENER = User(1, "listener@example.com", "listener", "Listener")
WEB = User(2, "web@example.com", "web", "Web")
MEMBERS = [(LISTENER, FlowMember(FLOW.id, 1)), (WEB, FlowMember(FLOW.id, 2))]


class Accounts:
    async def by_password(self, email, secret):
        return LISTENER


class Chat:
    async def all_flows(self, user):
        return [(FLOW, True)]

    async def members(self, flow_id):
        return MEMBERS

    async def activity(self, user, flow_id, active, left=False):
        return None


class Directory:
    async def get_organization(self, org_id):
        return ORG

    async def get_user(self, user_id):
        return {1: LISTENER, 2: WEB}.get(user_id)


def event(i: int) -> bytes:
    msg = {"event": "message", "flow": FLOW.id, "user": "2", "id": i + 1,
           "uuid": f"u{i}", "content": f"bench {i} {time.time():.6f}", "tags": [],
           "attachments": [], "sent": int(time.time() * 1000), "app": "chat"}
    return Event(i + 1, FLOW.id, i + 1, f"u{i}",
                 json.dumps(msg, separators=(",", ":")).encode()).encode()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, default=1000)
    p.add_argument("--events", type=int, default=500)
    args = p.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, args.clients * 2 + 100)), hard))

    bus = MemoryBus(reactor)
    hub = Hub(bus)
    app = SimpleNamespace(server_name="irc.bench", public_url="http://bench.example",
                          pipeline=SimpleNamespace(hub=hub), accounts=Accounts(),
                          chat=Chat(), directory=Directory())
    gateway = IRCGateway(app, reactor)
    port = reactor.listenTCP(0, gateway, backlog=1024, interface="127.0.0.1")
    ep = select.epoll()
    socks = {}
    hello = b"PASS listener@example.com pw\r\nNICK b\r\nUSER b 0 * :Bench\r\n"
    for _ in range(args.clients):
        s = socket.create_connection(("127.0.0.1", port.getHost().port))
        s.sendall(hello)
        s.setblocking(False)
        socks[s.fileno()] = s
        ep.register(s.fileno(), select.EPOLLIN)
        reactor.iterate(0)

    def drain(timeout: float) -> int:
        lines = 0
        for fd, _ in ep.poll(timeout):
            try:
                lines += socks[fd].recv(1 << 20).count(b"\n")
            except BlockingIOError:
                pass
        return lines

    deadline = time.time() + 60
    joined = lambda: sum(1 for c in gateway.connections if c.user is not None)  # noqa: E731
    while joined() < args.clients and time.time() < deadline:
        reactor.iterate(0.01)
        drain(0)
    while drain(0.05):
        reactor.iterate(0)
    channel = flow_channel(FLOW.id)
    print(f"{joined()} connections joined; {hub.listener_count()} hub listeners")

    per_event = []
    received = 0
    for i in range(args.events):
        payload = event(i)
        t0 = time.process_time()
        d = bus.publish(channel, payload)
        reactor.iterate(0)              # the reactor writes what was buffered
        per_event.append(time.process_time() - t0)
        assert isinstance(d, defer.Deferred)
        got = drain(0.05)
        while got < args.clients * (i + 1) - received:
            reactor.iterate(0)
            more = drain(0.05)
            if not more:
                break
            got += more
        received += got
    expected = args.clients * args.events
    per_event.sort()
    us = [t / args.clients * 1e6 for t in per_event]
    print(f"{received}/{expected} lines; server CPU per delivery: median "
          f"{statistics.median(us):.2f} µs, mean {statistics.mean(us):.2f} µs, "
          f"p10 {us[len(us) // 10]:.2f} µs, p90 {us[len(us) * 9 // 10]:.2f} µs "
          f"(per event of {args.clients}: median {statistics.median(per_event) * 1000:.2f} ms); "
          f"load average {os.getloadavg()[0]:.2f}")
    for s in socks.values():
        s.close()
    port.stopListening()


if __name__ == "__main__":
    main()
