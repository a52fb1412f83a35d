"""The Flowdock streaming API (spec section 7): a held-open response carrying every
event of the chosen flows, as a `\\r\\n`-delimited JSON stream or as Server-Sent Events.

Each connection is a `StreamListener` registered with the process's Hub.  Writes go
straight to the transport while it keeps up; when the transport pushes back, events
wait in a small bounded queue, and a client that lets that queue overflow is
disconnected, so one stalled reader never grows the server or slows the others.

`ConversationListener` holds what does not depend on HTTP (which events a person may
see, dedupe of redelivered events, resuming from the store without gaps or repeats)
so that other push edges (WebSocket) can share it.
"""
from __future__ import annotations

from urllib.parse import unquote

from twisted.internet import defer, task
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from twisted.web import resource, server
from zope.interface import implementer

from flowtwist.api.http import (Authenticator, HTTPError, error_response, header,
                                json_bytes, query_params)
from flowtwist.app import App
from flowtwist.model import (ChatError, Flow, User, ValidationError, flow_channel,
                             private_key, user_channel)
from flowtwist.pipeline import Event, dumps

log = Logger()

KEEPALIVE_SECONDS = 30.0
ACTIVITY_SECONDS = 60.0            # how often `active` streams announce `activity.user`
MAX_PENDING_BYTES = 256 * 1024     # per client, while its socket pushes back
MAX_RESUME_BUFFER = 1024 * 1024    # live events held while history is being sent
RESUME_PAGE = 1000
ID_WINDOW = 32                     # how far back a late (out-of-order) id is still accepted

PRESENCE_ACTIVE, PRESENCE_IDLE, PRESENCE_OFFLINE = 2000000, 1000000, 0


def presence_channel(flow_id: str) -> str:
    """`presence` events of a flow go on their own channel: only `presence=1`
    streams subscribe, so nobody else pays for them."""
    return f"presence:{flow_id}"


class ConversationListener:
    """Receives the Hub's events for one person: the events of some flows, and with
    `private` their private conversations and personal events (flow-add, ...).

    Redelivered events (the queue is at-least-once) are dropped by (conversation, id);
    `catch_up` sends what the store has after a position, then what arrived live
    meanwhile, with no gap and no repeat.  Subclasses implement `deliver`, and may
    implement `drained` (wait until the client has taken what was sent) and `abort`.
    """

    def __init__(self, app: App, user: User, flows: list[Flow], private: bool,
                 presence: bool = False):
        self.app = app
        self.user = user
        self.flows = {f.id: f for f in flows}
        self.private = private
        self.presence = presence
        self.privates: set[str] = set()     # private conversations seen (for catch-up)
        self.last_seq: int | None = None    # None until the starting position is known
        self.closed = False
        self._me = str(user.id)
        self._last_ids: dict[str, int] = {}
        self._missing: dict[str, set[int]] = {}
        self._buffer: list[Event] | None = None     # live events while catching up
        self._buffer_bytes = 0
        self._buffer_lost = False
        # The user channel always: private messages (with `private`) and flow-remove.
        self.channels = [flow_channel(f) for f in self.flows] + [user_channel(user.id)]
        if presence:
            self.channels += [presence_channel(f) for f in self.flows]

    # ------------------------------------------------------------ hub side

    def subscribe(self) -> None:
        for channel in self.channels:
            self.app.pipeline.hub.add(channel, self)

    def unsubscribe(self) -> None:
        for channel in self.channels:
            self.app.pipeline.hub.remove(channel, self)

    def wants(self, event: Event) -> bool:
        conversation = event.conversation
        if conversation in self.flows:
            return True
        if not conversation.startswith("private:"):
            return False
        _, lo, hi = conversation.split(":")
        if self._me not in (lo, hi):
            return False
        if lo == hi:    # personal events (flow-add, flow-remove): not stored
            if event.message.get("event") == "flow-remove":
                self._lost_flow(str((event.message.get("content") or {}).get("id")))
            return self.private
        if self.private:
            self.privates.add(conversation)
        return self.private

    def _lost_flow(self, flow_id: str) -> None:
        """The person left (or was removed from) a flow: stop streaming it."""
        if self.flows.pop(flow_id, None) is None:
            return
        for channel in (flow_channel(flow_id), presence_channel(flow_id)):
            if channel in self.channels:
                self.channels.remove(channel)
                self.app.pipeline.hub.remove(channel, self)

    def __call__(self, event: Event) -> None:
        if self.closed or not self.wants(event):
            return
        if self._buffer is not None:
            if self._buffer_bytes + len(event.json) > MAX_RESUME_BUFFER:
                # Too much live traffic while history is sent: drop it and read it
                # from the store afterwards (only transient events are lost).
                self._buffer.clear()
                self._buffer_bytes = 0
                self._buffer_lost = True
            else:
                self._buffer.append(event)
                self._buffer_bytes += len(event.json)
            return
        self.send(event)

    def fresh(self, event: Event) -> bool:
        """False for an event already sent (same conversation and id)."""
        if not event.id:
            return True         # transient (presence, flow-add): never redelivered
        conversation, id_ = event.conversation, event.id
        last = self._last_ids.get(conversation)
        if last is None or id_ > last:
            self._last_ids[conversation] = id_
            missing = self._missing.get(conversation)
            if last is not None and id_ > last + 1:
                # Ids skipped: another consumer may still publish them, a little late.
                if missing is None:
                    missing = self._missing[conversation] = set()
                missing.update(range(max(last + 1, id_ - ID_WINDOW), id_))
            if missing is not None:
                missing.difference_update([i for i in missing if i <= id_ - ID_WINDOW])
                if not missing:
                    del self._missing[conversation]
            return True
        missing = self._missing.get(conversation)
        if missing and id_ in missing:
            missing.discard(id_)
            if not missing:
                del self._missing[conversation]
            return True
        return False

    def send(self, event: Event) -> None:
        if not self.fresh(event):
            return
        if event.seq and (self.last_seq is None or event.seq > self.last_seq):
            self.last_seq = event.seq
        self.deliver(event)

    # ------------------------------------------------------------ resuming

    async def start_live(self) -> None:
        """Start from now: remember the store's position for a later catch-up."""
        try:
            position = await self.app.store.last_seq()
        except Exception:
            log.failure("could not read the store position")
            position = None
        if position is not None and (self.last_seq is None or position > self.last_seq):
            self.last_seq = position

    def hold(self) -> None:
        """Keep live events aside (bounded) until a replay from the store is done."""
        self._buffer = []
        self._buffer_bytes = 0
        self._buffer_lost = False

    async def catch_up(self, since: int | None = None) -> None:
        """Send what the store has after `since` (default: our last position), then
        the live events that arrived meanwhile.  The Hub calls this after a bus gap."""
        start = self.last_seq if since is None else since
        if self._buffer is not None:
            self._buffer_lost = True    # already catching up: read the store once more
            return
        if self.closed or start is None:
            return      # no position yet: nothing to catch up from
        self.hold()
        await self.replay(start)

    async def replay(self, start: int) -> None:
        """The second half of `catch_up`, for a listener already holding live events
        (subscribed and `hold()` before the store is read, so nothing falls between)."""
        try:
            conversations = set(self.flows) | self.privates
            if self.private:
                # Private conversations started while the client was away count too.
                conversations |= {private_key(self.user.id, other) for other in
                                  await self.app.directory.private_partners(self.user.id)}
            while not self.closed:
                self._buffer_lost = False
                docs = await self.app.store.after_seq(conversations, start, RESUME_PAGE)
                for doc in docs:
                    await self.drained()    # history at the client's pace, not in memory
                    if self.closed:
                        return
                    conversation = doc.get("conversation") or ""
                    if conversation in self.flows or conversation.startswith("private:"):
                        self.send(Event.from_doc(doc))
                    start = max(start, doc.get("seq") or 0)
                if len(docs) < RESUME_PAGE and not self._buffer_lost:
                    break
                conversations |= self.privates
        except Exception:
            log.failure("catching up a stream of user {user} failed", user=self.user.id)
            self._buffer = None
            self.abort()        # the client reconnects and resumes; no silent gap
            return
        buffered, self._buffer = self._buffer, None
        self._buffer_bytes = 0
        for event in buffered or ():
            if self.closed:
                return
            self.send(event)
        if self.last_seq is None and not self.closed:
            await self.start_live()     # nothing was missed: a position for later gaps

    # ------------------------------------------------------------ for subclasses

    def deliver(self, event: Event) -> None:
        raise NotImplementedError

    def drained(self) -> defer.Deferred:
        return defer.succeed(None)

    def abort(self) -> None:
        self.close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.unsubscribe()


def wake_drain_waiters(producer) -> None:
    """Fire the `drained()` waiters of a listener whose transport took its data
    (stream and WebSocket listeners share this); still-paused ones keep waiting."""
    waiters, producer._drain_waiters = producer._drain_waiters, []
    for waiter in waiters:
        if producer.paused:
            producer._drain_waiters.append(waiter)
        else:
            waiter.callback(None)


@implementer(IPushProducer)
class StreamListener(ConversationListener):
    """One open stream: frames events as JSON lines or SSE and writes them."""

    def __init__(self, request, sse: bool, user: User, flows: list[Flow], app: App,
                 private: bool = False, active: str | None = None, presence: bool = False):
        super().__init__(app, user, flows, private, presence)
        self.request = request
        self.sse = sse
        self.active = active
        self.paused = False
        self.pending: list[bytes] = []
        self.pending_bytes = 0
        self._drain_waiters: list[defer.Deferred] = []
        self.chunked_transport = None   # set once the headers are written
        self.sent_seq = 0               # SSE: position of the last stored event sent

    # producer interface: the transport tells us when its buffer is full
    def pauseProducing(self):
        self.paused = True

    def resumeProducing(self):
        self.paused = False
        if self.pending and not self.closed:
            data, self.pending, self.pending_bytes = b"".join(self.pending), [], 0
            self.request.write(data)
        wake_drain_waiters(self)

    def stopProducing(self):
        self.close()

    def drained(self) -> defer.Deferred:
        if not self.paused or self.closed:
            return defer.succeed(None)
        waiter: defer.Deferred = defer.Deferred()
        self._drain_waiters.append(waiter)
        return waiter

    def deliver(self, event: Event) -> None:
        if self.sse:
            # Every event has an id: a transient one (presence, activity) repeats the
            # position of the last stored event sent, so resuming from it loses nothing.
            if event.seq > self.sent_seq:
                self.sent_seq = event.seq
            head = b"id: %d\ndata: " % self.sent_seq if self.sent_seq else b"data: "
            self.write(head + event.json + b"\n\n")
        else:
            self.write(event.json + b"\r\n")

    def write(self, data: bytes) -> None:
        if self.closed:
            return
        if not self.paused:
            transport = self.chunked_transport
            if transport is not None and data:
                # Headers are out: frame the chunk here rather than through
                # Request.write (its bookkeeping is the fan-out's hottest call).
                transport.write(b"%x\r\n%b\r\n" % (len(data), data))
            else:
                self.request.write(data)
            return
        self.pending.append(data)
        self.pending_bytes += len(data)
        if self.pending_bytes > MAX_PENDING_BYTES:
            log.info("stream client of user {user} too slow; disconnecting", user=self.user.id)
            self.abort()

    def keepalive(self) -> None:
        # A lone "\n" (never an empty "\r\n": node-flowdock would parse "" and throw);
        # an SSE comment line.
        self.write(b":\n\n" if self.sse else b"\n")

    def abort(self) -> None:
        self.close(abort=True)

    def close(self, abort: bool = False) -> None:
        if self.closed:
            return
        super().close()
        self.pending, self.pending_bytes = [], 0
        StreamResource.forget(self)
        waiters, self._drain_waiters = self._drain_waiters, []
        for waiter in waiters:
            waiter.callback(None)
        request = self.request
        if abort:
            transport = getattr(request.channel, "transport", None)
            if transport is not None:
                transport.abortConnection()
        elif not request.finished and not request._disconnected:
            request.unregisterProducer()
            request.finish()


class StreamResource(resource.Resource):
    """`GET /` and `GET /flows` with `filter`/`user`, and `GET /flows/:org/:flow`."""
    isLeaf = True
    open_streams: set[StreamListener] = set()
    _timer: task.LoopingCall | None = None
    _activity_timer: task.LoopingCall | None = None
    _app: App | None = None
    # (user id, flow id) -> active flag last announced in this activity period
    _announced: dict[tuple[int, str], bool] = {}
    # (user id, flow id) -> open `active` streams, to tell `presence=1` when none is left
    _present: dict[tuple[int, str], int] = {}

    def __init__(self, app: App, auth: Authenticator, prefix: bytes = b""):
        super().__init__()
        self.app = app
        self.auth = auth
        self.prefix = prefix

    # ------------------------------------------------------------ timers

    @classmethod
    def start_timers(cls, reactor=None) -> None:
        """One keep-alive timer and one presence timer for all streams (not one per
        connection)."""
        if cls._timer is None:
            cls._timer = task.LoopingCall(cls._keepalive_all)
            cls._activity_timer = task.LoopingCall(cls._activity_all)
            if reactor is not None:
                cls._timer.clock = reactor
                cls._activity_timer.clock = reactor
            cls._timer.start(KEEPALIVE_SECONDS, now=False)
            cls._activity_timer.start(ACTIVITY_SECONDS, now=False)

    @classmethod
    def stop_timers(cls) -> None:
        for timer in (cls._timer, cls._activity_timer):
            if timer is not None and timer.running:
                timer.stop()
        cls._timer = cls._activity_timer = None
        cls._announced = {}
        cls._present = {}

    @classmethod
    def _keepalive_all(cls) -> None:
        for listener in list(cls.open_streams):
            listener.keepalive()

    @classmethod
    def _activity_all(cls):
        """Announce every active person once per flow and period, however many
        streams they have open (each announcement also writes the directory)."""
        wanted: dict[tuple[int, str], tuple[StreamListener, bool]] = {}
        for listener in cls.open_streams:
            if listener.active:
                for flow_id in listener.flows:
                    key = (listener.user.id, flow_id)
                    active = listener.active == "true" or wanted.get(key, (None, False))[1]
                    wanted[key] = (listener, active)
        # Streams opened later in this period need not announce again.
        cls._announced = {key: active for key, (_, active) in wanted.items()}
        if not wanted:
            return None
        return defer.ensureDeferred(cls._announce_all(wanted))

    @classmethod
    async def _announce_all(cls, wanted) -> None:
        for (user_id, flow_id), (listener, active) in wanted.items():
            await _announce(listener, flow_id, active)

    @classmethod
    async def announce(cls, listener: StreamListener) -> None:
        """A new `active` stream: announce it unless this period already did."""
        for flow_id in list(listener.flows):
            key = (listener.user.id, flow_id)
            active = listener.active == "true"
            if cls._announced.get(key) in (True, active):
                continue
            cls._announced[key] = active
            await _announce(listener, flow_id, active)

    @classmethod
    def remember(cls, listener: StreamListener) -> None:
        cls.open_streams.add(listener)
        if listener.active:
            listener.present_in = list(listener.flows)
            for flow_id in listener.present_in:
                key = (listener.user.id, flow_id)
                cls._present[key] = cls._present.get(key, 0) + 1

    @classmethod
    def forget(cls, listener: StreamListener) -> None:
        if listener not in cls.open_streams:
            return
        cls.open_streams.discard(listener)
        for flow_id in getattr(listener, "present_in", ()):
            key = (listener.user.id, flow_id)
            left = cls._present.get(key, 0) - 1
            if left > 0:
                cls._present[key] = left
                continue
            cls._present.pop(key, None)
            cls._announced.pop(key, None)
            defer.ensureDeferred(publish_presence(
                listener.app, listener.user.id, flow_id, PRESENCE_OFFLINE)).addErrback(
                lambda f: log.failure("presence update failed", f))

    # ------------------------------------------------------------ HTTP

    def render(self, request):
        method = request.method.upper()
        if method == b"OPTIONS":
            request.setHeader(b"Access-Control-Allow-Origin",
                              request.getHeader(b"origin") or b"*")
            request.setHeader(b"Access-Control-Allow-Methods", b"GET, OPTIONS")
            request.setHeader(b"Access-Control-Allow-Headers",
                              b"Authorization, Accept, Last-Event-ID, Content-Type")
            return b""
        if method != b"GET":
            request.setHeader(b"Allow", b"GET, OPTIONS")
            _refuse(request, HTTPError(405, "Method not allowed"))
            return server.NOT_DONE_YET
        defer.ensureDeferred(self._open(request)).addErrback(
            lambda f: log.failure("stream failed", f))
        return server.NOT_DONE_YET

    async def _open(self, request) -> None:
        try:
            listener, resume = await self._listener(request)
        except ChatError as e:
            _refuse(request, e)
            return
        except Exception:
            log.failure("could not open a stream")
            _refuse(request, HTTPError(500, "Internal server error"))
            return
        if request._disconnected:
            return
        if resume is not None:
            # Subscribe before reading the store and hold what arrives meanwhile, so
            # that nothing published while history is read falls between the two.
            listener.hold()
            listener.sent_seq = resume
        listener.subscribe()
        request.notifyFinish().addBoth(lambda _: listener.close())
        request.registerProducer(listener, True)
        if getattr(request.channel, "_waitingForTransport", False):
            listener.pauseProducing()   # the socket was full before we registered
        self.remember(listener)
        # Send the headers now: clients count the stream as connected at the status.
        request.write(b"")
        if request.chunked and not request.finished:
            listener.chunked_transport = request.channel.transport
        if resume is not None:
            await listener.replay(resume)
        else:
            await listener.start_live()
        if listener.active and not listener.closed:
            await self.announce(listener)

    async def _listener(self, request) -> tuple[StreamListener, int | None]:
        user = await self.auth.user(request)
        params = query_params(request)
        path = request.path.decode("utf-8", "replace")
        prefix = self.prefix.decode()
        if prefix and (path == prefix or path.startswith(prefix + "/")):
            path = path[len(prefix):]
        parts = [unquote(p) for p in path.split("/") if p]
        if len(parts) == 3 and parts[0] == "flows":
            refs = [f"{parts[1]}/{parts[2]}"]
        elif parts in ([], ["flows"]):
            refs = [r.strip() for r in (params.get("filter") or "").split(",") if r.strip()]
        else:
            raise HTTPError(404, "not found")
        want_private = (params.get("user") or "").lower() in ("1", "true")
        if not refs and not want_private:
            raise ValidationError({"filter": ["is required unless user=1"]})
        flows: dict[str, Flow] = {}
        for ref in refs:
            flow = await self.app.chat.resolve_flow_ref(user, ref)
            flows[flow.id] = flow
        accept = (params.get("accept") or header(request, "accept") or "application/json").lower()
        sse = "text/event-stream" in accept
        active = params.get("active")
        active = active if active in ("true", "idle") else None
        presence = (params.get("presence") or "").lower() in ("1", "true")
        listener = StreamListener(request, sse, user, list(flows.values()), self.app,
                                  private=want_private, active=active, presence=presence)
        resume = None
        last_event_id = header(request, "last-event-id") or params.get("last_event_id")
        if last_event_id:
            try:
                resume = max(0, int(last_event_id.strip()))
            except ValueError:
                resume = None       # unknown id: live only
        request.setResponseCode(200)
        request.setHeader(b"Content-Type", b"text/event-stream; charset=utf-8" if sse
                          else b"application/json; charset=utf-8")
        request.setHeader(b"Cache-Control", b"no-cache")
        request.setHeader(b"X-Accel-Buffering", b"no")
        origin = request.getHeader(b"origin")
        if origin:
            request.setHeader(b"Access-Control-Allow-Origin", origin)
            request.setHeader(b"Access-Control-Allow-Credentials", b"true")
        return listener, resume


def _refuse(request, error: ChatError) -> None:
    """An error reply (JSON, 4xx/5xx, never a redirect) that ends the request."""
    if request._disconnected or request.finished:
        return
    response = error_response(error)
    body = json_bytes(response.body)
    request.setResponseCode(response.status)
    request.setHeader(b"Content-Type", b"application/json; charset=utf-8")
    request.setHeader(b"Content-Length", str(len(body)).encode())
    origin = request.getHeader(b"origin")
    if origin:
        request.setHeader(b"Access-Control-Allow-Origin", origin)
    for k, v in response.headers.items():
        request.setHeader(k, v)
    request.write(body)
    request.finish()


async def _announce(listener: StreamListener, flow_id: str, active: bool) -> None:
    """`activity.user` in the flow, and a `presence` event for `presence=1` streams."""
    try:
        await listener.app.chat.activity(listener.user, flow_id, active)
        state = PRESENCE_ACTIVE if active else PRESENCE_IDLE
        await publish_presence(listener.app, listener.user.id, flow_id, state)
    except Exception:
        log.failure("presence update failed")


async def publish_presence(app: App, user_id: int, flow_id: str, state: int) -> None:
    from flowtwist.model import now_ms, iso_ms
    doc = {"event": "presence", "flow": flow_id, "user_id": str(user_id),
           "content": {"user_id": str(user_id), "state": state,
                       "updated_at": iso_ms(now_ms())},
           "tags": [], "sent": now_ms()}
    event = Event(0, flow_id, 0, "", dumps(doc))
    await app.bus.publish(presence_channel(flow_id), event.encode())
