"""The Flowdock streaming API (spec section 7): a held-open response carrying every
event of the chosen flows, as a `\\r\\n`-delimited JSON stream or as Server-Sent Events.

Each connection is a `StreamListener` registered with the process's Hub.  Writes go
straight to the transport while it keeps up; when the transport pushes back, events
wait in a small bounded queue, and a client that lets that queue overflow is
disconnected, so one stalled reader never grows the server or slows the others.
"""
from __future__ import annotations

from collections import deque

from twisted.internet import defer, task
from twisted.logger import Logger
from twisted.web import resource, server
from zope.interface import implementer
from twisted.internet.interfaces import IPushProducer

from flowtwist.api.http import (Authenticator, HTTPError, error_response, header,
                                query_params)
from flowtwist.app import App
from flowtwist.model import ChatError, User, ValidationError, flow_channel, user_channel
from flowtwist.pipeline import Event

log = Logger()

KEEPALIVE_SECONDS = 30.0
ACTIVITY_SECONDS = 60.0
MAX_PENDING_BYTES = 256 * 1024     # per client, while its socket pushes back
RESUME_LIMIT = 5000


@implementer(IPushProducer)
class StreamListener:
    """One open stream: filters events for its conversations and writes them."""

    def __init__(self, request, sse: bool, user: User, conversations: set[str],
                 channels: list[str], app: App, active: str | None):
        self.request = request
        self.sse = sse
        self.user = user
        self.conversations = conversations
        self.channels = channels
        self.app = app
        self.active = active
        self.last_ids: dict[str, int] = {}
        self.last_seq = 0
        self.paused = False
        self.pending: deque[bytes] = deque()
        self.pending_bytes = 0
        self.closed = False
        self.buffering: list[Event] | None = None   # while resuming from the store

    # producer interface: the transport tells us when its buffer is full
    def pauseProducing(self):
        self.paused = True

    def resumeProducing(self):
        self.paused = False
        while self.pending and not self.paused and not self.closed:
            data = self.pending.popleft()
            self.pending_bytes -= len(data)
            self.request.write(data)

    def stopProducing(self):
        self.close()

    def __call__(self, event: Event) -> None:
        if self.closed or event.conversation not in self.conversations:
            return
        if self.buffering is not None:
            self.buffering.append(event)
            return
        self.send(event)

    def send(self, event: Event) -> None:
        if event.id:
            if event.id <= self.last_ids.get(event.conversation, 0):
                return      # a redelivery, or already sent while resuming
            self.last_ids[event.conversation] = event.id
            self.last_seq = max(self.last_seq, event.seq)
        if self.sse:
            data = (b"id: %d\ndata: " % event.seq if event.seq else b"data: ") + event.json + b"\n\n"
        else:
            data = event.json + b"\r\n"
        self.write(data)

    def write(self, data: bytes) -> None:
        if self.closed:
            return
        if not self.paused and not self.pending:
            self.request.write(data)
            return
        self.pending.append(data)
        self.pending_bytes += len(data)
        if self.pending_bytes > MAX_PENDING_BYTES:
            log.info("stream client of user {user} too slow; disconnecting", user=self.user.id)
            self.close(abort=True)

    def keepalive(self) -> None:
        self.write(b":\n\n" if self.sse else b"\n")

    async def catch_up(self, since_seq: int | None = None) -> None:
        """Send what the store has after our last position, then resume live events."""
        if self.closed:
            return
        start = self.last_seq if since_seq is None else since_seq
        self.buffering = self.buffering if self.buffering is not None else []
        try:
            docs = await self.app.store.after_seq(self.conversations, start, RESUME_LIMIT)
            for doc in docs:
                self.send(Event.from_doc(doc))
        finally:
            buffered, self.buffering = self.buffering or [], None
            for event in buffered:
                self.send(event)

    def close(self, abort: bool = False) -> None:
        if self.closed:
            return
        self.closed = True
        self.pending.clear()
        self.pending_bytes = 0
        StreamResource.open_streams.discard(self)
        for channel in self.channels:
            self.app.pipeline.hub.remove(channel, self)
        if abort:
            transport = getattr(self.request.channel, "transport", None)
            if transport is not None:
                transport.abortConnection()
        elif not self.request.finished and not self.request._disconnected:
            self.request.finish()


class StreamResource(resource.Resource):
    """`GET /` and `GET /flows` with `filter`/`user`, and `GET /flows/:org/:flow`."""
    isLeaf = True
    open_streams: set[StreamListener] = set()
    _timer: task.LoopingCall | None = None
    _activity_timer: task.LoopingCall | None = None

    def __init__(self, app: App, auth: Authenticator, prefix: bytes = b""):
        super().__init__()
        self.app = app
        self.auth = auth
        self.prefix = prefix

    @classmethod
    def start_timers(cls, reactor=None) -> None:
        """One keep-alive timer for all streams (not one per connection)."""
        if cls._timer is None:
            cls._timer = task.LoopingCall(cls._keepalive_all)
            if reactor is not None:
                cls._timer.clock = reactor
            cls._timer.start(KEEPALIVE_SECONDS, now=False)

    @classmethod
    def stop_timers(cls) -> None:
        if cls._timer is not None and cls._timer.running:
            cls._timer.stop()
        cls._timer = None

    @classmethod
    def _keepalive_all(cls) -> None:
        for listener in list(cls.open_streams):
            listener.keepalive()
            if listener.active:
                defer.ensureDeferred(_announce(listener))

    def render_OPTIONS(self, request):
        request.setHeader(b"Access-Control-Allow-Origin", request.getHeader(b"origin") or b"*")
        request.setHeader(b"Access-Control-Allow-Headers",
                          b"Authorization, Accept, Last-Event-ID, Content-Type")
        return b""

    def render_GET(self, request):
        defer.ensureDeferred(self._open(request)).addErrback(
            lambda f: log.failure("stream failed", f))
        return server.NOT_DONE_YET

    async def _open(self, request) -> None:
        try:
            listener = await self._listener(request)
        except ChatError as e:
            response = error_response(e)
            if not request._disconnected:
                request.setResponseCode(response.status)
                request.setHeader(b"Content-Type", b"application/json; charset=utf-8")
                for k, v in response.headers.items():
                    request.setHeader(k, v)
                from flowtwist.api.http import json_bytes
                request.write(json_bytes(response.body))
                request.finish()
            return
        if request._disconnected:
            listener.close()
            return
        request.notifyFinish().addBoth(lambda _: listener.close())
        request.registerProducer(listener, True)
        self.open_streams.add(listener)
        last_event_id = header(request, "last-event-id") or query_params(request).get("last_event_id")
        resume = None
        if listener.sse and last_event_id:
            try:
                resume = int(last_event_id)
            except ValueError:
                resume = None
        if resume is not None:
            await listener.catch_up(resume)
        else:
            listener.last_seq = await self.app.store.last_seq()
        if listener.active:
            await _announce(listener)

    async def _listener(self, request) -> StreamListener:
        user = await self.auth.user(request)
        params = query_params(request)
        path = request.path.decode("utf-8", "replace")
        if self.prefix and path.startswith(self.prefix.decode()):
            path = path[len(self.prefix):] or "/"
        parts = [p for p in path.split("/") if p]
        refs: list[str] = []
        if len(parts) == 3 and parts[0] == "flows":
            refs = [f"{parts[1]}/{parts[2]}"]
        elif parts in ([], ["flows"]):
            refs = [r for r in (params.get("filter") or "").split(",") if r.strip()]
        else:
            raise HTTPError(404, "not found")
        want_private = params.get("user") in ("1", "true")
        if not refs and not want_private:
            raise ValidationError({"filter": ["is required unless user=1"]})
        flows = [await self.app.chat.resolve_flow_ref(user, ref.strip()) for ref in refs]
        accept = (params.get("accept") or header(request, "accept") or "application/json").lower()
        sse = "text/event-stream" in accept
        conversations = {f.id for f in flows}
        channels = [flow_channel(f.id) for f in flows]
        if want_private:
            channels.append(user_channel(user.id))
            conversations.update(await self._private_conversations(user))
        active = params.get("active")
        active = active if active in ("true", "idle") else None
        listener = StreamListener(request, sse, user, conversations, channels, self.app, active)
        listener.flows = flows
        listener.private = want_private
        # Private conversations are opened at any time: accept any that name us.
        if want_private:
            listener.conversations = _PrivateAware(conversations, user.id)
        request.setResponseCode(200)
        request.setHeader(b"Content-Type", b"text/event-stream; charset=utf-8" if sse
                          else b"application/json; charset=utf-8")
        request.setHeader(b"Cache-Control", b"no-cache")
        request.setHeader(b"X-Accel-Buffering", b"no")
        origin = request.getHeader(b"origin")
        if origin:
            request.setHeader(b"Access-Control-Allow-Origin", origin)
            request.setHeader(b"Access-Control-Allow-Credentials", b"true")
        for channel in channels:
            self.app.pipeline.hub.add(channel, listener)
        # Send the headers now: clients count the stream as connected at the status.
        request.write(b"")
        return listener

    async def _private_conversations(self, user: User) -> set[str]:
        from flowtwist.model import private_key
        return {private_key(user.id, other) for other in
                await self.app.directory.private_partners(user.id)}


class _PrivateAware(set):
    """The conversation set of a stream with user=1: its flows, and every private
    conversation the user takes part in, including ones started after connecting."""

    def __init__(self, base, user_id: int):
        super().__init__(base)
        self._me = str(user_id)

    def __contains__(self, key):
        if set.__contains__(self, key):
            return True
        if key.startswith("private:"):
            return self._me in key.split(":")[1:]
        return False


async def _announce(listener: StreamListener) -> None:
    for flow in getattr(listener, "flows", []):
        try:
            await listener.app.chat.activity(listener.user, flow.id, listener.active == "true")
        except Exception:
            log.failure("presence update failed")
