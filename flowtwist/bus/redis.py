"""The production bus: a durable queue and pub/sub fan-out in Redis (txredisapi).

Keys (all under one prefix, default ``flowtwist``; k = 0 .. partitions-1):

- ``<p>:queue:<k>``                 partition k of the queue; producers LPUSH, its
                                    consumer takes from the right
- ``<p>:processing:<consumer>:<k>`` items a consumer took from partition k and has not
                                    yet acknowledged
- ``<p>:lease:<k>``                 which consumer consumes partition k (SET PX, renewed)
- ``<p>:alive:<consumer>``          that consumer's heartbeat, a key with a TTL (value 1
                                    if it consumes, 0 if it only produces)
- ``<p>:consumers``                 every consumer id that may own a processing list
- ``<p>:attempts``                  hash: queue item id → failed attempts so far
- ``<p>:dead``                      dead letters: items that failed ``max_attempts`` times

An item goes to the partition of its key (the pipeline passes the conversation:
``crc32(key) % partitions``), so the items of one conversation are consumed in order,
by one consumer at a time, which keeps a flow's ids published in the order they were
assigned (what listeners rely on); different conversations are consumed in parallel
by different processes.  Every process must use the same number of partitions.

Each consumer holds the leases of its share of the partitions (ceil(partitions / live
consumers)); a heartbeat script renews them, takes free ones up to the share, and
reports the share, so a process holding more than it should gives the extras up after
their current batch (a process that joins gets partitions within a few heartbeats).
Per held partition a loop moves items atomically into the consumer's processing list
(BLMOVE, then a script moving up to a batch); they are removed from there only after
the handler resolved, i.e. after the messages were stored and published.  The handler
runs one batch at a time per process.  A consumer whose heartbeat expired is dead: the
same heartbeat script (atomic, so two live processes never both recover it) puts its
processing lists back at the consuming end of their partitions, counting one more
attempt for each item; its leases outlive its heartbeat by two beats, so a partition's
next consumer always starts with the recovered items, in their order.

Connections per process: commands, one for the blocking pop of each partition it
consumes, and the one subscriber connection that carries every channel this process
listens to.  Each reconnects with backoff; the subscriber re-subscribes and then
reports a gap so that listeners resume from the store by their last seen position.

Replies are parsed by hiredis (a dependency; txredisapi uses it when installed): its
pure-Python parser handles one bulk reply per reactor turn, so a burst of published
events would reach the streams one turn, and one socket write per client, at a time.
"""
from __future__ import annotations

import json
import os
import socket
import uuid as uuidlib
import zlib
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

# Take up to ARGV[1] items in all from the given partitions (KEYS = queue, processing
# pairs), each partition's from its right end into its processing list.
# Returns {partition index, item, partition index, item, ...} (index into the pairs).
TAKE = """
local out, left = {}, tonumber(ARGV[1])
for j = 1, #KEYS, 2 do
  while left > 0 do
    local v = redis.call('LMOVE', KEYS[j], KEYS[j + 1], 'RIGHT', 'LEFT')
    if not v then break end
    out[#out + 1] = (j - 1) / 2
    out[#out + 1] = v
    left = left - 1
  end
end
return out
"""

# Queue an item and ring its partition's bell (a one-element list a consumer with
# nothing to do blocks on).  KEYS = queue, bell; ARGV = item.
ENQUEUE = """
redis.call('LPUSH', KEYS[1], ARGV[1])
if redis.call('LLEN', KEYS[2]) == 0 then redis.call('LPUSH', KEYS[2], '1') end
return 1
"""

# Acknowledge: KEYS = attempts, processing lists; ARGV = key index, id, item, ...
ACK = """
for i = 1, #ARGV, 3 do
  redis.call('LREM', KEYS[tonumber(ARGV[i])], -1, ARGV[i + 2])
  redis.call('HDEL', KEYS[1], ARGV[i + 1])
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

# Give a processing list back to its queue partition (oldest taken item first again).
# KEYS = processing, queue.
REQUEUE = """
local n = 0
while true do
  local v = redis.call('LMOVE', KEYS[1], KEYS[2], 'LEFT', 'RIGHT')
  if not v then break end
  n = n + 1
end
return n
"""

# The heartbeat: ARGV = prefix, consumer id, partitions, alive ms, lease ms, consumes
# (1/0), first partition to try, partitions whose loop runs here (comma-separated).
# Recovers dead consumers, renews and takes leases up to this consumer's share, and
# puts back what this consumer took from partitions it no longer consumes.
# Returns {recovered, share, held partition, ...}.
HEARTBEAT = """
local p, me, n = ARGV[1], ARGV[2], tonumber(ARGV[3])
local consumes = ARGV[6] == '1'
redis.call('SET', p .. ':alive:' .. me, consumes and '1' or '0', 'PX', ARGV[4])
redis.call('SADD', p .. ':consumers', me)
if not consumes then return {0, 0} end
local running = {}
for k in string.gmatch(ARGV[8], '%d+') do running[tonumber(k)] = true end
local live, recovered = 0, 0
for _, c in ipairs(redis.call('SMEMBERS', p .. ':consumers')) do
  local state = redis.call('GET', p .. ':alive:' .. c)
  if state == '1' then
    live = live + 1
  elseif not state then
    for k = 0, n - 1 do
      local src = p .. ':processing:' .. c .. ':' .. k
      while true do
        local v = redis.call('LMOVE', src, p .. ':queue:' .. k, 'LEFT', 'RIGHT')
        if not v then break end
        recovered = recovered + 1
        local id = string.match(v, '^([^\t]*)\t')
        if id then redis.call('HINCRBY', p .. ':attempts', id, 1) end
      end
    end
    redis.call('SREM', p .. ':consumers', c)
  end
end
local share = math.ceil(n / math.max(live, 1))
local held = {}
for k = 0, n - 1 do
  local lease = p .. ':lease:' .. k
  if redis.call('GET', lease) == me then
    redis.call('SET', lease, me, 'PX', ARGV[5])
    held[#held + 1] = k
  end
end
local first = tonumber(ARGV[7])
for i = 0, n - 1 do
  if #held >= share then break end
  local k = (first + i) % n
  local lease = p .. ':lease:' .. k
  if redis.call('SET', lease, me, 'NX', 'PX', ARGV[5]) then held[#held + 1] = k end
end
local mine = {}
for _, k in ipairs(held) do mine[k] = true end
for k = 0, n - 1 do
  if not mine[k] and not running[k] then
    local src = p .. ':processing:' .. me .. ':' .. k
    while true do
      local v = redis.call('LMOVE', src, p .. ':queue:' .. k, 'LEFT', 'RIGHT')
      if not v then break end
    end
  end
end
local out = {recovered, share}
for _, k in ipairs(held) do out[#out + 1] = k end
return out
"""

# Give up a partition: put back what was taken from it, then drop the lease.
# KEYS = processing, queue, lease; ARGV = consumer id.
RELEASE = """
while true do
  local v = redis.call('LMOVE', KEYS[1], KEYS[2], 'LEFT', 'RIGHT')
  if not v then break end
end
if redis.call('GET', KEYS[3]) == ARGV[1] then redis.call('DEL', KEYS[3]) end
return 1
"""

PARTITIONS = 8


def partition_of(key: str | None, partitions: int = PARTITIONS) -> int:
    """The queue partition of an item key (the same in every process)."""
    if not key:
        return 0
    return zlib.crc32(key.encode("utf-8")) % partitions


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
        if not self.service.running:        # stopped: nobody would ever fire it
            return defer.fail(txredisapi.ConnectionError("stopped"))
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
                 ttl: float = 5.0, timeout: float = 5.0, partitions: int = PARTITIONS):
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
        self.partitions = partitions
        self.consumer_id = f"{socket.gethostname()}:{os.getpid()}:{uuidlib.uuid4().hex[:8]}"
        self.consumers_key = f"{prefix}:consumers"
        self.attempts_key = f"{prefix}:attempts"
        self.dead_key = f"{prefix}:dead"
        self._commands = _Link(self, "command", _Commands, self._commands_ready)
        self._blocking = _Link(self, "consumer", _Commands)
        self._subscriber = _Link(self, "subscriber", _Subscriber, self._subscriber_ready)
        self._receivers: dict[str, list] = defaultdict(list)
        self._gap_callbacks: list = []
        self._gap_pending = False
        self._handler = None
        self._running = False
        self.held: set[int] = set()                 # partitions whose lease we hold
        self._giving_up: set[int] = set()           # held, to release after this batch
        self._inflight: set[int] = set()            # partitions of the batch in hand
        self._loop: defer.Deferred | None = None
        self._stopped = False
        self._first = zlib.crc32(self.consumer_id.encode()) % partitions
        self._beat = None

    def queue_key(self, partition: int) -> str:
        return f"{self.prefix}:queue:{partition}"

    def processing_key(self, partition: int, consumer_id: str | None = None) -> str:
        return f"{self.prefix}:processing:{consumer_id or self.consumer_id}:{partition}"

    def bell_key(self, partition: int) -> str:
        return f"{self.prefix}:bell:{partition}"

    def lease_key(self, partition: int) -> str:
        return f"{self.prefix}:lease:{partition}"

    def _alive(self, consumer_id: str) -> str:
        return f"{self.prefix}:alive:{consumer_id}"

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Connect; while Redis is down this waits (logging and retrying), so the
        process opens its ports only once the queue can keep what it accepts."""
        self._running = True
        self._stopped = False
        for link in (self._commands, self._blocking, self._subscriber):
            link.start()
        await self._commands.when_ready()
        await self._subscriber.when_ready()
        await self._register()
        self._beat = self.reactor.callLater(self.heartbeat, self._tick)

    async def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
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
                for k in range(self.partitions):
                    await proto.eval(RELEASE, [self.processing_key(k), self.queue_key(k),
                                               self.lease_key(k)], [self.consumer_id])
                await proto.execute_command("DEL", self._alive(self.consumer_id))
                await proto.execute_command("SREM", self.consumers_key, self.consumer_id)
            except Exception:
                log.failure("could not deregister the Redis consumer")
        self.held = set()
        await self._subscriber.stop()
        await self._commands.stop()

    async def _register(self) -> None:
        proto = await self._commands.when_ready()
        await proto.execute_command("SET", self._alive(self.consumer_id),
                                    b"1" if self._handler else b"0",
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
        # A lease outlives the heartbeat key by two beats: whoever takes a partition
        # over finds the previous consumer's heartbeat gone and its items recovered
        # before it consumes anything new (which keeps each flow's ids in order).
        lease_ms = ttl_ms + int(2000 * self.heartbeat)
        consumes = self._handler is not None
        reply = await proto.eval(HEARTBEAT, [], [
            self.prefix, self.consumer_id, self.partitions, ttl_ms, lease_ms,
            1 if consumes else 0, self._first, ",".join(str(k) for k in self._inflight)])
        if not consumes or not self._running:
            return
        recovered, share = int(reply[0]), int(reply[1])
        held = {int(k) for k in reply[2:]}
        if recovered:
            log.warn("recovered {n} unacknowledged queue items of a dead consumer",
                     n=recovered)
        lost = self.held - held - self._giving_up
        if lost:
            log.warn("lost the lease on queue partitions {ks}; another process consumes them",
                     ks=",".join(str(k) for k in sorted(lost)))
        gained = held - self.held
        self.held = held
        self._giving_up &= held
        # More than our share (another process joined): give the extras up after the
        # current batch; the others take them on their next heartbeat.
        keep = sorted(held - self._giving_up)
        self._giving_up.update(keep[share:])
        if gained:
            log.info("consuming queue partitions {ks} ({id})",
                     ks=",".join(str(k) for k in sorted(held)), id=self.consumer_id)
        if self._loop is None and held:
            self._loop = defer.ensureDeferred(self._consume_loop())
            self._loop.addBoth(self._loop_ended)

    def _loop_ended(self, result):
        self._loop = None
        if isinstance(result, Exception) or hasattr(result, "getErrorMessage"):
            log.error("queue consumer loop ended: {r}", r=result)
        return None

    # ------------------------------------------------------------ queue

    def enqueue(self, item, key: str | None = None):
        proto = self._commands.proto
        if proto is None or not self._running:
            return defer.fail(Unavailable("Message queue unavailable, try again later"))
        payload = uuidlib.uuid4().hex.encode() + b"\t" + json.dumps(
            item, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        k = partition_of(key, self.partitions)
        d = proto.eval(ENQUEUE, [self.queue_key(k), self.bell_key(k)], [payload])
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
        """One loop per process over the partitions it holds: a batch takes from all
        of them (each conversation's items stay in order), so a process holding many
        partitions still stores and publishes few, large batches."""
        turn = 0
        while self._running and self._handler is not None and self.held:
            for k in sorted(self._giving_up):
                await self._release(k)
            partitions = sorted(self.held - self._giving_up)
            if not partitions:
                await _sleep(self.reactor, self.heartbeat)
                continue
            turn += 1
            partitions = partitions[turn % len(partitions):] + partitions[:turn % len(partitions)]
            try:
                taken = await self._take(partitions)
                if not taken:
                    blocking = await self._blocking.when_ready()
                    await blocking.execute_command(
                        "BLPOP", *[self.bell_key(k) for k in partitions], 1)
                    continue
            except Exception as e:
                if not self._running:
                    return
                log.warn("queue consumer: {e}; retrying", e=e)
                for k in partitions:
                    await self._requeue_own(k)
                await _sleep(self.reactor, 0.5)
                continue
            self._inflight = {k for k, _ in taken}
            try:
                await self._handle(taken)
            finally:
                self._inflight = set()

    async def _release(self, k: int) -> None:
        """Hand a partition over: nothing of it stays taken here."""
        try:
            proto = await self._commands.when_ready()
            await proto.eval(RELEASE, [self.processing_key(k), self.queue_key(k),
                                       self.lease_key(k)], [self.consumer_id])
            self.held.discard(k)
            self._giving_up.discard(k)
            log.info("gave queue partition {k} up to balance the consumers", k=k)
        except Exception as e:
            log.warn("could not release queue partition {k} yet: {e}", k=k, e=e)

    async def _take(self, partitions: list[int]) -> list[tuple[int, bytes]]:
        keys = [key for k in partitions
                for key in (self.queue_key(k), self.processing_key(k))]
        proto = await self._commands.when_ready()
        flat = await proto.eval(TAKE, keys, [self.batch]) or []
        return [(partitions[int(flat[i])], flat[i + 1]) for i in range(0, len(flat), 2)]

    async def _requeue_own(self, k: int) -> None:
        """After a connection error: whatever we took goes back to the queue."""
        try:
            proto = await self._commands.when_ready()
            await proto.eval(REQUEUE, [self.processing_key(k), self.queue_key(k)], [])
        except Exception as e:
            log.warn("could not requeue in-flight items yet: {e}", e=e)

    async def _handle(self, taken: list[tuple[int, bytes]]) -> None:
        entries, bad = [], []
        for k, raw in taken:
            qid, _, body = raw.partition(b"\t")
            try:
                entries.append((k, qid, raw, json.loads(body)))
            except ValueError:
                bad.append((k, qid, raw))
        if bad:
            log.error("dead-lettering {n} malformed queue items", n=len(bad))
            await self._fail(bad, max_attempts=1)
        if not entries:
            return
        try:
            await self._handler([item for *_, item in entries])
        except Exception:
            log.failure("queue consumer failed; retrying {n} items", n=len(entries))
            # The whole batch counts one failed attempt.  (Retrying item by item
            # inline made the consumer stall now and then; see the issue note.)
            failed, entries = entries, []
            if failed:
                try:
                    await self._fail([(k, qid, raw) for k, qid, raw, _ in failed])
                except Exception as e:
                    log.warn("could not record the failed attempt: {e}", e=e)
                    for k in {entry[0] for entry in failed}:
                        await self._requeue_own(k)
                await _sleep(self.reactor, 0.2)
            if not entries:
                return
        try:
            proto = await self._commands.when_ready()
            partitions = sorted({k for k, *_ in entries})
            index = {k: i + 2 for i, k in enumerate(partitions)}    # KEYS are 1-based
            args = [x for k, qid, raw, _ in entries for x in (index[k], qid, raw)]
            await proto.eval(ACK, [self.attempts_key] + [self.processing_key(k)
                                                         for k in partitions], args)
        except Exception as e:
            # Stored and published but not acknowledged: the items run again and the
            # store's uuid dedupe makes that harmless.
            log.warn("queue acknowledgement failed: {e}", e=e)
            for k in {entry[0] for entry in entries}:
                await self._requeue_own(k)

    async def _fail(self, entries, max_attempts=None) -> None:
        proto = await self._commands.when_ready()
        by_partition: dict[int, list] = defaultdict(list)
        for k, qid, raw in entries:
            by_partition[k] += [qid, raw]
        for k, pairs in by_partition.items():
            dead = await proto.eval(FAIL, [self.processing_key(k), self.queue_key(k),
                                           self.attempts_key, self.dead_key],
                                    [max_attempts or self.max_attempts] + pairs)
            for raw in dead or ():
                log.error("dead-lettered queue item after {n} attempts (kept in {key}): "
                          "{item}", n=max_attempts or self.max_attempts, key=self.dead_key,
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
