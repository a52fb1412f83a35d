"""IRC gateway units: the wire (parsing, decoding, 512-byte splitting), nicks, and a
connection on a StringTransport with a task.Clock for throttling and timeouts."""
from __future__ import annotations

import socket
from types import SimpleNamespace

import pytest
import pytest_twisted
from twisted.internet import defer, task
from twisted.internet.testing import StringTransport

from flowtwist.bridges.irc import IRCGateway, render, wire
from flowtwist.bridges.irc import connection as conn_mod
from flowtwist.bridges.irc.state import Roster
from flowtwist.model import User


# ---------------------------------------------------------------- wire

@pytest.mark.parametrize("line,expected", [
    ("PING :abc", ("PING", ["abc"])),
    ("ping abc", ("PING", ["abc"])),
    (":prefix PRIVMSG #t :Hello  world!", ("PRIVMSG", ["#t", "Hello  world!"])),
    ("PRIVMSG  #t   :x :y ", ("PRIVMSG", ["#t", "x :y "])),
    ("PASS :a@b.c my pw", ("PASS", ["a@b.c my pw"])),
    ("USER a b c :d e", ("USER", ["a", "b", "c", "d e"])),
    ("JOIN #a,#b key", ("JOIN", ["#a,#b", "key"])),
    ("AWAY :", ("AWAY", [""])),
    (":onlyprefix", None),
    ("   ", None),
])
def test_parse(line, expected):
    assert wire.parse(line) == expected


def test_decode_utf8_and_windows_1252():
    assert wire.decode("hyvää päivää".encode()) == "hyvää päivää"
    assert wire.decode("hyvää €".encode("cp1252")) == "hyvää €"
    assert wire.decode(b"a\x81b") == "a?b"          # undefined in Windows-1252


def test_chunks_never_split_a_character_and_prefer_spaces():
    text = "ä" * 300
    pieces = wire.chunks(text, 101)
    assert "".join(pieces) == text
    assert all(len(p.encode()) <= 101 for p in pieces)
    words = " ".join(["word"] * 100)
    pieces = wire.chunks(words, 50)
    assert all(not p.startswith(" ") and not p.endswith(" ") for p in pieces)
    assert " ".join(pieces) == words


def test_lines_fit_512_bytes_with_same_prefix_and_target():
    out = wire.lines("Otto!otto@example.com", "PRIVMSG", ("#irc/t",), "😀 " * 400)
    assert len(out) > 1
    for line in out:
        assert len(line) <= 512 and line.endswith(b"\r\n")
        assert line.startswith(b":Otto!otto@example.com PRIVMSG #irc/t :")
    action = wire.lines("a!b", "PRIVMSG", ("#c",), "x" * 1000, ctcp="ACTION")
    assert all(l.startswith(b":a!b PRIVMSG #c :\x01ACTION ") and l.endswith(b"\x01\r\n")
               and len(l) <= 512 for l in action)


def test_text_lines_and_formatting():
    assert wire.text_lines("a\r\nb\rc\n\n d\x00\x01") == ["a", "b", "c", " d"]
    assert wire.strip_formatting("\x02b\x02 \x0304,12red\x03 \x1di\x1d\x1fu\x1f\x0f\x16r") == "b red iur"
    assert wire.emoji_aliases("test 😡") == "test :rage:"


def test_nicks():
    assert wire.irc_nick("otto") == "otto"
    assert wire.irc_nick("otto.h") == "otto_h"
    assert wire.irc_nick("1abc") == "_1abc"
    assert wire.irc_nick("-x") == "_-x"
    assert wire.external_nick("Robot:!@") == "Robot___"
    assert wire.VALID_NICK.match("a[]\\`_^{|}-9") and not wire.VALID_NICK.match("b@d")


def user(uid, nick, email=None):
    return User(uid, email or f"{nick.lower()}{uid}@example.com", nick, nick)


def test_roster_collisions():
    me = user(1, "Otto")
    roster = Roster(me)
    roster.rebuild([user(50000, "Ottomob"), user(50002, "OTTOMOB"), user(3, "otto"),
                    user(4, "OTTOMOB2")])
    assert roster.nick(1) == "Otto"
    assert roster.nick(3) == "otto2"
    assert roster.nick(4) == "OTTOMOB2"
    assert roster.nick(50000) == "Ottomob"
    assert roster.nick(50002) == "OTTOMOB3"      # OTTOMOB2 is someone's own nick
    assert roster.find("ottomob3").id == 50002


def test_thread_header():
    assert render.thread_header({"title": "Bug"}) == "[Bug]"
    assert render.thread_header({"title": "Bug", "source": {
        "name": "Src", "application": {"name": "App"}}}) == "[App (Src): Bug]"


# ---------------------------------------------------------------- a connection

class Hub:
    def __init__(self):
        self.listeners = {}

    def add(self, channel, listener):
        self.listeners.setdefault(channel, set()).add(listener)

    def remove(self, channel, listener):
        self.listeners.get(channel, set()).discard(listener)


def make(clock=None):
    clock = clock or task.Clock()
    app = SimpleNamespace(server_name="irc.example.com", public_url="http://x.example",
                          pipeline=SimpleNamespace(hub=Hub()))
    gateway = IRCGateway(app, clock)
    proto = gateway.buildProtocol(None)
    transport = StringTransport()
    proto.makeConnection(transport)
    return proto, transport, clock


def out(transport) -> list[str]:
    data = transport.value().decode()
    transport.clear()
    return [l for l in data.split("\r\n") if l]


def register(proto, transport):
    proto.dataReceived(b"NICK guest\r\nUSER guest 0 * :Guest\r\n")
    return out(transport)


def test_connect_and_register():
    proto, transport, clock = make()
    assert out(transport) == [":irc.example.com 020 * :Please wait while we process your connection."]
    lines = register(proto, transport)
    assert lines[0] == ":irc.example.com 001 guest :Welcome to the Internet Relay Network guest!guest@unknown"
    assert lines[-1].startswith("PING :")


def test_cap_holds_registration_until_end():
    proto, transport, clock = make()
    out(transport)
    proto.dataReceived(b"CAP LS 302\r\nNICK a\r\nUSER a 0 * :A\r\n")
    assert out(transport) == [":irc.example.com CAP * LS :"]
    proto.dataReceived(b"CAP REQ :multi-prefix sasl\r\n")
    assert out(transport) == [":irc.example.com CAP a NAK :multi-prefix sasl"]
    proto.dataReceived(b"CAP END\r\n")
    assert out(transport)[0].startswith(":irc.example.com 001 a ")


def test_lf_only_blank_lines_and_split_packets():
    proto, transport, clock = make()
    out(transport)
    proto.dataReceived(b"\r\n\nPI")
    proto.dataReceived(b"NG :a\nPING :b\r")
    proto.dataReceived(b"\n")
    assert out(transport) == [":irc.example.com PONG irc.example.com :a",
                              ":irc.example.com PONG irc.example.com :b"]


def test_overlong_line_dropped_connection_kept():
    proto, transport, clock = make()
    out(transport)
    proto.dataReceived(b"PING :" + b"x" * 9000)
    proto.dataReceived(b"y" * 100 + b"\r\nPING :ok\r\n")
    assert out(transport) == [":irc.example.com PONG irc.example.com :ok"]
    assert transport.connected


def test_invalid_utf8_is_windows_1252():
    proto, transport, clock = make()
    out(transport)
    proto.dataReceived("PING :café €\r\n".encode("cp1252"))
    assert out(transport) == [":irc.example.com PONG irc.example.com :café €"]


def test_commands_before_registration():
    proto, transport, clock = make()
    out(transport)
    proto.dataReceived(b"JOIN #x\r\nPRIVMSG a :b\r\nWHO\r\n")
    assert out(transport) == [":irc.example.com 451 * :You have not registered"] * 3


def test_throttle_slows_then_disconnects():
    proto, transport, clock = make()
    register(proto, transport)
    # a burst passes at once...
    proto.dataReceived(b"MOTD\r\n" * 40)
    first = len([l for l in out(transport) if " 422 " in l])
    assert 10 <= first < 40
    # ...the rest follows as the penalty clock runs down
    clock.pump([1.0] * int(1.1 * conn_mod.LINE_PENALTY * (40 - first) + 2))
    assert len([l for l in out(transport) if " 422 " in l]) == 40 - first
    assert transport.connected
    # a client that keeps flooding is disconnected
    proto.dataReceived(b"MOTD\r\n" * (conn_mod.MAX_QUEUED + 40))
    assert out(transport)[-1] == "ERROR :Closing Link: guest[] (Excess Flood)"
    assert transport.disconnecting


def test_ping_then_timeout():
    proto, transport, clock = make()
    register(proto, transport)
    clock.advance(conn_mod.PING_INTERVAL - 1)
    proto.dataReceived(b"PONG :x\r\n")             # any line counts
    clock.advance(conn_mod.PING_INTERVAL - 1)
    assert out(transport) == []
    clock.advance(1)
    assert out(transport) == ["PING :irc.example.com"]
    clock.advance(conn_mod.PING_INTERVAL)
    assert out(transport) == ["ERROR :Closing Link: guest[] (Ping timeout)"]
    assert transport.disconnecting


def test_ping_answered_keeps_connection():
    proto, transport, clock = make()
    register(proto, transport)
    for _ in range(5):
        clock.advance(conn_mod.PING_INTERVAL)
        assert out(transport) == ["PING :irc.example.com"]
        proto.dataReceived(b"PONG :irc.example.com\r\n")
    assert not transport.disconnecting


def test_registration_timeout():
    proto, transport, clock = make()
    out(transport)
    proto.dataReceived(b"NICK a\r\n")
    clock.advance(conn_mod.REGISTRATION_TIMEOUT)
    assert out(transport) == ["ERROR :Closing Link: a[] (Registration timeout)"]


def test_half_close_finishes_what_was_sent():
    proto, transport, clock = make()
    out(transport)
    proto.dataReceived(b"PING :a\r\nPING :b")         # last line without CRLF
    proto.readConnectionLost()
    assert out(transport) == [":irc.example.com PONG irc.example.com :a",
                              ":irc.example.com PONG irc.example.com :b"]
    assert transport.disconnecting


def test_quit_and_bad_username():
    proto, transport, clock = make()
    register(proto, transport)
    proto.dataReceived(b"QUIT :bye now\r\nPING :ignored\r\n")
    assert out(transport) == ['ERROR :Closing Link: guest[] ("bye now")']
    proto, transport, clock = make()
    out(transport)
    proto.dataReceived(b"NICK a\r\nUSER @x 0 * :X\r\n")
    assert out(transport) == ["ERROR :Closing Link: a[] (Invalid Username)"]


def test_slow_reader_is_dropped():
    proto, transport, clock = make()
    register(proto, transport)
    proto.pauseProducing()                  # the transport's buffer is full
    for _ in range(conn_mod.MAX_SENDQ // 400 + 10):
        proto.send("a!b", "PRIVMSG", ("#c",), "x" * 400)
    assert transport.disconnecting


def test_names_reply_split_under_512():
    proto, transport, clock = make()
    register(proto, transport)
    proto.reply("353", "@", "#a/b", text=" ".join(f"nick{i}" for i in range(300)))
    lines = out(transport)
    assert len(lines) > 1
    assert all(l.startswith(":irc.example.com 353 guest @ #a/b :") and len(l) + 2 <= 512
               for l in lines)
    names = " ".join(l.split(" :", 1)[1] for l in lines).split()
    assert names == [f"nick{i}" for i in range(300)]


@pytest_twisted.ensureDeferred
async def test_write_through_keeps_order_when_the_socket_fills():
    """Output goes straight to the socket while the transport holds nothing; what
    the socket does not take, and everything after it, goes through the transport,
    in order."""
    from twisted.internet import reactor
    app = SimpleNamespace(server_name="irc.example.com", public_url="http://x.example",
                          pipeline=SimpleNamespace(hub=Hub()))
    gateway = IRCGateway(app, reactor)
    port = reactor.listenTCP(0, gateway, interface="127.0.0.1")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port.getHost().port))
    sock.setblocking(False)
    try:
        while not gateway.connections:
            await task.deferLater(reactor, 0.01)
        conn = next(iter(gateway.connections))
        assert conn._socket is not None
        conn.transport.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        conn.write(b"first\r\n")
        assert not conn.transport.dataBuffer and not conn.transport._tempDataLen  # sent
        lines = [b"line %d %s\r\n" % (i, b"x" * 400) for i in range(500)]
        for line in lines:
            conn.write(line)
        assert conn.transport._tempDataLen or conn.transport.dataBuffer    # buffered
        expected = b"first\r\n" + b"".join(lines)
        received = b""
        while not received.endswith(lines[-1]):
            try:
                data = sock.recv(65536)
            except BlockingIOError:
                await task.deferLater(reactor, 0.002)
                continue
            assert data
            received += data
        assert received.split(b"\r\n", 1)[1] == expected     # after the 020 notice
    finally:
        sock.close()
        while gateway.connections:
            await task.deferLater(reactor, 0.01)
        await port.stopListening()


def test_flow_fanout_renders_per_author_nick_and_skips_own_posts():
    """One hub listener per flow; each connection still sees the author under its
    own nick for them, nothing of its own post, nothing in a parted channel."""
    import json

    from flowtwist.bridges.irc.connection import LoginOutcome
    from flowtwist.bridges.irc.state import Channel
    from flowtwist.model import Flow, FlowMember, Organization
    from flowtwist.pipeline import Event

    clock = task.Clock()
    hub = Hub()
    chat = SimpleNamespace(activity=lambda *a, **k: defer.succeed(None))
    app = SimpleNamespace(server_name="irc.example.com", public_url="http://x.example",
                          pipeline=SimpleNamespace(hub=hub), chat=chat)
    gateway = IRCGateway(app, clock)
    org, flow = Organization(1, "Acme", "acme"), Flow("f1", 1, "Main", "main")
    otto, otto3, eve = user(1, "Otto"), user(3, "otto"), user(5, "Eve")
    members = [(u, FlowMember("f1", u.id)) for u in (otto, otto3, eve)]

    def connect(me, open_=True, people=members):
        proto = gateway.buildProtocol(None)
        transport = StringTransport()
        proto.makeConnection(transport)
        register(proto, transport)
        proto.announce_login(LoginOutcome(me, [Channel(flow, org, True, open_, people)]),
                             from_pass=True)
        transport.clear()
        return proto, transport

    a, ta = connect(otto)               # sees user 3 as otto2 (Otto has a lower id)
    b, tb = connect(eve, people=members[1:])    # (a stale list without Otto) as otto
    c, tc = connect(eve, open_=False)   # a member, but the channel is not joined
    d, td = connect(otto3)              # posted the message itself
    d.remember_post("u1")
    assert [type(l).__name__ for l in hub.listeners["flow:f1"]] == ["FlowFanout"]
    msg = {"event": "message", "flow": "f1", "user": "3", "id": 7, "uuid": "u1",
           "content": "hi there"}
    hub_listener, = hub.listeners["flow:f1"]
    hub_listener(Event(7, "f1", 7, "u1", json.dumps(msg).encode()))
    assert out(ta) == [":otto2!otto3@example.com PRIVMSG #acme/main :hi there"]
    assert out(tb) == [":otto!otto3@example.com PRIVMSG #acme/main :hi there"]
    assert out(tc) == [] and out(td) == []
    presence = {"event": "activity.user", "flow": "f1", "user": "3", "sent": 1234,
                "content": {"last_activity": 1234}}
    hub_listener(Event(0, "f1", 0, "", json.dumps(presence).encode()))
    assert a.presence[3] == b.presence[3] == (True, 1234)
    for proto in (a, b, c, d):
        proto.connectionLost()
    assert "flow:f1" not in hub.listeners or not hub.listeners["flow:f1"]
