"""The embedded bus: an in-process queue and publish/subscribe for one process."""
from __future__ import annotations

from collections import defaultdict, deque

from twisted.internet import defer
from twisted.logger import Logger

log = Logger()


class MemoryBus:
    """Queue and fan-out inside one reactor.

    The queue hands the consumer everything waiting (up to `batch` items) at once, so
    a burst of posts becomes one store transaction.  A failed batch is retried up to
    `max_attempts` times, then dropped to the dead-letter list and logged.
    """

    def __init__(self, reactor=None, batch: int = 256, max_attempts: int = 5):
        if reactor is None:
            from twisted.internet import reactor
        self._reactor = reactor
        self._queue: deque = deque()
        self._batch = batch
        self._max_attempts = max_attempts
        self._handler = None
        self._draining = False
        self._subscribers: dict[str, list] = defaultdict(list)
        self.dead_letters: list = []

    def start(self):
        return defer.succeed(None)

    def stop(self):
        self._handler = None
        return defer.succeed(None)

    def enqueue(self, item, key=None):
        # One queue in one process: every key is consumed in order anyway.
        self._queue.append([item, 0, False])   # item, failed attempts, retry alone
        self._kick()
        return defer.succeed(None)

    def consume(self, handler):
        self._handler = handler
        self._kick()

    def _kick(self):
        if self._handler is not None and not self._draining and self._queue:
            self._draining = True
            # Let the current request finish first; more posts may join the batch.
            self._reactor.callLater(0, lambda: defer.ensureDeferred(self._drain()))

    async def _drain(self):
        try:
            while self._handler is not None and self._queue:
                if self._queue[0][2]:
                    batch = [self._queue.popleft()]
                else:
                    batch = []
                    while self._queue and not self._queue[0][2] and len(batch) < self._batch:
                        batch.append(self._queue.popleft())
                try:
                    await self._handler([entry[0] for entry in batch])
                except Exception:
                    log.failure("queue consumer failed; retrying {n} items", n=len(batch))
                    retry = []
                    for entry in batch:
                        # A failed batch is retried item by item, so that one bad
                        # item cannot take good ones to the dead-letter list with it.
                        if len(batch) > 1:
                            entry[2] = True
                            retry.append(entry)
                            continue
                        entry[1] += 1
                        if entry[1] >= self._max_attempts:
                            log.error("dead-lettering item after {n} attempts: {item!r}",
                                      n=entry[1], item=entry[0])
                            self.dead_letters.append(entry[0])
                        else:
                            retry.append(entry)
                    self._queue.extendleft(reversed(retry))
                    await _sleep(self._reactor, 0.05)
        finally:
            self._draining = False
        self._kick()

    def publish(self, channel, payload):
        for receiver in list(self._subscribers.get(channel, ())):
            try:
                receiver(channel, payload)
            except Exception:
                log.failure("receiver failed on {channel}", channel=channel)
        return defer.succeed(None)

    def subscribe(self, channel, receiver):
        self._subscribers[channel].append(receiver)

    def unsubscribe(self, channel, receiver):
        receivers = self._subscribers.get(channel)
        if receivers and receiver in receivers:
            receivers.remove(receiver)
            if not receivers:
                del self._subscribers[channel]

    def on_gap(self, callback):
        pass    # nothing is ever missed inside one process


def _sleep(reactor, seconds):
    d = defer.Deferred()
    reactor.callLater(seconds, d.callback, None)
    return d
