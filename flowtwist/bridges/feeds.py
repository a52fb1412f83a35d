"""Feed subscriptions of flows (RSS/Atom, Twitter) and the service that polls them.

A subscription lives in the directory (`Directory.create_feed` …).  Adding or removing
one posts the spec's `action` event (add_rss_feed, remove_twitter_search, …) into the
flow.  The REST API and flowtwist-admin change subscriptions; every process running
pollers (--feeds yes) picks changes up at once through the bus channel `feeds` (and
by re-reading the directory every `SYNC_EVERY` seconds or --feed-interval, for changes made while
it was down or by flowtwist-admin, whose add/remove actions it then posts).

Each subscription gets a `Poller`: one poll, then the next after the interval with
jitter; after failures the delay doubles up to `MAX_BACKOFF` intervals; a server's
Retry-After / rate-limit reset is honoured.  What a poll found is posted through
`App.chat.post_inbox` with a stable uuid per entry, so nothing is posted twice, across
restarts too; the poller's state (validators, since_id, seen entry ids) is kept in the
directory.
"""
from __future__ import annotations

import random
import re
from typing import Callable
from urllib.parse import urlparse

from twisted.application import service
from twisted.internet import defer, task
from twisted.logger import Logger
from twisted.python.failure import Failure

from flowtwist.model import Flow, ValidationError, iso_ms, now_ms
from flowtwist.service import register_edge

log = Logger()

CHANNEL = "feeds"
SYNC_EVERY = 30.0
MAX_BACKOFF = 16            # intervals
JITTER = 0.1                # +-10% of the interval

# kind → (add action, remove action)
ACTIONS = {"rss": ("add_rss_feed", "remove_rss_feed"),
           "twitter_search": ("add_twitter_search", "remove_twitter_search"),
           "twitter_follow": ("add_twitter_follow", "remove_twitter_follow")}
KIND_FIELDS = {"rss": "url", "twitter_search": "query", "twitter_follow": "screen_name"}


class PollError(Exception):
    """A poll failed; `retry_after` (seconds) when the server said when to come back."""

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


# ---------------------------------------------------------------- subscriptions

def normalise_target(kind: str, params: dict) -> str:
    """The subscription target from API parameters; ValidationError if unusable."""
    if kind not in ACTIONS:
        raise ValidationError({"type": [f"must be one of {', '.join(ACTIONS)}"]})
    name = KIND_FIELDS[kind]
    value = params.get(name, params.get("target"))
    if not isinstance(value, str) or not value.strip():
        raise ValidationError({name: ["can't be blank"]})
    value = value.strip()
    if kind == "rss":
        parsed = urlparse(value)
        if parsed.scheme not in ("http", "https") or not parsed.netloc or len(value) > 2000:
            raise ValidationError({"url": ["must be an http or https URL"]})
    elif kind == "twitter_follow":
        value = value.lstrip("@")
        if not re.fullmatch(r"[A-Za-z0-9_]{1,15}", value):
            raise ValidationError({"screen_name": ["is not a Twitter screen name"]})
    elif len(value) > 512:
        raise ValidationError({"query": ["is too long (maximum is 512 characters)"]})
    return value


async def subscribe(app, user, flow: Flow, kind: str, params: dict) -> tuple[dict, bool]:
    """Add a subscription (posting its action); an existing one is returned as is."""
    target = normalise_target(kind, params)
    feed, created = await app.directory.create_feed(flow.id, kind, target,
                                                    user.id if user else None,
                                                    announced=user is not None)
    if created:
        if user is not None:
            await app.chat.post_action(user, flow, ACTIONS[kind][0], target)
        await changed(app)
    return feed, created


async def unsubscribe(app, user, flow: Flow, feed: dict) -> None:
    await app.directory.delete_feed(feed["id"])
    await app.chat.post_action(user, flow, ACTIONS[feed["kind"]][1], feed["target"])
    await changed(app)


async def changed(app) -> None:
    """Tell the pollers of every process that subscriptions changed."""
    try:
        await app.bus.publish(CHANNEL, b"sync")
    except Exception:
        log.failure("could not announce a feed change; pollers pick it up on their next sync")


def feed_json(feed: dict, base: str, flow_path: str) -> dict:
    state = feed.get("state") or {}
    out = {"id": feed["id"], "type": feed["kind"], "flow": feed["flow"], "creator": feed["creator"],
           "created_at": iso_ms(feed["created_at"]),
           "_links": {"self": f"{base}/flows/{flow_path}/feeds/{feed['id']}"},
           "last_polled_at": iso_ms(state["polled"]) if state.get("polled") else None,
           "last_success_at": iso_ms(state["success"]) if state.get("success") else None,
           "error_message": state.get("error")}
    out[KIND_FIELDS[feed["kind"]]] = feed["target"]
    if feed["kind"] == "rss":
        out["title"] = state.get("title")
    return out


class _System:
    """The actor of actions nobody in particular did (flowtwist-admin changes)."""
    id = 0


# ---------------------------------------------------------------- fetching

USER_AGENT = "flowtwist/0.1 (feed poller; +https://github.com/flowtwist)"


class Fetched:
    def __init__(self, status: int, headers, body: bytes, url: str):
        self.status = status
        self.headers = headers
        self.body = body
        self.url = url      # after redirects

    def header(self, name: str) -> str | None:
        values = self.headers.getRawHeaders(name)
        if not values:
            return None
        value = values[-1]
        return value.decode("latin-1") if isinstance(value, bytes) else value


async def fetch(url: str, headers: dict[str, str], timeout: float, max_size: int,
                reactor) -> Fetched:
    """GET with redirects, a deadline for the whole exchange and a body size cap."""
    import treq
    cancelled = []

    async def exchange() -> Fetched:
        response = await treq.get(url, headers={k: [v] for k, v in headers.items()},
                                  allow_redirects=True, unbuffered=True, reactor=reactor)
        length = response.length
        if isinstance(length, int) and length > max_size:
            response.original.deliverBody(_Discard())
            raise PollError(f"response larger than {max_size} bytes ({length})")
        chunks: list[bytes] = []
        size = 0

        def collect(data: bytes) -> None:
            nonlocal size
            if cancelled:
                raise defer.CancelledError()
            size += len(data)
            if size > max_size:
                raise PollError(f"response larger than {max_size} bytes")
            chunks.append(data)
        try:
            await treq.collect(response, collect)
        except (PollError, defer.CancelledError):
            raise
        except Exception as e:
            if size > max_size:
                raise PollError(f"response larger than {max_size} bytes")
            raise PollError(f"connection failed while reading: {e}")
        final = response.request.absoluteURI
        return Fetched(response.code, response.headers, b"".join(chunks),
                       final.decode("utf-8", "replace") if isinstance(final, bytes) else url)

    d = defer.ensureDeferred(exchange())
    def timed_out(result, after):
        cancelled.append(True)
        return Failure(PollError(f"timed out after {after:g}s"))
    d.addTimeout(timeout, reactor, onTimeoutCancel=timed_out)
    try:
        return await d
    except PollError:
        raise
    except defer.TimeoutError:
        raise PollError(f"timed out after {timeout:g}s")
    except defer.CancelledError:
        raise
    except Exception as e:
        raise PollError(f"request failed: {getattr(e, 'reasons', None) or e}")


class _Discard:
    def makeConnection(self, transport):
        transport.stopProducing()

    def dataReceived(self, data):
        pass

    def connectionLost(self, reason):
        pass


# ---------------------------------------------------------------- polling

class Poller:
    """Polls one subscription.  Subclasses implement `poll(feed, state)`: fetch,
    post what is new, return the new state (or raise PollError)."""

    def __init__(self, app, feed: dict, settings: dict, reactor, interval: float):
        self.app = app
        self.feed = feed
        self.settings = settings
        self.reactor = reactor
        self.interval = interval
        self.state: dict = dict(feed.get("state") or {})
        self._call = None
        self._running: defer.Deferred | None = None
        self.stopped = False

    def start(self, delay: float) -> None:
        self._schedule(delay)

    def stop(self) -> None:
        self.stopped = True
        if self._call is not None and self._call.active():
            self._call.cancel()
        if self._running is not None:
            self._running.cancel()

    def _schedule(self, delay: float) -> None:
        if not self.stopped:
            self._call = self.reactor.callLater(max(0.0, delay), self._fire)

    def _fire(self) -> None:
        self._running = defer.ensureDeferred(self._poll_once())
        self._running.addErrback(lambda f: None if f.check(defer.CancelledError) else
                                 log.failure("poller crashed", f))

    async def _poll_once(self) -> None:
        started = now_ms()
        state = dict(self.state)
        try:
            state = await self.poll(self.feed, state)
            state.update(failures=0, error=None, success=now_ms())
            delay = self.next_delay(state)
        except defer.CancelledError:
            raise
        except PollError as e:
            state, delay = self._failed(state, str(e), e.retry_after)
        except Exception as e:
            log.failure("poll of {kind} {target} failed", kind=self.feed["kind"],
                        target=self.feed["target"])
            state, delay = self._failed(state, f"{type(e).__name__}: {e}", None)
        state["polled"] = started
        self.state = state
        if self.stopped:
            return
        try:
            await self.app.directory.update_feed(self.feed["id"], state=state)
        except Exception:
            log.failure("could not save the state of feed {id}", id=self.feed["id"])
        self._running = None
        self._schedule(delay)

    def _failed(self, state: dict, error: str, retry_after: float | None) -> tuple[dict, float]:
        failures = int(state.get("failures") or 0) + 1
        state.update(failures=failures, error=error)
        delay = self.interval * min(2 ** failures, MAX_BACKOFF)
        if retry_after is not None:
            delay = max(retry_after, 0.0)
        log.info("{kind} {target}: {error}; next try in {delay:.1f}s", kind=self.feed["kind"],
                 target=self.feed["target"], error=error, delay=delay)
        return state, delay

    def next_delay(self, state: dict) -> float:
        return self.interval * random.uniform(1 - JITTER, 1 + JITTER)

    async def poll(self, feed: dict, state: dict) -> dict:
        raise NotImplementedError

    async def post(self, event: str, items: list[tuple[dict, str, str]]) -> int:
        """Post (content, title, uuid) items, oldest first; those already in the flow
        are skipped.  Returns how many were posted."""
        flow = await self.app.chat.flow(self.feed["flow"])
        if flow is None or flow.disabled:
            return 0
        posted = 0
        for content, title, uuid in items:
            if await self.app.store.find_uuid(flow.id, uuid) is not None:
                continue
            await self.app.chat.post_inbox(flow, event, content, [], title=title, uuid=uuid,
                                           wait=False)
            posted += 1
        return posted


# kind → factory(app, feed, settings, reactor) -> Poller | None (None: not polled here)
POLLERS: dict[str, Callable[..., Poller | None]] = {}


def register_poller(*kinds: str):
    def register(factory):
        for kind in kinds:
            POLLERS[kind] = factory
        return factory
    return register


class FeedService(service.Service):
    """Runs a poller per subscription and keeps the set in step with the directory."""
    name = "feeds"

    def __init__(self, app, settings: dict, reactor):
        self.app = app
        self.settings = settings
        self.reactor = reactor
        self.pollers: dict[int, Poller] = {}
        self._sync_loop = None
        self._syncing: defer.Deferred | None = None
        self._again = False
        self._started_at = 0

    def startService(self):
        super().startService()
        self._started_at = now_ms()
        self.app.bus.subscribe(CHANNEL, self._on_change)
        self._sync_loop = task.LoopingCall(self.sync)
        self._sync_loop.clock = self.reactor
        every = min(SYNC_EVERY, seconds(self.settings, "feed-interval", SYNC_EVERY))
        self._sync_loop.start(every, now=True).addErrback(
            lambda f: log.failure("feed sync loop stopped", f))

    def stopService(self):
        self.app.bus.unsubscribe(CHANNEL, self._on_change)
        if self._sync_loop is not None and self._sync_loop.running:
            self._sync_loop.stop()
        for poller in self.pollers.values():
            poller.stop()
        self.pollers.clear()
        return super().stopService()

    def _on_change(self, channel: str, payload: bytes) -> None:
        self.sync()

    def sync(self) -> defer.Deferred:
        """Start pollers for new subscriptions, stop those of removed ones (one sync
        at a time; a request during a sync runs another afterwards)."""
        if self._syncing is not None:
            self._again = True
            return self._syncing
        self._syncing = defer.ensureDeferred(self._sync())

        def done(result):
            self._syncing = None
            if self._again and self.running:
                self._again = False
                self.sync()
            return None
        self._syncing.addErrback(lambda f: log.failure("feed sync failed", f))
        self._syncing.addBoth(done)
        return self._syncing

    async def _sync(self) -> None:
        feeds = await self.app.directory.feeds()
        live = set()
        for feed in feeds:
            if feed["removed"]:
                await self._finish_removal(feed)
                continue
            if not feed["announced"]:
                await self._announce(feed)
            live.add(feed["id"])
            if feed["id"] in self.pollers or not self.running:
                continue
            factory = POLLERS.get(feed["kind"])
            poller = factory(self.app, feed, self.settings, self.reactor) if factory else None
            if poller is None:
                continue
            self.pollers[feed["id"]] = poller
            # A new subscription is polled at once; after a restart polls are spread.
            fresh = not feed["state"] or feed["created_at"] >= self._started_at - 1000
            poller.start(random.uniform(0, 0.2) if fresh else
                         random.uniform(0, min(poller.interval, SYNC_EVERY)))
        for feed_id in set(self.pollers) - live:
            self.pollers.pop(feed_id).stop()

    async def _actor(self, feed: dict):
        user = await self.app.directory.get_user(feed["creator"]) if feed["creator"] else None
        return user or _System()

    async def _announce(self, feed: dict) -> None:
        flow = await self.app.chat.flow(feed["flow"])
        if flow is not None:
            await self.app.chat.post_action(await self._actor(feed), flow,
                                            ACTIONS[feed["kind"]][0], feed["target"])
        await self.app.directory.update_feed(feed["id"], announced=True)

    async def _finish_removal(self, feed: dict) -> None:
        flow = await self.app.chat.flow(feed["flow"])
        if flow is not None:
            await self.app.chat.post_action(_System(), flow, ACTIONS[feed["kind"]][1],
                                            feed["target"])
        await self.app.directory.delete_feed(feed["id"])


def seconds(settings: dict, name: str, default: float) -> float:
    try:
        return float(settings.get(name) or default)
    except (TypeError, ValueError):
        return default


@register_edge
def feeds_edge(app, settings, web_root, reactor):
    if settings.get("feeds", "yes") == "no":
        return []
    return [FeedService(app, settings, reactor)]

