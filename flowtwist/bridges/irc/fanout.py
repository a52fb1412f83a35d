"""Fan-out of one flow's events to the IRC connections subscribed to it.

One hub listener per flow (not one per connection): what is the same for every
connection (parsing, the event type, the renderer, the presence entry) is worked
out once per event, and a chat line is rendered once per distinct author prefix
and written as the same bytes to every connection.  A connection that needs more
than that (events queued behind a look-up, its own post, an author it does not
know yet) gets the event through its own `on_event`, which decides exactly as
before.
"""
from __future__ import annotations

from typing import Any

from twisted.logger import Logger

from flowtwist.bridges.irc import render
from flowtwist.model import now_ms

log = Logger()


def presence_entry(msg: dict) -> tuple[int, tuple[bool, int]] | None:
    """(user id, (active, since ms)) from an `activity.user` event, or None."""
    try:
        uid = int(msg.get("user"))
    except (TypeError, ValueError):
        return None
    content = msg.get("content") or {}
    return uid, (bool(content.get("last_activity")), msg.get("sent") or now_ms())


class FlowFanout:
    """The hub listener of one flow channel for all IRC connections in it."""

    def __init__(self, view_factory):
        self.members: dict[Any, None] = {}      # connections, in subscription order
        self._view = view_factory              # (connection, target) → render.View

    def __call__(self, event) -> None:
        members = list(self.members)
        msg = event.message
        kind = msg.get("event")
        if kind == "activity.user":             # frequent: one parse for everyone
            entry = presence_entry(msg)
            if entry is not None:
                uid, value = entry
                for conn in members:
                    if not conn.closing:
                        conn.presence[uid] = value
            return
        renderer = render.RENDERERS.get(kind) if kind in render.STATELESS else None
        if renderer is None:
            for conn in members:
                self._one(conn, event)
            return
        flow, author, uuid = msg.get("flow"), msg.get("user"), event.uuid
        rendered: dict[tuple[str, str], bytes] = {}
        for conn in members:
            try:
                if conn.closing:
                    continue
                channel = conn.by_flow.get(flow)
                host = conn.roster.host_by_id(author) if channel is not None else None
                if host is None or conn._events or (uuid and uuid in conn._posted):
                    conn.on_event(event)
                    continue
                if not channel.open:
                    continue
                key = (host, channel.name)
                data = rendered.get(key)
                if data is None:
                    data = rendered[key] = b"".join(renderer(self._view(conn, channel.name), msg))
                if data:
                    conn.write(data)
            except Exception:
                log.failure("IRC fan-out to one connection failed")

    @staticmethod
    def _one(conn, event) -> None:
        try:
            conn.on_event(event)
        except Exception:
            log.failure("IRC fan-out to one connection failed")
