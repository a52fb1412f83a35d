"""The production bus: a durable queue and pub/sub fan-out in Redis (txredisapi).

Keys (all under one prefix, default ``flowtwist``):

- ``<p>:queue``                 the queue; producers LPUSH, the consumer takes from the right
- ``<p>:processing:<consumer>`` items a consumer has taken and not yet acknowledged
- ``<p>:alive:<consumer>``      that consumer's heartbeat, a key with a TTL
- ``<p>:consumers``             every consumer id that may own a processing list
- ``<p>:attempts``              hash: queue item id → failed attempts so far
- ``<p>:dead``                  dead letters: items that failed ``max_attempts`` times
- ``<p>:lease``                 which consumer is the active one (SET NX PX, renewed)

One process at a time consumes (the holder of the lease); the others stand by and take
over when its lease runs out.  A single consumer keeps the ids of a flow published in
the order they were assigned, which is what listeners rely on; ingest (accepting and
queueing posts) scales with the processes, and the consumer stores and publishes whole
batches.  An item moves atomically into the consumer's processing list (BLMOVE, then a
script moving up to a batch) and is removed from there only after the handler resolved,
i.e. after the messages were stored and published.  A consumer whose heartbeat expired
is dead: its processing list goes back to the queue (an atomic script, so two live
processes never both recover it), counting one more attempt for each item.

Three connections per process: commands, the consumer's blocking pop, and the one
subscriber connection that carries every channel this process listens to.  Each
reconnects with backoff; the subscriber re-subscribes and then reports a gap so that
listeners resume from the store by their last seen position.

Replies are parsed by hiredis (a dependency; txredisapi uses it when installed): its
pure-Python parser handles one bulk reply per reactor turn, so a burst of published
events would reach the streams one turn, and one socket write per client, at a time.
"""
from __future__ import annotations

import json
import os
import socket
import uuid as uuidlib
from collections import defaultdict
from urllib.parse import unquote, urlparse

import txredisapi
from twisted.application.internet import ClientService, backoffPolicy
from twisted.internet import defer, endpoints, protocol
from twisted.logger import Logger

from flowtwist.model import Unavailable

log = Logger()

if txredisapi.RedisProtocol is not txredisapi.HiredisProtocol:     # pragma: no cover
    log.warn("hiredis is not installed: Redis replies are parsed slowly")

# Move up to ARGV[1] items from the queue's right end to the processing list.
TAKE = """
local out = {}
for i = 1, tonumber(ARGV[1]) do
  local v = redis.call('LMOVE', KEYS[1], KEYS[2], 'RIGHT', 'LEFT')
  if not v then break end
  out[#out + 1] = v
end
return out
"""

# Acknowledge: ARGV = id1, item1, id2, item2, ...
ACK = """
for i = 1, #ARGV, 2 do
  redis.call('LREM', KEYS[1], -1, ARGV[i + 1])
  redis.call('HDEL', KEYS[2], ARGV[i])
end
return 1
"""

# A failed batch: count an attempt for each item; retry it first, or dead-letter it.
# KEYS = processing, queue, attempts, dead; ARGV = max, id1, item1, ...
FAIL = """
local dead = {}
local max = tonumber(ARGV[1])
for i = 2, #ARGV, 2 do
  local n = redis.call('HINCRBY', KEYS[3], ARGV[i], 1)
  redis.call('LREM', KEYS[1], -1, ARGV[i + 1])
  if n >= max then
    redis.call('HDEL', KEYS[3], ARGV[i])
    redis.call('LPUSH', KEYS[4], ARGV[i + 1])
    dead[#dead + 1] = ARGV[i + 1]
  else
    redis.call('RPUSH', KEYS[2], ARGV[i + 1])
  end
end
return dead
"""

# Give a processing list back to the queue (oldest taken item consumed first again).
# KEYS = alive key, processing, queue, consumers, attempts; ARGV = consumer id, force,
# count attempts.  Does nothing while the owner's heartbeat is alive (unless forced).
RECOVER = """
if ARGV[2] ~= '1' and redis.call('EXISTS', KEYS[1]) == 1 then return -1 end
local n = 0
while true do
  local v = redis.call('LMOVE', KEYS[2], KEYS[3], 'LEFT', 'RIGHT')
  if not v then break end
  n = n + 1
  if ARGV[3] == '1' then
    local id = string.match(v, '^([^\\t]*)\\t')
    if id then redis.call('HINCRBY', KEYS[5], id, 1) end
  end
end
if ARGV[2] ~= '1' then redis.call('SREM', KEYS[4], ARGV[1]) end
return n
"""

# Take or keep the lease: KEYS = lease; ARGV = consumer id, ttl ms.
LEASE = """
local holder = redis.call('GET', KEYS[1])
if holder == false or holder == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""

RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 1
"""


def parse_url(url: str) -> dict:
    """redis://[:password@]host[:port][/db] → connection parameters."""
    if "://" not in url:
        url = "redis://" + url
    u = urlparse(url)
    if u.scheme not in ("redis", "tcp"):
        raise ValueError(f"unsupported Redis URL {url!r} (use redis://host:port/db)")
    db = u.path.strip("/")
    return {"host": u.hostname or "127.0.0.1", "port": u.port or 6379,
            "password": unquote(u.password) if u.password else None,
            "username": unquote(u.username) if u.username else None,
            "dbid": int(db) if db else None}


class _Commands(txredisapi.RedisProtocol):
    link: "_Link"

    def connectionLost(self, why):
        super().connectionLost(why)
        self.link._lost(self)


class _Subscriber(txredisapi.SubscriberProtocol):
    """The subscriber connection: messages go to the bus; subscribe confirmations are
    consumed here (nothing waits on them) so they never mix with other replies."""
    link: "_Link"

    def replyReceived(self, reply):
        if isinstance(reply, list) and len(reply) >= 3:
            kind = reply[0]
            if kind == b"message":
                self.link.bus._deliver(reply[1], reply[2])
                return
            if kind in (b"subscribe", b"unsubscribe"):
                self.link.bus._confirmed(kind)
                return
        self.replyQueue.put(reply)

    def send(self, *args) -> None:
        self.transport.write(self._build_command(*args))

    def connectionLost(self, why):
        super().connectionLost(why)
        self.link._lost(self)


class _Link(protocol.Factory):
    """One Redis connection kept open by a ClientService, reconnecting with backoff.

    Also stands in as the protocol's `factory` (txredisapi asks it about auth errors)."""
    isLazy = True
    noisy = False

    def __init__(self, bus: "RedisBus", name: str, protocol_class, on_ready=None):
        self.bus = bus
        self.name = name
        self.protocol_class = protocol_class
        self.on_ready = on_ready
        self.proto = None
        self.ever_connected = False
        self._failures = 0
        self._waiting: list[defer.Deferred] = []
        params = bus.params
        endpoint = endpoints.TCP4ClientEndpoint(bus.reactor, params["host"], params["port"],
                                                timeout=5)
        policy = backoffPolicy(initialDelay=0.2, maxDelay=5.0, factor=2.0)

        def retry(attempt):
            delay = policy(attempt)
            self._failures += 1
            if self._failures == 1 or self._failures % 10 == 0:
                log.warn("Redis at {addr} unreachable ({name} connection, attempt {n}); "
                         "retrying in {delay:.1f}s", addr=bus.address, name=name,
                         n=self._failures, delay=delay)
            return delay
        self.service = ClientService(endpoint, self, retryPolicy=retry,
                                     clock=bus.reactor, prepareConnection=self._prepare)

    def buildProtocol(self, addr):
        params = self.bus.params
        p = self.protocol_class(charset=None, password=params["password"],
                                dbid=params["dbid"], convertNumbers=False,
                                username=params["username"])
        p.factory = self
        p.link = self
        return p

    # txredisapi calls these when AUTH/SELECT fail
    def stopTrying(self):
        pass

    def connectionError(self, why):
        log.error("Redis {name} connection refused: {why}", name=self.name, why=why)

    def _prepare(self, proto):
        return proto.whenConnected().addCallback(self._ready)

    def _ready(self, proto):
        if self._failures or self.ever_connected:
            log.info("Redis at {addr} connected ({name} connection)",
                     addr=self.bus.address, name=self.name)
        reconnect = self.ever_connected
        self._failures = 0
        self.ever_connected = True
        self.proto = proto
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.callback(proto)
        if self.on_ready is not None:
            self.on_ready(proto, reconnect)
        return proto

    def _lost(self, proto):
        if self.proto is proto:
            self.proto = None
            if self.service.running:
                log.warn("Redis {name} connection lost; reconnecting", name=self.name)

    def when_ready(self):
        if self.proto is not None:
            return defer.succeed(self.proto)
        d = defer.Deferred()
        self._waiting.append(d)
        return d

    def start(self):
        self.service.startService()

    def stop(self):
        for d in self._waiting:
            d.errback(txredisapi.ConnectionError("stopped"))
        self._waiting = []
        return self.service.stopService()


class RedisBus:
    """The Bus on Redis; see the module docstring for the layout."""

    def __init__(self, url: str, reactor=None, *, prefix: str = "flowtwist",
                 batch: int = 256, max_attempts: int = 5, heartbeat: float = 1.0,
                 ttl: float = 5.0, timeout: float = 5.0):
        if reactor is None:
            from twisted.internet import reactor
        self.reactor = reactor
        self.params = parse_url(url)
        self.address = f"{self.params['host']}:{self.params['port']}"
        self.prefix = prefix
        self.batch = batch
        self.max_attempts = max_attempts
        self.heartbeat = heartbeat
        self.ttl = ttl
        self.timeout = timeout
        self.consumer_id = f"{socket.gethostname()}:{os.getpid()}:{uuidlib.uuid4().hex[:8]}"
        self.queue_key = f"{prefix}:queue"
        self.processing_key = self._processing(self.consumer_id)
        self.consumers_key = f"{prefix}:consumers"
        self.attempts_key = f"{prefix}:attempts"
        self.dead_key = f"{prefix}:dead"
        self.lease_key = f"{prefix}:lease"
        self._commands = _Link(self, "command", _Commands, self._commands_ready)
        self._blocking = _Link(self, "consumer", _Commands)
        self._subscriber = _Link(self, "subscriber", _Subscriber, self._subscriber_ready)
        self._receivers: dict[str, list] = defaultdict(list)
        self._gap_callbacks: list = []
        self._gap_pending = False
        self._handler = None
        self._running = False
        self._leader = False
        self._loop: defer.Deferred | None = None
        self._beat = None

    def _processing(self, consumer_id: str) -> str:
        return f"{self.prefix}:processing:{consumer_id}"

    def _alive(self, consumer_id: str) -> str:
        return f"{self.prefix}:alive:{consumer_id}"

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Connect; while Redis is down this waits (logging and retrying), so the
        process opens its ports only once the queue can keep what it accepts."""
        self._running = True
        for link in (self._commands, self._blocking, self._subscriber):
            link.start()
        await self._commands.when_ready()
        await self._subscriber.when_ready()
        await self._register()
        self._beat = self.reactor.callLater(self.heartbeat, self._tick)

    async def stop(self) -> None:
        self._running = False
        if self._beat is not None and self._beat.active():
            self._beat.cancel()
        self._beat = None
        await self._blocking.stop()         # interrupts a blocking pop
        if self._loop is not None:
            try:
                await self._loop
            except Exception:
                pass
        proto = self._commands.proto
        if proto is not None:
            try:
                # Hand back anything unacknowledged, and step aside at once.
                await proto.eval(RECOVER, [self._alive(self.consumer_id), self.processing_key,
                                           self.queue_key, self.consumers_key,
                                           self.attempts_key],
                                 [self.consumer_id, "1", "0"])
                await proto.eval(RELEASE, [self.lease_key], [self.consumer_id])
                await proto.execute_command("DEL", self._alive(self.consumer_id))
                await proto.execute_command("SREM", self.consumers_key, self.consumer_id)
            except Exception:
                log.failure("could not deregister the Redis consumer")
        await self._subscriber.stop()
        await self._commands.stop()

    async def _register(self) -> None:
        proto = await self._commands.when_ready()
        await proto.execute_command("SET", self._alive(self.consumer_id), b"1",
                                    "PX", int(self.ttl * 1000))
        await proto.execute_command("SADD", self.consumers_key, self.consumer_id)

    def _commands_ready(self, proto, reconnect) -> None:
        if reconnect and self._running:
            defer.ensureDeferred(self._register()).addErrback(
                lambda f: log.failure("Redis consumer registration failed", f))

    def _tick(self) -> None:
        self._beat = None
        if not self._running:
            return

        def again(_):
            if self._running:
                self._beat = self.reactor.callLater(self.heartbeat, self._tick)
        d = defer.ensureDeferred(self._heartbeat())
        d.addErrback(lambda f: log.warn("Redis heartbeat failed: {e}",
                                        e=f.getErrorMessage()))
        d.addBoth(again)

    async def _heartbeat(self) -> None:
        proto = self._commands.proto
        if proto is None:
            return
        ttl_ms = int(self.ttl * 1000)
        await proto.execute_command("SET", self._alive(self.consumer_id), b"1", "PX", ttl_ms)
        if self._handler is None:
            return
        # The lease outlives the heartbeat key by two beats: whoever takes the lease
        # over finds the previous consumer's heartbeat gone and recovers its items
        # before consuming anything new (which keeps each flow's ids in order).
        lease_ms = ttl_ms + int(2000 * self.heartbeat)
        leader = bool(await proto.eval(LEASE, [self.lease_key], [self.consumer_id, lease_ms]))
        if leader and not self._leader:
            log.info("this process is now the queue consumer ({id})", id=self.consumer_id)
        elif self._leader and not leader:
            log.warn("lost the queue consumer lease; standing by")
        self._leader = leader
        if leader:
            await self._recover_dead(proto)
            if self._loop is None:
                self._loop = defer.ensureDeferred(self._consume_loop())
                self._loop.addBoth(self._loop_ended)

    def _loop_ended(self, result):
        self._loop = None
        if isinstance(result, Exception) or hasattr(result, "getErrorMessage"):
            log.error("queue consumer loop ended: {r}", r=result)
        return None

    async def _recover_dead(self, proto) -> None:
        members = await proto.execute_command("SMEMBERS", self.consumers_key)
        for raw in members or ():
            cid = raw.decode() if isinstance(raw, bytes) else str(raw)
            if cid == self.consumer_id:
                continue
            n = await proto.eval(RECOVER, [self._alive(cid), self._processing(cid),
                                           self.queue_key, self.consumers_key,
                                           self.attempts_key], [cid, "0", "1"])
            if n and n > 0:
                log.warn("recovered {n} unacknowledged queue items of dead consumer {cid}",
                         n=n, cid=cid)

    # ------------------------------------------------------------ queue

    def enqueue(self, item):
        proto = self._commands.proto
        if proto is None or not self._running:
            return defer.fail(Unavailable("Message queue unavailable, try again later"))
        payload = uuidlib.uuid4().hex.encode() + b"\t" + json.dumps(
            item, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        d = proto.execute_command("LPUSH", self.queue_key, payload)
        d.addTimeout(self.timeout, self.reactor)

        def failed(f):
            log.warn("enqueue failed: {e}", e=f.getErrorMessage())
            raise Unavailable("Message queue unavailable, try again later")
        d.addCallbacks(lambda _: None, failed)
        return d

    def consume(self, handler) -> None:
        self._handler = handler
        if self._running and self._beat is not None:
            self._beat.reset(0)

    async def _consume_loop(self) -> None:
        while self._running and self._leader and self._handler is not None:
            try:
                items = await self._take()
            except Exception as e:
                if not self._running:
                    return
                log.warn("queue consumer: {e}; retrying", e=e)
                await self._requeue_own()
                await _sleep(self.reactor, 0.5)
                continue
            if items:
                await self._handle(items)

    async def _take(self) -> list[bytes]:
        proto = await self._commands.when_ready()
        items = await proto.eval(TAKE, [self.queue_key, self.processing_key], [self.batch])
        if items:
            return list(items)
        blocking = await self._blocking.when_ready()
        first = await blocking.execute_command("BLMOVE", self.queue_key, self.processing_key,
                                               "RIGHT", "LEFT", 1)
        if not first:
            return []
        proto = await self._commands.when_ready()
        more = await proto.eval(TAKE, [self.queue_key, self.processing_key], [self.batch - 1])
        return [first, *(more or ())]

    async def _requeue_own(self) -> None:
        """After a connection error: whatever we took goes back to the queue."""
        try:
            proto = await self._commands.when_ready()
            await proto.eval(RECOVER, [self._alive(self.consumer_id), self.processing_key,
                                       self.queue_key, self.consumers_key, self.attempts_key],
                             [self.consumer_id, "1", "0"])
        except Exception as e:
            log.warn("could not requeue in-flight items yet: {e}", e=e)

    async def _handle(self, raw_items: list[bytes]) -> None:
        entries, bad = [], []
        for raw in raw_items:
            qid, _, body = raw.partition(b"\t")
            try:
                entries.append((qid, raw, json.loads(body)))
            except ValueError:
                bad.append((qid, raw))
        if bad:
            log.error("dead-lettering {n} malformed queue items", n=len(bad))
            await self._fail(bad, max_attempts=1)
        if not entries:
            return
        try:
            await self._handler([item for _, _, item in entries])
        except Exception:
            log.failure("queue consumer failed; retrying {n} items", n=len(entries))
            # Retry item by item, so that one bad item cannot take the good ones of
            # its batch to the dead-letter list with it.
            failed, done = [], []
            for entry in entries if len(entries) > 1 else ():
                try:
                    await self._handler([entry[2]])
                    done.append(entry)
                except Exception:
                    failed.append(entry)
            failed, entries = (failed, done) if len(entries) > 1 else (entries, [])
            if failed:
                try:
                    await self._fail([(qid, raw) for qid, raw, _ in failed])
                except Exception as e:
                    log.warn("could not record the failed attempt: {e}", e=e)
                    await self._requeue_own()
                await _sleep(self.reactor, 0.2)
            if not entries:
                return
        try:
            proto = await self._commands.when_ready()
            args = [x for qid, raw, _ in entries for x in (qid, raw)]
            await proto.eval(ACK, [self.processing_key, self.attempts_key], args)
        except Exception as e:
            # Stored and published but not acknowledged: the items run again and the
            # store's uuid dedupe makes that harmless.
            log.warn("queue acknowledgement failed: {e}", e=e)
            await self._requeue_own()

    async def _fail(self, entries, max_attempts=None) -> None:
        proto = await self._commands.when_ready()
        args = [max_attempts or self.max_attempts] + [x for qid, raw in entries
                                                      for x in (qid, raw)]
        dead = await proto.eval(FAIL, [self.processing_key, self.queue_key,
                                       self.attempts_key, self.dead_key], args)
        for raw in dead or ():
            log.error("dead-lettered queue item after {n} attempts (kept in {key}): {item}",
                      n=max_attempts or self.max_attempts, key=self.dead_key,
                      item=raw[:500].decode("utf-8", "replace"))

    # ------------------------------------------------------------ pub/sub

    def publish(self, channel, payload):
        proto = self._commands.proto
        if proto is None:
            return defer.fail(Unavailable("Message bus unavailable"))
        d = proto.execute_command("PUBLISH", channel, payload)
        d.addTimeout(self.timeout, self.reactor)
        return d.addCallback(lambda _: None)

    def subscribe(self, channel, receiver) -> None:
        receivers = self._receivers[channel]
        receivers.append(receiver)
        if len(receivers) == 1 and self._subscriber.proto is not None:
            self._subscriber.proto.send("SUBSCRIBE", channel)

    def unsubscribe(self, channel, receiver) -> None:
        receivers = self._receivers.get(channel)
        if not receivers or receiver not in receivers:
            return
        receivers.remove(receiver)
        if not receivers:
            del self._receivers[channel]
            if self._subscriber.proto is not None:
                self._subscriber.proto.send("UNSUBSCRIBE", channel)

    def on_gap(self, callback) -> None:
        self._gap_callbacks.append(callback)

    def _subscriber_ready(self, proto, reconnect) -> None:
        if self._receivers:
            proto.send("SUBSCRIBE", *self._receivers)
            # Once Redis confirms, the channels are live again; anything published
            # while we were away must come from the store.
            self._gap_pending = reconnect
        elif reconnect:
            self._fire_gap()

    def _confirmed(self, kind) -> None:
        if kind == b"subscribe" and self._gap_pending:
            self._gap_pending = False
            self._fire_gap()

    def _fire_gap(self) -> None:
        log.info("Redis pub/sub resubscribed; listeners catch up from the store")
        for callback in list(self._gap_callbacks):
            try:
                callback()
            except Exception:
                log.failure("gap callback failed")

    def _deliver(self, channel: bytes, payload: bytes) -> None:
        name = channel.decode("utf-8", "replace")
        for receiver in list(self._receivers.get(name, ())):
            try:
                receiver(name, payload)
            except Exception:
                log.failure("receiver failed on {channel}", channel=name)

    # ------------------------------------------------------------ inspection (tests, admin)

    async def dead_letters(self) -> list[bytes]:
        proto = await self._commands.when_ready()
        return list(await proto.execute_command("LRANGE", self.dead_key, 0, -1) or ())


def _sleep(reactor, seconds):
    d = defer.Deferred()
    reactor.callLater(seconds, d.callback, None)
    return d
