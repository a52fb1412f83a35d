"""Flowdock → IRC: one renderer per event type.

A renderer gets a `view` (what the receiving connection knows: the target channel
or own nick, how to name users, data its connection prepared for stateful events)
and the event's message dict (shared between listeners: never mutated), and returns
encoded IRC lines.  Events without a renderer produce nothing.
"""
from __future__ import annotations

from typing import Any, Callable, Protocol

from flowtwist.bridges.irc import wire
from flowtwist.html import to_text

FLOWDOCK = "Flowdock!Flowdock@services."
NICKSERV = "NickServ!NickServ@services."
EDIT_WINDOW_MS = 60_000


class View(Protocol):
    target: str             # canonical channel name, or own nick for private events
    prepared: Any           # what the connection looked up for this event (or None)

    def author(self, msg: dict) -> str: ...          # `nick!email` of the author
    def host(self, user_id: Any) -> str: ...
    def file_url(self, path: str) -> str: ...


Renderer = Callable[[View, dict], list[bytes]]
RENDERERS: dict[str, Renderer] = {}
# Renderers whose output depends only on author and target (cacheable per event).
STATELESS: set[str] = set()


def renders(*events: str, stateless: bool = True):
    def register(fn: Renderer) -> Renderer:
        for event in events:
            RENDERERS[event] = fn
            if stateless:
                STATELESS.add(event)
        return fn
    return register


def privmsg(prefix: str, target: str, text: str, ctcp: str | None = None) -> list[bytes]:
    out: list[bytes] = []
    for line in wire.text_lines(wire.emoji_aliases(text)):
        out += wire.lines(prefix, "PRIVMSG", (target,), line, ctcp=ctcp)
    return out


def notice(prefix: str, target: str, text: str) -> list[bytes]:
    out: list[bytes] = []
    for line in wire.text_lines(wire.emoji_aliases(text)):
        out += wire.lines(prefix, "NOTICE", (target,), line)
    return out


def thread_header(thread: Any) -> str:
    """`[<app name> (<source name>): <title>]` for a thread from a source, else `[<title>]`."""
    if not isinstance(thread, dict):
        return ""
    title = to_text(str(thread.get("title") or ""))
    source = thread.get("source")
    if isinstance(source, dict) and source.get("name"):
        app = source.get("application") or source.get("app") or {}
        app_name = app.get("name") if isinstance(app, dict) else str(app)
        if app_name:
            return f"[{app_name} ({source['name']}): {title}]"
        return f"[{source['name']}: {title}]"
    return f"[{title}]"


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


@renders("message")
def message(view: View, msg: dict) -> list[bytes]:
    text = _text(msg.get("content"))
    thread = msg.get("thread")
    if isinstance(thread, dict) and thread.get("initial_message") not in (None, msg.get("id")):
        header = thread_header(thread)
        lines = wire.text_lines(text)
        text = "\n".join(f"{header} << {line}" for line in lines)
    return privmsg(view.author(msg), view.target, text)


@renders("comment")
def comment(view: View, msg: dict) -> list[bytes]:
    content = msg.get("content") or {}
    if not isinstance(content, dict):
        return []
    title = wire.text_lines(_text(content.get("title")))
    head = f"[{title[0] if title else ''}] << "
    lines = wire.text_lines(_text(content.get("text")))
    return privmsg(view.author(msg), view.target, "\n".join(head + line for line in lines))


@renders("status")
def status(view: View, msg: dict) -> list[bytes]:
    return privmsg(view.author(msg), view.target,
                   "changed status to: " + _text(msg.get("content")), ctcp="ACTION")


@renders("line")
def line(view: View, msg: dict) -> list[bytes]:
    return privmsg(view.author(msg), view.target, _text(msg.get("content")), ctcp="ACTION")


@renders("file")
def file(view: View, msg: dict) -> list[bytes]:
    content = msg.get("content")
    if not isinstance(content, dict) or not content.get("path"):
        return []
    return privmsg(view.author(msg), view.target, view.file_url(str(content["path"])))


def _inbox(view: View, label: str, text: str) -> list[bytes]:
    """A team-inbox notice: only the item's first line carries the label."""
    lines = wire.text_lines(text)
    if not lines:
        return []
    lines[0] = f"{label} {lines[0]}"
    return notice(FLOWDOCK, view.target, "\n".join(lines))


@renders("mail")
def mail(view: View, msg: dict) -> list[bytes]:
    content = msg.get("content") or {}
    sender = content.get("from") or [{}]
    address = sender[0].get("address", "") if isinstance(sender[0], dict) else ""
    return _inbox(view, "[Email]", f"{address}: {_text(content.get('subject'))}")


@renders("rss")
def rss(view: View, msg: dict) -> list[bytes]:
    content = msg.get("content") or {}
    feed = content.get("feed") or {}
    feed_title = feed.get("title", "") if isinstance(feed, dict) else ""
    return _inbox(view, "[RSS]", f"[{feed_title}]: {_text(content.get('title'))}")


@renders("twitter")
def twitter(view: View, msg: dict) -> list[bytes]:
    content = msg.get("content") or {}
    user = content.get("user") or {}
    name = user.get("screen_name", "") if isinstance(user, dict) else ""
    return _inbox(view, "[Twitter]", f"{name}: {_text(content.get('text'))}")


@renders("activity", "discussion")
def activity(view: View, msg: dict) -> list[bytes]:
    author = msg.get("author") or {}
    name = author.get("name", "") if isinstance(author, dict) else ""
    title = to_text(_text(msg.get("title")))
    header = thread_header(msg.get("thread"))
    return notice(FLOWDOCK, view.target, f"{header} {name}: {title}".strip())


# ---------------------------------------------------------------- stateful events
# The connection updates its members or nicks first and passes what changed as
# `view.prepared`.

@renders("action", stateless=False)
def action(view: View, msg: dict) -> list[bytes]:
    """`prepared`: the hosts of users who joined (join, add_people)."""
    return [line for host in view.prepared or ()
            for line in wire.lines(host, "JOIN", (view.target,))]


@renders("backend.user.block", stateless=False)
def block(view: View, msg: dict) -> list[bytes]:
    """`prepared`: the blocked member's host, if it was a member."""
    return wire.lines(view.prepared, "PART", (view.target,)) if view.prepared else []


@renders("user-edit", stateless=False)
def user_edit(view: View, msg: dict) -> list[bytes]:
    """`prepared`: (old host, new nick) pairs of the nick changes this caused."""
    return [line for old, new in view.prepared or ()
            for line in wire.lines(old, "NICK", (), new)]


@renders("message-edit", stateless=False)
def message_edit(view: View, msg: dict) -> list[bytes]:
    """`prepared`: the edited message if it was sent less than a minute ago."""
    original = view.prepared
    if not original:
        return []
    content = (msg.get("content") or {}).get("updated_content")
    if original.get("event") == "comment" and isinstance(content, dict):
        if not _text(content.get("text")).strip():
            return []
        return comment(view, {**original, "content": {**content, "text": content["text"] + "*"}})
    if original.get("event") == "message" and isinstance(content, str) and content.strip():
        return message(view, {**original, "content": content + "*"})
    return []
