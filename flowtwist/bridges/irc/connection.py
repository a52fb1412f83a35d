"""One IRC client connection: line handling, flood throttling, keepalive, output
limits, authentication and the Flowdock events it receives.

The commands themselves live in commands.py (one `irc_<COMMAND>` method each);
the rendering of events in render.py (one renderer per event type).
"""
from __future__ import annotations

import secrets
from collections import OrderedDict, deque
from typing import Any

import attrs
from twisted.internet import defer, interfaces
from twisted.logger import Logger
from twisted.words.protocols import irc
from zope.interface import implementer

from flowtwist.bridges.irc import render, wire
from flowtwist.bridges.irc.commands import Commands
from flowtwist.bridges.irc.fanout import presence_entry
from flowtwist.bridges.irc.state import Channel, Roster
from flowtwist.fanout import direct_socket, send_through
from flowtwist.model import User, flow_channel, now_ms, user_channel

log = Logger()

FLOW_PREFIX = flow_channel("")

PING_INTERVAL = 120.0           # silence before we PING; as long again to answer
REGISTRATION_TIMEOUT = 60.0
# Flood control, RFC 1459 style: every line moves the client's penalty clock
# ahead; lines are held back while it runs more than BURST seconds ahead of now
# (the client slows down), and the client is disconnected when more than
# MAX_QUEUED lines wait (it keeps flooding).
BURST = 20.0
LINE_PENALTY = 1.0
BYTES_PER_PENALTY = 256
LIGHT_COMMANDS = frozenset({"PING", "PONG"})
MAX_QUEUED = 60
MAX_SENDQ = 1 << 20             # unsent output bytes before a reader counts as dead
MAX_REMEMBERED_POSTS = 1000


@attrs.define
class LoginOutcome:
    user: User | None = None
    channels: list[Channel] = attrs.Factory(list)
    problem: str | None = None       # bad-credentials | no-flows | error


class _EventView:
    """render.View for one event as seen by one connection."""
    __slots__ = ("conn", "target", "prepared")

    def __init__(self, conn: "IRCConnection", target: str, prepared: Any = None):
        self.conn = conn
        self.target = target
        self.prepared = prepared

    def author(self, msg: dict) -> str:
        return self.conn.author_prefix(msg)

    def host(self, user_id: Any) -> str:
        return self.conn.host_of(user_id)

    def file_url(self, path: str) -> str:
        return self.conn.app.public_url + path


@implementer(interfaces.IHalfCloseableProtocol, interfaces.IPushProducer)
class IRCConnection(Commands, irc.IRC):
    def __init__(self, gateway):
        self.gateway = gateway
        self.app = gateway.app
        self.clock = gateway.clock
        self.server = gateway.server_name
        # registration
        self.nick: str | None = None
        self.username: str | None = None
        self.realname = ""
        self.credentials: tuple[str | None, str] | None = None   # (email or None for a token, secret)
        self.pass_email: str | None = None
        self.cap_negotiating = False
        self.registered = False
        # authentication
        self.user: User | None = None
        self.roster: Roster | None = None
        self.channels: dict[str, Channel] = {}        # by lower-case name
        self.by_flow: dict[str, Channel] = {}
        self.subscriptions: list[str] = []
        self.away = False
        self.presence: dict[int, tuple[bool, int]] = {}   # user id → (active, since ms)
        self._shown_active = False
        # wire
        self._buffer = b""
        self._discarding = False
        self._inbox: deque[str] = deque()
        self._busy = False
        self._penalty_until = 0.0
        self._wakeup = None
        self._eof = False
        self.closing = False
        self._write_paused = False
        self._sendq = 0
        self._socket = None             # see write()
        self._idle_timer = None
        self._pinged = False
        self._registration_timer = None
        # events
        self._posted: OrderedDict[str, None] = OrderedDict()
        self._events: deque = deque()

    # ------------------------------------------------------------ properties

    @property
    def me(self) -> str:
        return self.nick or "*"

    @property
    def address(self) -> str:
        """user@host: the account email once known, else `<username>@unknown`."""
        if self.user is not None:
            return self.user.email
        if self.pass_email:
            return self.pass_email
        return f"{self.username or self.nick or '*'}@unknown"

    @property
    def prefix(self) -> str:
        return f"{self.me}!{self.address}"

    @property
    def authenticated(self) -> bool:
        return self.user is not None

    # ------------------------------------------------------------ connection

    def connectionMade(self):
        self.hostname = self.server
        self.gateway.connections.add(self)
        self._socket = direct_socket(self.transport)
        self.transport.registerProducer(self, True)
        self.send_numeric("020", "*", text="Please wait while we process your connection.")
        self._idle_timer = self.clock.callLater(PING_INTERVAL, self._idle)
        self._registration_timer = self.clock.callLater(
            REGISTRATION_TIMEOUT, self._registration_expired)

    def connectionLost(self, reason=None):
        self.closing = True
        self.gateway.connections.discard(self)
        for timer in (self._idle_timer, self._registration_timer, self._wakeup):
            if timer is not None and timer.active():
                timer.cancel()
        self._unsubscribe_all()
        self._inbox.clear()
        self._events.clear()
        if self.user is not None:
            self._announce_presence(False)

    def readConnectionLost(self):
        """The client half-closed: finish what it sent, then close."""
        if self._buffer and not self._discarding:
            self._receive_line(self._buffer)
        self._buffer = b""
        self._eof = True
        self._maybe_finish()

    def writeConnectionLost(self):
        self.transport.loseConnection()

    def _maybe_finish(self):
        if self._eof and not self._inbox and not self._busy and not self.closing:
            self.closing = True
            self.transport.loseConnection()

    # output flow control (IPushProducer: the transport tells us when its buffer is full)
    def pauseProducing(self):
        self._write_paused = True

    def resumeProducing(self):
        self._write_paused = False
        self._sendq = 0

    def stopProducing(self):
        self.closing = True

    # ------------------------------------------------------------ input

    def dataReceived(self, data: bytes):
        if self.closing:
            return
        self._buffer += data
        while True:
            end = self._buffer.find(b"\n")
            if end < 0:
                break
            raw, self._buffer = self._buffer[:end], self._buffer[end + 1:]
            if self._discarding:
                self._discarding = False
                continue
            self._receive_line(raw)
            if self.closing:
                return
        if len(self._buffer) > wire.MAX_INPUT_LINE:
            self._buffer = b""
            self._discarding = True

    def _receive_line(self, raw: bytes) -> None:
        self._pinged = False
        if self._idle_timer is not None and self._idle_timer.active():
            self._idle_timer.reset(PING_INTERVAL)
        raw = raw.rstrip(b"\r")
        if len(raw) > wire.MAX_INPUT_LINE or not raw.strip():
            return
        if len(self._inbox) >= MAX_QUEUED:
            self.close("Excess Flood")
            return
        self._inbox.append(wire.decode(raw))
        self._pump()

    def _pump(self) -> None:
        """Handle queued lines in order, one at a time, as the penalty clock allows."""
        while self._inbox and not self._busy and not self.closing:
            now = self.clock.seconds()
            if self._penalty_until > now + BURST:
                if self._wakeup is None or not self._wakeup.active():
                    self._wakeup = self.clock.callLater(
                        self._penalty_until - now - BURST, self._pump)
                return
            line = self._inbox.popleft()
            self._penalty_until = max(self._penalty_until, now) + self._penalty(line)
            d = self._handle_line(line)
            if d is not None and not d.called:
                self._busy = True
                d.addBoth(self._handled)
                return
        self._maybe_finish()

    def _handled(self, _):
        self._busy = False
        self._pump()

    @staticmethod
    def _penalty(line: str) -> float:
        if line.split(" ", 1)[0].upper() in LIGHT_COMMANDS:
            return 0.1
        return LINE_PENALTY + len(line) / BYTES_PER_PENALTY

    def _handle_line(self, line: str) -> defer.Deferred | None:
        parsed = wire.parse(line)
        if parsed is None:
            return None
        command, params = parsed
        try:
            result = self.handleCommand(command, None, params)
        except Exception:
            log.failure("IRC command {command} failed", command=command)
            return None
        if isinstance(result, defer.Deferred):
            return result.addErrback(self._command_failed, command)
        return None

    def _command_failed(self, failure, command):
        log.failure("IRC command {command} failed", failure, command=command)

    def handleCommand(self, command, prefix, params):
        """Dispatch to irc_<COMMAND>; coroutines come back as Deferreds."""
        method = getattr(self, "irc_" + command, None) if command.isalnum() else None
        if not self.registered and (method is None or command not in self.BEFORE_REGISTRATION):
            self.send_numeric("451", "*", text="You have not registered")
            return None
        if method is None:
            self.irc_unknown(prefix, command, params)
            return None
        result = method(prefix, params)
        if hasattr(result, "__await__") and not isinstance(result, defer.Deferred):
            result = defer.ensureDeferred(result)
        return result

    # ------------------------------------------------------------ keepalive

    def _idle(self):
        if self.closing:
            return
        if self._pinged:
            self.close("Ping timeout")
            return
        self._pinged = True
        self.sendLine(f"PING :{self.server}")
        self._idle_timer = self.clock.callLater(PING_INTERVAL, self._idle)

    def _registration_expired(self):
        if not self.registered and not self.closing:
            self.close("Registration timeout")

    # ------------------------------------------------------------ output

    def write(self, data: bytes) -> None:
        """Send now when the transport has nothing buffered (one send() instead of
        Twisted's buffer, two epoll changes and a later doWrite: the fan-out's
        largest cost); whatever the socket does not take goes to the transport,
        which then deals with a full or broken socket as usual."""
        if self.closing or self.transport is None:
            return
        if self._socket is not None:
            data = send_through(self._socket, self.transport, data)
            if not data:
                return
        if self._write_paused:
            self._sendq += len(data)
            if self._sendq > MAX_SENDQ:
                self.closing = True
                self.transport.abortConnection()
                return
        self.transport.write(data)

    def sendLine(self, line: str) -> None:
        self.write(line.encode("utf-8") + b"\r\n")

    def send(self, prefix: str | None, command: str, params=(), text: str | None = None,
             ctcp: str | None = None) -> None:
        self.write(b"".join(wire.lines(prefix, command, params, text, ctcp)))

    def send_numeric(self, code: str, *params: str, text: str | None = None) -> None:
        self.send(self.server, code, params if params else (self.me,), text)

    def reply(self, code: str, *params: str, text: str | None = None) -> None:
        """A numeric to the current nick: `:<srv> NNN <me> params… :text`."""
        self.send(self.server, code, (self.me, *params), text)

    def nickserv(self, text: str) -> None:
        self.send(render.NICKSERV, "NOTICE", (self.me,), text)

    def close(self, reason: str) -> None:
        """`ERROR :Closing Link: …` and close (output is flushed first)."""
        if self.closing:
            return
        self.sendLine(f"ERROR :Closing Link: {self.me}[{self.user.email if self.user else ''}] "
                      f"({reason})")
        self.closing = True
        self.transport.loseConnection()

    # ------------------------------------------------------------ registration

    def maybe_register(self) -> defer.Deferred | None:
        if self.registered or self.nick is None or self.username is None or self.cap_negotiating:
            return None
        self.registered = True
        if self._registration_timer is not None and self._registration_timer.active():
            self._registration_timer.cancel()
        if self.credentials is None:
            self.welcome()
            self.nickserv(f"If you don't have a password, you can set it at: "
                          f"{self.app.public_url}/account")
            self.nickserv("Please identify via /msg NickServ identify <email> <password>")
            self.sendLine(f"PING :{self._token()}")
            return None
        return defer.ensureDeferred(self._register_with_password())

    async def _register_with_password(self):
        email, secret = self.credentials
        self.credentials = None
        outcome = await self.authenticate(email, secret)
        self.welcome()
        self.announce_login(outcome, from_pass=True)
        self.sendLine(f"PING :{self._token()}")

    @staticmethod
    def _token() -> str:
        return secrets.token_hex(4)

    def welcome(self) -> None:
        g = self.gateway
        self.reply("001", text=f"Welcome to the Internet Relay Network {self.prefix}")
        self.reply("002", text=f"Your host is {self.server}, running version {g.version}")
        self.reply("003", text=f"This server was created {g.created}")
        self.reply("004", self.server, g.version, "i", "bis")
        self.reply("005", "CHANTYPES=#", "CHANMODES=b,,,is", "CASEMAPPING=ascii", "NICKLEN=64",
                   "CHANNELLEN=200", f"NETWORK={g.network}",
                   text="are supported by this server")
        self.reply("251", text=f"There are {g.user_count()} users and 0 services on 1 servers")
        self.motd()

    def motd(self) -> None:
        lines = self.gateway.motd_lines()
        if lines is None:
            self.reply("422", text="MOTD File is missing")
            return
        self.reply("375", text=f"- {self.server} Message of the day - ")
        for line in lines:
            self.reply("372", text=f"- {line}")
        self.reply("376", text="End of MOTD command")

    # ------------------------------------------------------------ authentication

    async def authenticate(self, email: str | None, secret: str) -> LoginOutcome:
        """Check credentials and load the visible flows; sends nothing."""
        accounts, chat = self.app.accounts, self.app.chat
        try:
            user = (await accounts.by_password(email, secret) if email is not None
                    else await accounts.by_token(secret))
            if user is None:
                return LoginOutcome(problem="bad-credentials")
            channels = []
            for flow, joined in await chat.all_flows(user):
                org = await self.gateway.organization(flow.organization_id)
                members = await chat.members(flow.id)
                mine = next((m for u, m in members if u.id == user.id), None)
                member = joined and mine is not None and not mine.disabled
                channels.append(Channel(flow, org, member, member and mine.open, members))
            if not channels:
                return LoginOutcome(user=user, problem="no-flows")
            return LoginOutcome(user=user, channels=channels)
        except Exception:
            log.failure("IRC authentication failed")
            return LoginOutcome(problem="error")

    def announce_login(self, outcome: LoginOutcome, from_pass: bool) -> None:
        if self.closing:
            return
        if outcome.problem == "bad-credentials":
            if from_pass:
                self.reply("464", text="Password incorrect")
            self.nickserv("Authentication failed. Check username and password and try again.")
            return
        if outcome.problem == "no-flows":
            self.nickserv("Seems that you don't have access to any flows.")
            self.nickserv(f"Log in and check your current subscription status: "
                          f"{self.app.public_url}")
            return
        if outcome.problem is not None:
            self.nickserv("An error occurred during authentication, please try again.")
            self.nickserv("If the problem persists, contact your administrator.")
            return
        user = outcome.user
        old_prefix = self.prefix
        self.user = user
        self.roster = Roster(user)
        self.nick = self.roster.nick(user.id)
        for channel in outcome.channels:
            self.channels[channel.key] = channel
            self.by_flow[channel.flow.id] = channel
        self.rebuild_roster()
        self.send(old_prefix, "NICK", (), self.nick)
        for channel in outcome.channels:
            if channel.open:
                self.join_burst(channel)
        self._subscribe(user_channel(user.id))
        for channel in outcome.channels:
            if channel.member:
                self._subscribe(flow_channel(channel.flow.id))
        self._announce_presence(True)

    def join_burst(self, channel: Channel) -> None:
        self.send(self.prefix, "JOIN", (), channel.name)
        self.reply("332", channel.name, text=channel.topic)
        self.names(channel)

    def names(self, channel: Channel) -> None:
        nicks = " ".join(self.roster.nick(u.id) or u.nick for u in channel.active_users())
        self.reply("353", "@", channel.name, text=nicks)
        self.reply("366", channel.name, text="End of NAMES list")

    def rebuild_roster(self) -> list[tuple[int, str, str]]:
        users = {}
        for channel in self.channels.values():
            for u, m in channel.members:
                if not m.disabled:
                    users[u.id] = u
        return self.roster.rebuild(users.values())

    def find_channel(self, name: str) -> Channel | None:
        return self.channels.get(wire.irc_lower(name)) if self.user else None

    def host_of(self, user_id: Any) -> str:
        try:
            uid = int(user_id)
        except (TypeError, ValueError):
            return render.FLOWDOCK
        user = self.roster.users.get(uid) if self.roster else None
        if user is None:
            user = self.gateway.known_users.get(uid)
        if user is None:
            return f"user{uid}!unknown@user.flowdock"
        return self.roster.host(user) if self.roster else f"{wire.irc_nick(user.nick)}!{user.email}"

    def author_prefix(self, msg: dict) -> str:
        uid = msg.get("user")
        if (uid in (None, "0", 0)) and msg.get("external_user_name"):
            return f"{wire.external_nick(str(msg['external_user_name']))}!unknown@user.flowdock"
        if uid in (None, "0", 0):
            return render.FLOWDOCK
        return self.host_of(uid)

    # ------------------------------------------------------------ presence

    def _announce_presence(self, active: bool) -> None:
        """Announce this user active or idle in its open flows, when that changes
        for the user (many connections of one account announce once)."""
        if self.user is None:
            return
        if active == self._shown_active:
            return
        self._shown_active = active
        if not self.gateway.presence_changed(self.user.id, active):
            return
        for channel in self.channels.values():
            if channel.open:
                d = defer.ensureDeferred(self.app.chat.activity(self.user, channel.flow.id, active))
                d.addErrback(lambda f: log.failure("IRC presence update failed", f))

    def idle_seconds(self, user: User) -> int:
        if self.user is not None and user.id == self.user.id:
            return 0
        active, since = self.presence.get(user.id, (None, 0))
        if active:
            return 0
        if not since:
            since = max((m.last_activity for c in self.channels.values()
                         for u, m in c.members if u.id == user.id), default=0)
        return max(0, (now_ms() - since) // 1000) if since else 0

    # ------------------------------------------------------------ posting

    def remember_post(self, uuid: str) -> None:
        self._posted[uuid] = None
        while len(self._posted) > MAX_REMEMBERED_POSTS:
            self._posted.popitem(last=False)

    # ------------------------------------------------------------ events

    def _subscribe(self, channel: str) -> None:
        """Flow channels through the gateway's per-flow fan-out, the own private
        channel directly."""
        if channel not in self.subscriptions:
            self.subscriptions.append(channel)
            if channel.startswith(FLOW_PREFIX):
                self.gateway.subscribe_flow(channel, self)
            else:
                self.app.pipeline.hub.add(channel, self.on_event)

    def _unsubscribe(self, channel: str) -> None:
        if channel in self.subscriptions:
            self.subscriptions.remove(channel)
            if channel.startswith(FLOW_PREFIX):
                self.gateway.unsubscribe_flow(channel, self)
            else:
                self.app.pipeline.hub.remove(channel, self.on_event)

    def _unsubscribe_all(self) -> None:
        for channel in list(self.subscriptions):
            self._unsubscribe(channel)

    def on_event(self, event) -> None:
        """A hub listener: an event of one of our flows or a private one."""
        if self.closing:
            return
        if event.uuid and event.uuid in self._posted:
            del self._posted[event.uuid]
            return
        msg = event.message
        kind = msg.get("event")
        if kind == "activity.user":     # frequent: keep it cheap
            self._note_presence(msg)
            return
        if not self._events and kind in render.STATELESS:
            # The fan-out hot path: a chat event by a user this connection knows.
            channel = self.by_flow.get(msg.get("flow"))
            host = self.roster.host_by_id(msg.get("user")) if channel is not None else None
            if host is not None:
                if channel.open:
                    self.write(self.gateway.rendered(
                        event, host, channel.name,
                        lambda: render.RENDERERS[kind](_EventView(self, channel.name), msg)))
                return
        if self._events or self.needs_preparation(msg):
            self._events.append(event)
            if len(self._events) == 1:
                defer.ensureDeferred(self._drain_events()).addErrback(
                    lambda f: log.failure("IRC event handling failed", f))
            return
        self.deliver(event, None)

    async def _drain_events(self) -> None:
        while self._events and not self.closing:
            event = self._events[0]
            try:
                prepared = await self.prepare(event.message)
                if not self.closing:
                    self.deliver(event, prepared)
            except Exception:
                log.failure("IRC event {event} failed", event=event.message.get("event"))
            if self._events:
                self._events.popleft()

    def deliver(self, event, prepared) -> None:
        msg = event.message
        kind = msg.get("event")
        if kind == "activity.user":
            self._note_presence(msg)
            return
        if kind == "presence":
            return
        channel = self.by_flow.get(msg.get("flow")) if msg.get("flow") else None
        if kind == "user-edit":
            channel, target = None, self.nick     # nick changes are connection-wide
        elif channel is not None:
            if not channel.open:
                return
            target = channel.name
        elif msg.get("to") is not None or str(event.conversation).startswith("private:"):
            if str(msg.get("user")) == str(self.user.id):
                return          # my own private message, from another session
            target = self.nick
        else:
            return
        renderer = render.RENDERERS.get(kind)
        if renderer is None:
            return
        if kind in render.STATELESS and channel is not None:
            data = self.gateway.rendered(event, self.author_prefix(msg), target,
                                         lambda: renderer(_EventView(self, target), msg))
        else:
            data = b"".join(renderer(_EventView(self, target, prepared), msg))
        if data:
            self.write(data)

    def _note_presence(self, msg: dict) -> None:
        entry = presence_entry(msg)
        if entry is not None:
            self.presence[entry[0]] = entry[1]

    # events that change what this connection knows, or need a look-up first
    def needs_preparation(self, msg: dict) -> bool:
        kind = msg.get("event")
        if kind in ("action", "backend.user.block", "user-edit", "message-edit",
                    "flow-add", "flow-remove"):
            return True
        uid = msg.get("user")
        if uid in (None, "0", 0) or kind not in render.RENDERERS:
            return False
        try:
            uid = int(uid)
        except (TypeError, ValueError):
            return False
        return uid not in self.roster.users and uid not in self.gateway.known_users

    async def prepare(self, msg: dict) -> Any:
        kind = msg.get("event")
        handler = getattr(self, "prepare_" + str(kind).replace("-", "_").replace(".", "_"), None)
        if handler is not None:
            return await handler(msg)
        try:
            uid = int(msg.get("user"))
        except (TypeError, ValueError):
            return None
        if uid not in self.roster.users:
            await self.gateway.load_user(uid)
        return None

    async def _refresh_members(self, channel: Channel) -> set[int]:
        """Re-read a flow's members; returns the ids of newly active members."""
        before = {u.id for u in channel.active_users()}
        self.app.chat.forget_flow(channel.flow.id)
        channel.members = await self.app.chat.members(channel.flow.id)
        changes = self.rebuild_roster()
        self.announce_nick_changes(changes)
        return {u.id for u in channel.active_users()} - before

    def announce_nick_changes(self, changes, exclude=()) -> None:
        for uid, old, new in changes:
            if uid in exclude:
                continue
            user = self.roster.users[uid]
            self.send(f"{old}!{user.email}", "NICK", (), new)

    async def prepare_action(self, msg: dict):
        channel = self.by_flow.get(msg.get("flow"))
        content = msg.get("content") or {}
        if channel is None or content.get("type") not in ("join", "add_people"):
            return None
        new = await self._refresh_members(channel)
        if content.get("type") == "join":
            try:
                uid = int(msg.get("user"))
            except (TypeError, ValueError):
                return None
            new = {uid} if uid != self.user.id and channel.has_user(uid) else set()
        users = {u.id: u for u in channel.active_users()}
        return [self.roster.host(users[uid]) for uid in sorted(new) if uid in users]

    async def prepare_backend_user_block(self, msg: dict):
        channel = self.by_flow.get(msg.get("flow"))
        try:
            uid = int(msg.get("content") if msg.get("content") not in (None, "")
                      else msg.get("user"))
        except (TypeError, ValueError):
            return None
        if channel is None:
            return None
        user = next((u for u in channel.active_users() if u.id == uid), None)
        host = self.roster.host(user) if user is not None else None
        channel.members = [(u, m) for u, m in channel.members if u.id != uid]
        if uid == self.user.id:
            if channel.open and host:
                self.send(host, "PART", (channel.name,))
            channel.member = channel.open = False
            host = None
        self.app.chat.forget_flow(channel.flow.id)
        self.announce_nick_changes(self.rebuild_roster())
        return host

    async def prepare_user_edit(self, msg: dict):
        data = (msg.get("content") or {}).get("user") or {}
        try:
            uid = int(data.get("id", msg.get("user")))
        except (TypeError, ValueError):
            return None
        if uid not in self.roster.users or not data.get("nick"):
            return None
        old_user = self.roster.users[uid]
        old_host = self.roster.host(old_user)
        updated = attrs.evolve(old_user, nick=str(data["nick"]),
                               name=str(data.get("name") or old_user.name))
        for channel in self.channels.values():
            channel.members = [(updated if u.id == uid else u, m) for u, m in channel.members]
        if uid == self.user.id:
            self.user = updated
            self.roster.me = updated
        changes = self.rebuild_roster()
        if uid == self.user.id:
            self.nick = self.roster.nick(uid)
        # The edited user first, then others whose suffix this freed or took.
        return [(old_host, new) for cuid, old, new in changes if cuid == uid] + [
            (f"{old}!{self.roster.users[cuid].email}", new)
            for cuid, old, new in changes if cuid != uid]

    async def prepare_message_edit(self, msg: dict):
        content = msg.get("content") or {}
        conversation = msg.get("flow")
        if not conversation or not isinstance(content, dict):
            return None
        original = await self.app.store.get(conversation, int(content.get("message") or 0))
        if original is None or now_ms() - int(original.get("sent") or 0) >= render.EDIT_WINDOW_MS:
            return None
        await self.prepare({"event": original.get("event"), "user": original.get("user")})
        return original

    async def prepare_flow_add(self, msg: dict):
        content = msg.get("content") or {}
        flow = await self.app.chat.flow(str(content.get("id") or ""))
        if flow is None or flow.id in self.by_flow:
            return None
        org = await self.gateway.organization(flow.organization_id)
        members = await self.app.chat.members(flow.id)
        mine = next((m for u, m in members if u.id == self.user.id), None)
        channel = Channel(flow, org, mine is not None and not mine.disabled,
                          bool(mine and mine.open and not mine.disabled), members)
        self.channels[channel.key] = channel
        self.by_flow[flow.id] = channel
        self.announce_nick_changes(self.rebuild_roster())
        if channel.member:
            self._subscribe(flow_channel(flow.id))
        if channel.open:
            self.join_burst(channel)
        return None

    async def prepare_flow_remove(self, msg: dict):
        content = msg.get("content") or {}
        channel = self.by_flow.pop(str(content.get("id") or ""), None)
        if channel is None:
            return None
        self.channels.pop(channel.key, None)
        self._unsubscribe(flow_channel(channel.flow.id))
        if channel.open:
            self.send(self.prefix, "PART", (channel.name,))
        self.rebuild_roster()
        return None
