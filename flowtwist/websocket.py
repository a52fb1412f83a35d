"""The WebSocket API: one socket per browser tab (or bot) carrying JSON frames both ways.

The client subscribes to flows (and its private conversations) and receives every
event of them in the streaming API's JSON shape, wrapped with the event's position:

    {"op": "event", "seq": 1234, "data": {...the event exactly as streamed...}}

A client that reconnects subscribes with `"since": <last seq it saw>` and receives what
it missed from the store, then live events, with no gap and no repeat (the stream's
`ConversationListener` does that for both edges).  Posting, comments, status, edits,
tag changes and marking read go through `App.chat`, like every other edge.

Authentication: the web app's session cookie (same-origin pages only), or an API
token as `?access_token=` in the URL or in a first frame `{"op": "auth"}`.

Client frames (`ref` is echoed in the answer):
    {"op": "auth", "token": "<API token>"}              when not authenticated by URL/cookie
    {"op": "subscribe", "flows": ["org/flow" | id, ...], "private": true, "since": 1234}
    {"op": "post", "flow": ref, "event": "message"|"status", "content": "...", "tags": [...],
     "thread_id": "...", "uuid": "..."}
    {"op": "status", "flow": ref, "content": "..."}
    {"op": "comment", "flow": ref, "message": 12, "content": "..."}
    {"op": "private", "user": 7, "content": "..."}
    {"op": "edit", "flow": ref | "user": 7, "message": 12, "content": "..."}
    {"op": "tags", "flow": ref | "user": 7, "message": 12, "add": [...], "remove": [...]}
    {"op": "read", "flow": ref | "user": 7, "message": 12}   (drops `:unread:<me>`)
    {"op": "activity", "state": "active" | "idle"}
    {"op": "ping"}
Server frames: hello, subscribed, synced (history sent, now live), event, ack, error, pong.

A socket that stops reading has a bounded buffer (then it is dropped), a socket that
stops answering pings is closed, and malformed input gets an error frame (bad JSON, a
bad request) or a close with the proper code (1003 binary, 1007 invalid UTF-8, 1009
too big); nothing else is disturbed.
"""
from __future__ import annotations

import json
from http.cookies import CookieError, SimpleCookie
from typing import Any
from urllib.parse import urlsplit

from autobahn.twisted.resource import WebSocketResource
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.types import ConnectionDeny
from twisted.internet import defer
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from zope.interface import implementer

from flowtwist.api import shapes
from flowtwist.api.stream import (PRESENCE_OFFLINE, ConversationListener, wake_drain_waiters,
                                  publish_presence)
from flowtwist.app import App
from flowtwist.chat import Actor
from flowtwist.fanout import direct_socket, send_through
from flowtwist.model import (ChatError, Flow, NotFound, User, ValidationError, flow_channel,
                             private_key)
from flowtwist.pipeline import Event, dumps, public

log = Logger()

MAX_MESSAGE_BYTES = 64 * 1024       # a client frame; chat content is at most ~8 KB
MAX_PENDING_BYTES = 256 * 1024      # queued for a socket whose client reads too slowly
PING_INTERVAL = 30.0
PING_TIMEOUT = 30.0
AUTH_TIMEOUT = 15.0                 # to send {"op": "auth"} when the URL had no credentials
MAX_FLOWS = 500
FLUSH_INTERVAL = 0.02               # while busy, frames to a socket go out together this often
BUSY_FLUSH = 0.002                  # a flush longer than this counts as busy

CLOSE_UNAUTHORIZED = 4401           # credentials refused or session ended: do not retry


class SocketListener(ConversationListener):
    """The subscription of one socket: the shared stream logic, delivering frames."""

    def __init__(self, socket: "ChatSocket", app: App, user: User, flows: list[Flow],
                 private: bool):
        super().__init__(app, user, flows, private)
        self.socket = socket

    # A flow's events come through the flow's SocketFanout (one hub listener for all
    # the sockets on it); the user channel is subscribed directly.

    def subscribe(self) -> None:
        hub, fanouts = self.app.pipeline.hub, self.socket.factory.fanouts
        for channel in self.channels:
            if channel.startswith("flow:"):
                fanouts.join(channel, self)
            else:
                hub.add(channel, self)

    def unsubscribe(self) -> None:
        hub, fanouts = self.app.pipeline.hub, self.socket.factory.fanouts
        for channel in self.channels:
            if channel.startswith("flow:"):
                fanouts.leave(channel, self)
            else:
                hub.remove(channel, self)

    def _lost_flow(self, flow_id: str) -> None:
        super()._lost_flow(flow_id)
        self.socket.factory.fanouts.leave(flow_channel(flow_id), self)

    def deliver(self, event: Event) -> None:
        self.socket.send_framed(event_frame(event))


class SocketFanout:
    """The hub listener of one flow channel for every socket subscribed to it.

    Per event, the frame is built once and each live socket costs a dedupe check
    and an append to its waiting frames; a listener that is not simply live
    (holding events while history is replayed, closed, no longer in the flow) takes
    the general path, which decides exactly as for a single listener."""

    def __init__(self):
        self.members: dict[SocketListener, None] = {}

    def __call__(self, event: Event) -> None:
        conversation, seq = event.conversation, event.seq
        frame = None
        for listener in list(self.members):
            try:
                if (listener._buffer is not None or listener.closed
                        or conversation not in listener.flows):
                    listener(event)
                    continue
                if not listener.fresh(event):
                    continue
                if seq and (listener.last_seq is None or seq > listener.last_seq):
                    listener.last_seq = seq
                if frame is None:
                    frame = event_frame(event)
                socket = listener.socket
                out = socket._out
                if out is not None:
                    out.append(frame)
                else:
                    socket.send_framed(frame)
            except Exception:
                log.failure("WebSocket fan-out to one socket failed")


class Fanouts:
    """This process's SocketFanouts, by hub channel."""

    def __init__(self, hub):
        self.hub = hub
        self.by_channel: dict[str, SocketFanout] = {}

    def join(self, channel: str, listener: SocketListener) -> None:
        fanout = self.by_channel.get(channel)
        if fanout is None:
            fanout = self.by_channel[channel] = SocketFanout()
            self.hub.add(channel, fanout)
        fanout.members[listener] = None

    def leave(self, channel: str, listener: SocketListener) -> None:
        fanout = self.by_channel.get(channel)
        if fanout is None or listener not in fanout.members:
            return
        del fanout.members[listener]
        if not fanout.members:
            del self.by_channel[channel]
            self.hub.remove(channel, fanout)

    def drained(self) -> defer.Deferred:
        return self.socket.drained()

    def abort(self) -> None:
        self.socket.abort()


def ws_frame(payload: bytes) -> bytes:
    """An unfragmented, unmasked text frame (RFC 6455 5.2), as a server sends."""
    n = len(payload)
    if n < 126:
        return b"\x81" + bytes((n,)) + payload
    if n < 65536:
        return b"\x81\x7e" + n.to_bytes(2, "big") + payload
    return b"\x81\x7f" + n.to_bytes(8, "big") + payload


_last_frame: tuple[Event | None, bytes] = (None, b"")


def event_frame(event: Event) -> bytes:
    """The frame of an event, built once for all the sockets the Hub hands it to
    (it calls them one after another with the same Event)."""
    global _last_frame
    cached, frame = _last_frame
    if cached is not event:
        frame = ws_frame(b'{"op":"event","seq":%d,"data":%b}' % (event.seq, event.json))
        _last_frame = (event, frame)
    return frame


class Presence:
    """Who is connected to which flow by WebSocket in this process: `activity.user`
    when someone's first socket on a flow opens, when they go idle or come back,
    and (with `"left": true`) when their last socket on it closes."""

    def __init__(self, app: App):
        self.app = app
        self.count: dict[tuple[int, str], int] = {}

    def _run(self, coro) -> None:
        defer.ensureDeferred(coro).addErrback(
            lambda f: log.failure("presence update failed", f))

    def join(self, user: User, flow_ids) -> None:
        for flow_id in flow_ids:
            key = (user.id, flow_id)
            self.count[key] = self.count.get(key, 0) + 1
            if self.count[key] == 1:
                self._run(self.app.chat.activity(user, flow_id, True))

    def state(self, user: User, flow_ids, active: bool) -> None:
        for flow_id in flow_ids:
            self._run(self.app.chat.activity(user, flow_id, active))

    def leave(self, user: User, flow_ids) -> None:
        for flow_id in flow_ids:
            key = (user.id, flow_id)
            left = self.count.get(key, 0) - 1
            if left > 0:
                self.count[key] = left
                continue
            self.count.pop(key, None)
            self._run(self._left(user, flow_id))

    async def _left(self, user: User, flow_id: str) -> None:
        await self.app.chat.activity(user, flow_id, False, left=True)
        await publish_presence(self.app, user.id, flow_id, PRESENCE_OFFLINE)


class FrameError(ChatError):
    status = 400


@implementer(IPushProducer)
class ChatSocket(WebSocketServerProtocol):
    """One WebSocket connection."""

    def __init__(self):
        super().__init__()
        self.user: User | None = None
        self.session_key: str | None = None
        self.listener: SocketListener | None = None
        self.present_in: list[str] = []
        self.paused = False
        self.pending: list[bytes] | None = None
        self._socket = None         # to write through while the transport holds nothing
        self._out: list[bytes] | None = None    # frames waiting for the factory's flush
        self.pending_bytes = 0
        self._drain_waiters: list[defer.Deferred] = []
        self._work: defer.Deferred = defer.succeed(None)    # ops run one after another
        self._auth_timer = None
        self.finished = False

    # ------------------------------------------------------------ handshake

    async def _connect(self, request) -> None:
        factory: SocketFactory = self.factory
        token = (request.params.get("access_token") or [None])[-1]
        try:
            if token:
                user = await factory.app.accounts.by_token(token)
                if user is None:
                    raise ConnectionDeny(401, "Invalid access token")
                self.user = user
                return
            cookie = request.headers.get("cookie")
            if cookie and factory.sessions is not None:
                found = await factory.sessions.from_cookie_header(cookie)
                if found is not None:
                    origin = request.headers.get("origin")
                    host = (request.headers.get("host") or "").lower()
                    if origin and urlsplit(origin).netloc.lower() != host:
                        # A page of another site riding on the browser's cookie.
                        raise ConnectionDeny(403, "Cross-origin WebSocket refused")
                    self.user, self.session_key = found
        except ConnectionDeny:
            raise
        except Exception:
            log.failure("WebSocket authentication failed")
            raise ConnectionDeny(503, "Service temporarily unavailable")
        # Without credentials the client has AUTH_TIMEOUT to send {"op": "auth"}.

    def onConnect(self, request):
        return defer.ensureDeferred(self._connect(request))

    def onOpen(self):
        factory: SocketFactory = self.factory
        transport = self.transport
        # The web server's HTTP channel was the transport's producer; it is done.
        # This socket takes its place, so that a full send buffer pauses us.
        try:
            transport.unregisterProducer()
        except Exception:
            pass
        transport.registerProducer(self, True)
        self._socket = direct_socket(transport)
        factory.sockets.add(self)
        if self.user is not None:
            self._hello()
        else:
            self._auth_timer = factory.reactor.callLater(AUTH_TIMEOUT, self._auth_expired)

    def _hello(self) -> None:
        if self.session_key is not None:
            self.factory.by_session.setdefault(self.session_key, set()).add(self)
        self.send_frame(dumps({"op": "hello", "user": shapes.user_json(self.user)}))

    def _auth_expired(self) -> None:
        self._auth_timer = None
        if self.user is None:
            self.sendClose(CLOSE_UNAUTHORIZED, "Authentication required")

    # ------------------------------------------------------------ output

    def send_frame(self, payload: bytes) -> None:
        self.send_framed(ws_frame(payload))

    def send_framed(self, frame: bytes) -> None:
        """Write a complete text frame.  Not through sendMessage: the fan-out's
        hottest call, and every socket of an event shares one frame.  (No
        fragmentation or compression is ever negotiated.)

        Frames wait for the factory's next flush, which is at once when the server
        is idle and at most every FLUSH_INTERVAL while it is busy: under load one
        send() carries several events (the kernel's send is most of a delivery's
        cost), so a server that falls behind catches up.  Every frame of a socket
        goes through here, so their order is kept."""
        if self.finished or self.state != self.STATE_OPEN:
            return
        if self.paused:
            self._hold(frame)
            return
        if self._out is None:
            self._out = [frame]
            self.factory.flush_later(self)
        else:
            self._out.append(frame)

    def flush(self) -> None:
        """Write the waiting frames: straight to the socket while the transport
        holds nothing, else to the transport."""
        out, self._out = self._out, None
        if not out or self.finished or self.state != self.STATE_OPEN:
            return
        if self.paused:
            for frame in out:
                self._hold(frame)
            return
        data = out[0] if len(out) == 1 else b"".join(out)
        if self._socket is not None:
            data = send_through(self._socket, self.transport, data)
            if not data:
                return
        self.transport.write(data)

    def sendCloseFrame(self, *args, **kwargs):
        self.flush()        # what was sent before the close goes out before it
        return super().sendCloseFrame(*args, **kwargs)

    def _hold(self, frame: bytes) -> None:
        """Queue a frame while the transport pushes back; too much: drop the client."""
        if self.finished:
            return
        if self.pending is None:
            self.pending = []
        self.pending.append(frame)
        self.pending_bytes += len(frame)
        if self.pending_bytes > MAX_PENDING_BYTES:
            log.info("WebSocket client of user {user} too slow; disconnecting",
                     user=self.user.id if self.user else None)
            self.abort()

    def pauseProducing(self):
        self.paused = True

    def resumeProducing(self):
        self.paused = False
        pending, self.pending, self.pending_bytes = self.pending, None, 0
        for frame in pending or ():
            if self.paused:     # the buffer filled again: keep the rest in order
                self.pending = (self.pending or []) + [frame]
                self.pending_bytes += len(frame)
                continue
            if self.state == self.STATE_OPEN and not self.finished:
                self.transport.write(frame)
        wake_drain_waiters(self)

    def stopProducing(self):
        self.abort()

    def drained(self) -> defer.Deferred:
        if self._out:
            self.flush()    # history goes at the client's pace: let the transport judge
        if not self.paused or self.finished:
            return defer.succeed(None)
        waiter: defer.Deferred = defer.Deferred()
        self._drain_waiters.append(waiter)
        return waiter

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abortConnection()
        self._finish()

    # ------------------------------------------------------------ input

    def onMessage(self, payload: bytes, isBinary: bool):
        if isBinary:
            # 1003 "unsupported data" (sendClose only takes application codes).
            self.sendCloseFrame(code=1003, reasonUtf8=b"Binary frames are not supported")
            return
        try:
            frame = json.loads(payload)
        except (ValueError, RecursionError):
            self._error(None, FrameError("Malformed JSON frame"))
            return
        if not isinstance(frame, dict):
            self._error(None, FrameError("A frame must be a JSON object"))
            return
        ref = frame.get("ref")
        if not isinstance(ref, (str, int, type(None))) or isinstance(ref, bool):
            ref = None
        op = frame.get("op")
        handler = OPS.get(op) if isinstance(op, str) else None
        if handler is None:
            self._error(ref, FrameError(f"Unknown op {op!r}"))
            return
        if self.user is None and op not in ("auth", "ping"):
            self._error(ref, ChatError('Authenticate first: {"op": "auth", "token": ...}'),
                        status=401)
            return
        # One op at a time per socket, so that its posts keep their order.
        self._work.addCallback(lambda _: defer.ensureDeferred(self._run(handler, frame, ref)))

    async def _run(self, handler, frame: dict, ref) -> None:
        if self.finished:
            return
        try:
            result = await handler(self, frame)
        except ChatError as e:
            self._error(ref, e)
            return
        except Exception:
            log.failure("WebSocket op {op} failed", op=frame.get("op"))
            self._error(ref, ChatError("Internal server error"), status=500)
            return
        if result is not None:
            reply: dict[str, Any] = {"op": "ack"}
            if ref is not None:
                reply["ref"] = ref
            reply.update(result)
            self.send_frame(dumps(reply))

    def _error(self, ref, error: ChatError, status: int | None = None) -> None:
        frame: dict[str, Any] = {"op": "error", "status": status or error.status,
                                 "message": error.message}
        if error.errors:
            frame["errors"] = error.errors
        if ref is not None:
            frame["ref"] = ref
        self.send_frame(dumps(frame))

    # ------------------------------------------------------------ ops

    async def op_auth(self, frame):
        if self.user is not None:
            raise FrameError("Already authenticated")
        token = frame.get("token")
        user = await self.factory.app.accounts.by_token(token) if isinstance(token, str) else None
        if user is None:
            self.sendClose(CLOSE_UNAUTHORIZED, "Invalid access token")
            return None
        if self._auth_timer is not None and self._auth_timer.active():
            self._auth_timer.cancel()
        self._auth_timer = None
        self.user = user
        self._hello()
        return None

    async def op_ping(self, frame):
        return {"op": "pong"}

    async def op_subscribe(self, frame):
        app: App = self.factory.app
        refs = frame.get("flows") or []
        if not isinstance(refs, list) or len(refs) > MAX_FLOWS or not all(
                isinstance(r, str) for r in refs):
            raise ValidationError({"flows": ["must be a list of flow ids or org/flow names"]})
        private = bool(frame.get("private"))
        since = frame.get("since")
        if since is not None and (not isinstance(since, int) or isinstance(since, bool)
                                  or since < 0):
            raise ValidationError({"since": ["must be a non-negative integer"]})
        flows: dict[str, Flow] = {}
        for ref in refs:
            flow = await app.chat.resolve_flow_ref(self.user, ref)
            flows[flow.id] = flow
        if self.finished:
            return None
        old = self.listener
        if old is not None:
            old.close()
            if since is None:
                since = old.last_seq      # changing flows: carry on from where we are
        listener = self.listener = SocketListener(self, app, self.user, list(flows.values()),
                                                  private)
        if since is not None:
            listener.hold()
        listener.subscribe()
        presence: Presence = self.factory.presence
        joined = [f for f in flows if f not in self.present_in]
        gone = [f for f in self.present_in if f not in flows]
        self.present_in = list(flows)
        presence.join(self.user, joined)
        presence.leave(self.user, gone)
        ref = frame.get("ref")
        self.send_frame(dumps({"op": "subscribed", "ref": ref, "flows": list(flows),
                               "private": private}))
        if since is not None:
            await listener.replay(since)
        else:
            await listener.start_live()
        if not listener.closed:
            self.send_frame(dumps({"op": "synced", "ref": ref, "seq": listener.last_seq}))
        return None

    async def _flow(self, frame) -> Flow:
        ref = frame.get("flow")
        if not isinstance(ref, str) or not ref:
            raise ValidationError({"flow": ["can't be blank"]})
        return await self.factory.app.chat.resolve_flow_ref(self.user, ref)

    async def _conversation(self, frame) -> tuple[str, Flow | None]:
        if frame.get("user") is not None:
            other = await self.factory.app.chat.private_peer(self.user, frame["user"])
            return private_key(self.user.id, other.id), None
        flow = await self._flow(frame)
        return flow.id, flow

    @staticmethod
    def _params(frame) -> dict:
        return {k: v for k, v in frame.items() if k not in ("op", "ref", "flow", "user")}

    async def op_post(self, frame):
        flow = await self._flow(frame)
        params = self._params(frame)
        params.setdefault("event", "message")
        if params["event"] not in ("message", "status", "line"):
            raise ValidationError({"event": ["must be message, status or line"]})
        doc = await self.factory.app.chat.post(Actor(user=self.user), flow, params, wait=True)
        return {"message": public(doc) if doc else None}

    async def op_status(self, frame):
        return await self.op_post(dict(frame, event="status"))

    async def op_comment(self, frame):
        flow = await self._flow(frame)
        doc = await self.factory.app.chat.comment(Actor(user=self.user), flow,
                                                  frame.get("message"), self._params(frame),
                                                  wait=True)
        return {"message": public(doc) if doc else None}

    async def op_private(self, frame):
        chat = self.factory.app.chat
        other = await chat.private_peer(self.user, frame.get("user"))
        params = self._params(frame)
        params["event"] = "message"
        doc = await chat.post_private(self.user, other, params, wait=True)
        return {"message": public(doc) if doc else None}

    async def op_edit(self, frame):
        conversation, flow = await self._conversation(frame)
        if frame.get("content") is None:
            raise ValidationError({"content": ["can't be blank"]})
        await self.factory.app.chat.edit(self.user, conversation, frame.get("message"),
                                         content=frame["content"], flow=flow)
        return {}

    async def op_tags(self, frame):
        conversation, flow = await self._conversation(frame)
        return await self._change_tags(conversation, flow, frame.get("message"),
                                       frame.get("tags"), frame.get("add"), frame.get("remove"))

    async def op_read(self, frame):
        conversation, flow = await self._conversation(frame)
        return await self._change_tags(conversation, flow, frame.get("message"), None, None,
                                       [f":unread:{self.user.id}"])

    async def _change_tags(self, conversation, flow, message_id, tags, add, remove):
        app: App = self.factory.app
        for name, value in (("tags", tags), ("add", add), ("remove", remove)):
            if value is not None and (not isinstance(value, list)
                                      or not all(isinstance(t, str) for t in value)):
                raise ValidationError({name: ["must be a list of tags"]})
        if tags is None:
            try:
                original = await app.store.get(conversation, int(message_id))
            except (TypeError, ValueError):
                original = None
            if original is None:
                raise NotFound()
            current = list(original.get("tags") or [])
            drop = {t.lower() for t in remove or ()}
            tags = [t for t in current if t.lower() not in drop]
            tags += [t for t in add or () if t.lower() not in {c.lower() for c in tags}]
            if tags == current:
                return {}       # nothing to change (say, read twice)
        await app.chat.edit(self.user, conversation, message_id, tags=tags, flow=flow)
        return {}

    async def op_activity(self, frame):
        state = frame.get("state")
        if state not in ("active", "idle"):
            raise ValidationError({"state": ["must be active or idle"]})
        self.factory.presence.state(self.user, self.present_in, state == "active")
        return None

    # ------------------------------------------------------------ end

    def onClose(self, wasClean, code, reason):
        self._finish()

    def _finish(self) -> None:
        if self.finished:
            return
        self.finished = True
        factory: SocketFactory = self.factory
        if self._auth_timer is not None and self._auth_timer.active():
            self._auth_timer.cancel()
        self._auth_timer = None
        factory.sockets.discard(self)
        if self.session_key is not None:
            sockets = factory.by_session.get(self.session_key)
            if sockets is not None:
                sockets.discard(self)
                if not sockets:
                    del factory.by_session[self.session_key]
        if self.listener is not None:
            self.listener.close()
            self.listener = None
        if self.user is not None and self.present_in:
            factory.presence.leave(self.user, self.present_in)
        self.present_in = []
        self.pending, self.pending_bytes = None, 0
        self._out = None
        waiters, self._drain_waiters = self._drain_waiters, []
        for waiter in waiters:
            waiter.callback(None)


OPS = {name[3:]: getattr(ChatSocket, name) for name in dir(ChatSocket)
       if name.startswith("op_")}


class SocketFactory(WebSocketServerFactory):
    protocol = ChatSocket

    def __init__(self, app: App, sessions=None, reactor=None):
        super().__init__()
        if reactor is None:
            from twisted.internet import reactor
        self.reactor = reactor
        self.app = app
        self.sessions = sessions
        self.presence = Presence(app)
        self.sockets: set[ChatSocket] = set()
        self.fanouts = Fanouts(app.pipeline.hub)
        self._dirty: list[ChatSocket] = []      # sockets with frames waiting
        self._flush_call = None
        self._flushed_at = 0.0                  # when the last busy flush ended
        self.by_session: dict[str, set[ChatSocket]] = {}
        self.setProtocolOptions(
            maxFramePayloadSize=MAX_MESSAGE_BYTES, maxMessagePayloadSize=MAX_MESSAGE_BYTES,
            autoPingInterval=PING_INTERVAL, autoPingTimeout=PING_TIMEOUT,
            openHandshakeTimeout=15, closeHandshakeTimeout=5, utf8validateIncoming=True,
            failByDrop=False, webStatus=False, tcpNoDelay=False)

    def flush_later(self, socket: ChatSocket) -> None:
        self._dirty.append(socket)
        if self._flush_call is None:
            delay = max(0.0, self._flushed_at + FLUSH_INTERVAL - self.reactor.seconds())
            self._flush_call = self.reactor.callLater(delay, self._flush)

    def _flush(self) -> None:
        self._flush_call = None
        dirty, self._dirty = self._dirty, []
        started = self.reactor.seconds()
        for socket in dirty:
            try:
                socket.flush()
            except Exception:
                log.failure("WebSocket write failed")
        # A flush that took a while (a fan-out to many sockets) means busy: the next
        # one waits its turn, and carries whatever arrived meanwhile in one send().
        ended = self.reactor.seconds()
        self._flushed_at = ended if ended - started > BUSY_FLUSH else 0.0

    def end_session(self, session_key: str) -> None:
        """The person signed out: close the sockets that the session opened."""
        for socket in list(self.by_session.pop(session_key, ())):
            socket.sendClose(CLOSE_UNAUTHORIZED, "Signed out")


class SocketResource(WebSocketResource):
    """`/ws` on the web port.  After the upgrade, the HTTP channel's idle timer is
    cancelled: it would otherwise hold the finished HTTP request for hours."""

    def render(self, request):
        channel = request.channel
        result = super().render(request)
        try:
            channel.setTimeout(None)
        except Exception:
            pass
        return result


def parse_cookie(header: str, name: str) -> str | None:
    try:
        cookie = SimpleCookie()
        cookie.load(header)
    except CookieError:
        return None
    morsel = cookie.get(name)
    return morsel.value if morsel is not None else None
