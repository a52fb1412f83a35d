"""End to end with a real IRC client library (jaraco `irc`): an IRC user and a
REST/streaming user talk both ways, in a flow and privately."""
from __future__ import annotations

import time

import irc.client
import pytest

from tests.support import Flowtwist

CHAN = "#acme/main"


class IRCUser:
    """An `irc` library connection whose events are collected in order."""

    def __init__(self, port: int, nick: str, password: str):
        self.reactor = irc.client.Reactor()
        self.events: list = []
        self.reactor.add_global_handler("all_events", lambda c, e: self.events.append(e), -10)
        self.conn = self.reactor.server().connect("127.0.0.1", port, nick, password=password,
                                                  username=nick, ircname=nick.title())

    def wait(self, predicate, timeout: float = 10.0):
        """The first collected event matching `predicate` (consumed with those before it)."""
        deadline = time.monotonic() + timeout
        while True:
            for i, event in enumerate(self.events):
                if predicate(event):
                    del self.events[:i + 1]
                    return event
            if time.monotonic() > deadline:
                raise TimeoutError([(e.type, e.source, e.target, e.arguments) for e in self.events])
            self.reactor.process_once(0.05)

    def close(self):
        self.conn.close()


@pytest.fixture(scope="module")
def env():
    server = Flowtwist(ports=("irc",))
    try:
        server.start()
        server.create_org("Acme")
        ircer = server.create_user("ircer", "acme")
        web = server.create_user("web", "acme")
        flow = server.create_flow("acme", "Main", [ircer, web])
        yield server, ircer, web, flow
    finally:
        server.close()


def test_irc_and_rest_users_talk_both_ways(env):
    server, ircer, web, flow = env
    client = IRCUser(server.ports["irc"], "somebody", f"{ircer.email} {ircer.password}")
    stream = web.stream({"filter": flow["path"], "user": "1"})
    try:
        client.wait(lambda e: e.type == "welcome")
        joined = client.wait(lambda e: e.type == "join")
        assert joined.target == CHAN and joined.source.nick == "ircer"
        names = client.wait(lambda e: e.type == "namreply")
        assert names.arguments[-1].split() == ["ircer", "web"]

        # IRC → flow
        client.conn.privmsg(CHAN, "hello from IRC")
        got = stream.events(1)[0]
        assert (got["event"], got["content"], got["user"], got["flow"]) == (
            "message", "hello from IRC", str(ircer.id), flow["id"])
        client.conn.action(CHAN, "waves")
        got = stream.events(1)[0]
        assert (got["event"], got["content"]) == ("line", "waves")

        # flow → IRC
        web.say(flow, "hello from the web")
        said = client.wait(lambda e: e.type == "pubmsg")
        assert (said.source.nick, said.target, said.arguments) == (
            "web", CHAN, ["hello from the web"])
        assert str(said.source) == "web!web@example.com"

        # private: IRC → web user, and back
        client.conn.privmsg("web", "psst")
        got = next(e for e in iter(lambda: stream.events(1)[0], None)
                   if e.get("user") == str(ircer.id))
        assert (got["event"], got["content"], got["user"], got["to"]) == (
            "message", "psst", str(ircer.id), str(web.id))
        r = web.post(f"/private/{ircer.id}/messages", {"event": "message", "content": "psst back"})
        assert r.status_code == 201, r.text
        private = client.wait(lambda e: e.type == "privmsg")
        assert (private.source.nick, private.target, private.arguments) == (
            "web", "ircer", ["psst back"])

        # the IRC user's own lines were not echoed back to it
        assert not any(e.type in ("pubmsg", "privmsg", "action") and e.source.nick == "ircer"
                       for e in client.events)
    finally:
        stream.close()
        client.close()


def test_identify_with_nickserv_and_token_password(env):
    server, ircer, web, flow = env
    client = IRCUser(server.ports["irc"], "guest", None)
    try:
        client.wait(lambda e: e.type == "privnotice" and "identify" in e.arguments[0])
        client.conn.privmsg("NickServ", f"IDENTIFY {web.email} {web.password}")
        assert client.wait(lambda e: e.type == "nick").target == "web"
        assert client.wait(lambda e: e.type == "join").target == CHAN
    finally:
        client.close()
    token_client = IRCUser(server.ports["irc"], "t", web.token)
    try:
        assert token_client.wait(lambda e: e.type == "join").target == CHAN
    finally:
        token_client.close()
