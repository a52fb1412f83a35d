"""The one path every message takes: queue → consumer → store → publish → listeners.

Edges never store or publish themselves; they build a queue item (flowtwist.chat
does that) and hand it to `Pipeline.submit`.  The consumer assigns ids through the
store, which dedupes on conversation + uuid, and publishes what it stored; only then
is the queue item acknowledged, so a crash anywhere loses nothing and stores nothing
twice.

Published events are framed once as `seq \\t conversation \\t id \\t uuid \\t json` so
that every listener in every process writes the same JSON bytes without parsing them.
"""
from __future__ import annotations

import inspect
import json
from collections import defaultdict
from typing import Any, Callable

from twisted.internet import defer
from twisted.logger import Logger

from flowtwist.interfaces import Bus, Directory, Doc, MessageStore
from flowtwist.model import ChatError, flow_channel, iso_ms, now_ms, user_channel

log = Logger()

WAIT_TIMEOUT = 10.0


def dumps(obj) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def public(doc: Doc) -> Doc:
    """The wire form of a stored message: internal keys removed."""
    out = {k: v for k, v in doc.items() if k not in ("conversation", "seq")}
    thread = out.get("thread")
    if isinstance(thread, dict):
        out["thread"] = public_thread(thread)
    return out


def public_thread(thread: Doc) -> Doc:
    return {k: v for k, v in thread.items() if not k.startswith("_")}


def channels_of(doc: Doc) -> list[str]:
    """Where an event is published: its flow, or both people of a private chat."""
    if doc.get("flow"):
        return [flow_channel(doc["flow"])]
    _, lo, hi = doc["conversation"].split(":")
    return [user_channel(int(lo))] if lo == hi else [user_channel(int(lo)), user_channel(int(hi))]


class Event:
    """One published event as a listener receives it."""
    __slots__ = ("seq", "conversation", "id", "uuid", "json", "_message")

    def __init__(self, seq: int, conversation: str, id: int, uuid: str, json_bytes: bytes):
        self.seq = seq
        self.conversation = conversation
        self.id = id
        self.uuid = uuid
        self.json = json_bytes
        self._message = None

    @classmethod
    def from_doc(cls, doc: Doc) -> "Event":
        return cls(doc.get("seq") or 0, doc["conversation"], doc.get("id") or 0,
                   doc.get("uuid") or "", dumps(public(doc)))

    @classmethod
    def decode(cls, payload: bytes) -> "Event":
        seq, conversation, id_, uuid, body = payload.split(b"\t", 4)
        return cls(int(seq), conversation.decode(), int(id_), uuid.decode(), body)

    def encode(self) -> bytes:
        return b"\t".join((str(self.seq).encode(), self.conversation.encode(),
                           str(self.id).encode(), self.uuid.encode(), self.json))

    @property
    def message(self) -> Doc:
        """The parsed message (parsed once, shared: do not mutate)."""
        if self._message is None:
            self._message = json.loads(self.json)
        return self._message


class Hub:
    """This process's listeners, by channel.  One bus subscription per channel."""

    def __init__(self, bus: Bus):
        self._bus = bus
        self._listeners: dict[str, set] = defaultdict(set)
        bus.on_gap(self._gap)

    def add(self, channel: str, listener: Callable[[Event], None]) -> None:
        if not self._listeners[channel]:
            self._bus.subscribe(channel, self._receive)
        self._listeners[channel].add(listener)

    def remove(self, channel: str, listener: Callable[[Event], None]) -> None:
        listeners = self._listeners.get(channel)
        if listeners is None:
            return
        listeners.discard(listener)
        if not listeners:
            del self._listeners[channel]
            self._bus.unsubscribe(channel, self._receive)

    def listener_count(self) -> int:
        return sum(len(v) for v in self._listeners.values())

    def _receive(self, channel: str, payload: bytes) -> None:
        event = Event.decode(payload)
        for listener in list(self._listeners.get(channel, ())):
            try:
                listener(event)
            except Exception:
                log.failure("listener failed")

    def _gap(self) -> None:
        """After a bus reconnect, tell every listener that it may have missed events."""
        seen = set()
        for listeners in list(self._listeners.values()):
            for listener in list(listeners):
                catch_up = getattr(listener, "catch_up", None)
                if catch_up is not None and id(listener) not in seen:
                    seen.add(id(listener))
                    try:
                        result = catch_up()
                    except Exception:
                        log.failure("catch-up after a bus gap failed")
                        continue
                    if inspect.isawaitable(result):     # stream listeners' is async
                        defer.ensureDeferred(result).addErrback(
                            lambda f: log.failure("catch-up after a bus gap failed", f))


class Pipeline:
    def __init__(self, bus: Bus, store: MessageStore, directory: Directory, reactor=None):
        if reactor is None:
            from twisted.internet import reactor
        self.bus = bus
        self.store = store
        self.directory = directory
        self.hub = Hub(bus)
        self._reactor = reactor
        self._waiters: dict[tuple[str, str], list[defer.Deferred]] = defaultdict(list)
        self._waiting_channels: dict[str, int] = defaultdict(int)

    def start_consumer(self) -> None:
        self.bus.consume(lambda items: defer.ensureDeferred(self.consume(items)))

    # ------------------------------------------------------------ ingress side

    async def submit(self, item: Doc, wait: bool = False) -> Doc | None:
        """Queue an item.  With `wait`, return the stored message once the consumer
        has published it (or None if it took longer than WAIT_TIMEOUT)."""
        result = item["doc"] if item["op"] == "post" else item
        if not wait:
            await self.bus.enqueue(item, result["conversation"])
            return None
        key = (result["conversation"], result["uuid"])
        channel = channels_of(result)[0]
        waiter: defer.Deferred = defer.Deferred()
        self._waiters[key].append(waiter)
        self._watch(channel, +1)
        try:
            await self.bus.enqueue(item, result["conversation"])
            waiter.addTimeout(WAIT_TIMEOUT, self._reactor)
            try:
                return await waiter
            except defer.TimeoutError:
                try:
                    return await self.store.find_uuid(*key)
                except ChatError:
                    # The store is down, but the queue has the item: it is accepted
                    # (202), and will be stored once the store is back.
                    return None
        finally:
            waiters = self._waiters.get(key)
            if waiters is not None and waiter in waiters:
                waiters.remove(waiter)
                if not waiters:
                    del self._waiters[key]
            self._watch(channel, -1)

    def _watch(self, channel: str, delta: int) -> None:
        """Listen on a channel while any submit() waits for an echo on it."""
        count = self._waiting_channels[channel] + delta
        if count > 0 and delta > 0 and count == 1:
            self.hub.add(channel, self._resolve_waiters)
        if count <= 0:
            del self._waiting_channels[channel]
            self.hub.remove(channel, self._resolve_waiters)
        else:
            self._waiting_channels[channel] = count

    def _resolve_waiters(self, event: Event) -> None:
        waiters = self._waiters.pop((event.conversation, event.uuid), None)
        for waiter in waiters or ():
            doc = dict(event.message, conversation=event.conversation, seq=event.seq)
            waiter.callback(doc)

    async def publish_transient(self, doc: Doc) -> None:
        """Publish an event that is not stored (presence): no id, no seq."""
        event = Event(0, doc["conversation"], 0, "", dumps(public(doc)))
        await defer.gatherResults([self.bus.publish(c, event.encode()) for c in channels_of(doc)])

    # ------------------------------------------------------------ consumer side

    async def consume(self, items: list[Doc]) -> None:
        """Store and publish a batch of queue items, in order."""
        stored: list[Doc] = []
        posts: list[Doc] = []
        for item in items:
            if item["op"] == "post":
                posts.append(dict(item["doc"]))
                continue
            stored.extend(await self._store_posts(posts))
            posts = []
            if item["op"] == "edit":
                stored.extend(await self._edit(item))
            elif item["op"] == "delete":
                stored.extend(await self._delete(item))
            else:
                log.error("unknown queue item {item!r}, dropped", item=item)
        stored.extend(await self._store_posts(posts))
        await defer.gatherResults([
            self.bus.publish(channel, payload)
            for doc in stored
            for payload in (Event.from_doc(doc).encode(),)
            for channel in channels_of(doc)])

    async def _store_posts(self, docs: list[Doc]) -> list[Doc]:
        if not docs:
            return []
        sent = now_ms()
        for doc in docs:
            doc.setdefault("sent", sent)
            doc.setdefault("created_at", iso_ms(doc["sent"]))
        results = await self.store.insert_many(docs)
        await self._update_threads([doc for doc, created in results if created])
        return [doc for doc, _ in results]

    async def _update_threads(self, docs: list[Doc]) -> None:
        threads: dict[str, Doc] = {}
        for doc in docs:
            thread = doc.get("thread")
            if not isinstance(thread, dict) or "flow" not in doc:
                continue
            current = threads.get(thread["id"])
            if current is None:
                # A chat thread this very message started (a fresh id) has nothing
                # stored yet: no need to read it.
                fresh = (thread.get("initial_message") == doc.get("id")
                         and not thread.get("_external_id"))
                current = {} if fresh else (await self.store.get_thread(thread["id"]) or {})
                current = {**current, **thread}
            else:
                current.update({k: v for k, v in thread.items()
                                if k not in ("activities", "internal_comments", "external_comments")})
            counter = {"activity": "activities", "discussion": "external_comments"}.get(
                doc["event"], "internal_comments")
            current[counter] = current.get(counter, 0) + 1
            current.setdefault("created_at", doc["created_at"])
            current["updated_at"] = doc["created_at"]
            current["_updated_ms"] = doc["sent"]
            current["_empty"] = False
            threads[thread["id"]] = current
        save_threads = getattr(self.store, "save_threads", None)
        if save_threads is not None and len(threads) > 1:     # one transaction
            await save_threads(list(threads.values()))
            return
        await defer.gatherResults([defer.ensureDeferred(self.store.save_thread(thread))
                                   for thread in threads.values()])

    async def _derived(self, item: Doc, event: str, content: Any) -> list[Doc]:
        """Store the event that announces an edit or delete (idempotent by uuid)."""
        doc = {k: item[k] for k in ("conversation", "flow", "to") if item.get(k) is not None}
        doc.update(event=event, content=content, tags=[], uuid=item["uuid"],
                   user=str(item["user"]), app="chat", attachments=[], edited=None)
        return await self._store_posts([doc])

    async def _edit(self, item: Doc) -> list[Doc]:
        conversation, message_id = item["conversation"], item["message"]
        original = await self.store.get(conversation, message_id)
        if original is None:
            return []
        out: list[Doc] = []
        if "content" in item:
            content = item["content"]
            if original["event"] == "comment" and isinstance(original.get("content"), dict):
                content = {**original["content"], "text": item["content"]}
            changes = {"content": content, "edited": now_ms()}
            if "content_tags" in item:
                changes["tags"] = item["content_tags"]
            await self.store.update(conversation, message_id, changes)
            out += await self._derived(item, "message-edit",
                                       {"message": message_id, "updated_content": content})
            original = {**original, **changes}
        if "tags" in item:
            old, new = original.get("tags", []), item["tags"]
            await self.store.update(conversation, message_id, {"tags": new})
            add = [t for t in new if t not in old]
            remove = [t for t in old if t not in new]
            # The edit's waiter listens for item["uuid"]: give it to the first event.
            tag_item = dict(item, uuid=item["uuid"] + ":tags") if out else item
            out += await self._derived(tag_item, "tag-change",
                                       {"message": message_id, "add": add, "remove": remove})
        return out

    async def _delete(self, item: Doc) -> list[Doc]:
        conversation, message_id = item["conversation"], item["message"]
        if item.get("mode") == "remove":
            await self.store.remove(conversation, message_id)
            return await self._derived(item, "message-delete", {"message": message_id})
        original = await self.store.get(conversation, message_id)
        if original is None:
            return []
        content = "" if not isinstance(original.get("content"), dict) else {
            **original["content"], "text": ""}
        await self.store.update(conversation, message_id, {"content": content,
                                                           "edited": now_ms()})
        return await self._derived(item, "message-edit",
                                   {"message": message_id, "updated_content": content})
