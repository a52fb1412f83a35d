"""RSS/Atom feeds into flows: each subscription polled, new entries posted as `rss`.

Conditional GET (ETag / Last-Modified), redirects, a timeout and a size cap come from
`feeds.fetch`; parsing is feedparser's (RSS 0.9x, 1.0, 2.0, Atom; lenient on malformed
XML), run in a thread.  An entry's uuid is a hash of its id (else link, else title and
summary), so it is posted once per flow whatever the feed does later.

The first poll of a new subscription posts only the newest --feed-backlog entries
(default 3) and remembers the rest as seen: subscribing shows what the feed is like
without flooding the flow with its whole history.

The `rss` content: {title, link, summary (plain text), summary_html (sanitized),
published (ISO 8601 or null), author, id, feed: {title, url, link}}.
"""
from __future__ import annotations

import calendar
import hashlib
from urllib.parse import urljoin

from twisted.internet import threads

from flowtwist.bridges import feeds
from flowtwist.bridges.feeds import PollError, Poller, register_poller, seconds
from flowtwist.html import sanitize, to_text
from flowtwist.model import iso_ms

MAX_SEEN = 1000
MAX_SUMMARY = 2000
MAX_POSTS_PER_POLL = 50


def entry_uuid(entry: dict, link: str) -> str:
    basis = entry.get("id") or link or f"{entry.get('title', '')}\0{entry.get('summary', '')}"
    return "rss:" + hashlib.sha256(basis.encode("utf-8", "replace")).hexdigest()[:40]


def _when(entry) -> int | None:
    for key in ("published_parsed", "updated_parsed", "created_parsed"):
        value = entry.get(key)
        if value:
            try:
                return calendar.timegm(value) * 1000
            except (TypeError, ValueError, OverflowError):
                pass
    return None


def parse_feed(body: bytes, url: str, content_type: str | None, feed_url: str) -> dict:
    """Entries of a feed document, newest first (runs in a thread)."""
    import feedparser
    headers = {"content-location": url}
    if content_type:
        headers["content-type"] = content_type
    parsed = feedparser.parse(body, response_headers=headers)
    info = parsed.get("feed", {})
    if not parsed.get("entries") and (not parsed.get("version") or (
            parsed.get("bozo") and not info.get("title"))):
        problem = parsed.get("bozo_exception")
        raise PollError(f"not a feed: {problem or 'unrecognised document'}")
    feed_title = to_text(info.get("title") or "") or url
    meta = {"title": feed_title, "url": feed_url,
            "link": urljoin(url, info.get("link") or "") or None}
    entries = []
    for position, entry in enumerate(parsed.get("entries", [])):
        link = urljoin(url, entry.get("link") or "") if entry.get("link") else None
        html_body = entry.get("summary") or ""
        if not html_body and entry.get("content"):
            html_body = entry["content"][0].get("value") or ""
        clean = sanitize(html_body)
        summary = to_text(clean)
        if len(summary) > MAX_SUMMARY:
            summary = summary[:MAX_SUMMARY].rstrip() + "…"
        title = to_text(entry.get("title") or "") or (summary[:80] if summary else link) \
            or "(untitled)"
        when = _when(entry)
        entries.append({
            "uuid": entry_uuid(entry, link or ""), "when": when, "position": position,
            "content": {"title": title, "link": link, "summary": summary,
                        "summary_html": clean, "published": iso_ms(when) if when else None,
                        "author": entry.get("author") or None, "id": entry.get("id") or link,
                        "feed": meta}})
    # Newest first: by date where there are dates, else in document order.
    if all(e["when"] for e in entries):
        entries.sort(key=lambda e: (-e["when"], e["position"]))
    return {"title": feed_title, "entries": entries}


class RssPoller(Poller):
    async def poll(self, feed: dict, state: dict) -> dict:
        headers = {"User-Agent": feeds.USER_AGENT,
                   "Accept": "application/atom+xml, application/rss+xml, application/rdf+xml, "
                             "application/xml;q=0.9, text/xml;q=0.9, */*;q=0.5"}
        if state.get("etag"):
            headers["If-None-Match"] = state["etag"]
        if state.get("last_modified"):
            headers["If-Modified-Since"] = state["last_modified"]
        response = await feeds.fetch(
            feed["target"], headers, seconds(self.settings, "feed-timeout", 30),
            int(seconds(self.settings, "feed-max-size", 5 * 1024 * 1024)), self.reactor)
        if response.status == 304:
            return state
        if response.status in (429, 503):
            raise PollError(f"HTTP {response.status}", _retry_after(response))
        if response.status != 200:
            raise PollError(f"HTTP {response.status}")
        document = await threads.deferToThread(
            parse_feed, response.body, response.url, response.header("content-type"),
            feed["target"])
        entries = document["entries"]
        seen = list(state.get("seen") or [])
        known = set(seen)
        new = [e for e in entries if e["uuid"] not in known]
        if not state.get("primed"):
            new = new[:int(seconds(self.settings, "feed-backlog", 3))]
        new = new[:MAX_POSTS_PER_POLL]
        # Oldest first, so the flow reads in order.
        await self.post("rss", [(e["content"], e["content"]["title"], e["uuid"])
                                for e in reversed(new)])
        current = [e["uuid"] for e in entries]
        keep = max(MAX_SEEN, 2 * len(current))
        state["seen"] = (current + [u for u in seen if u not in set(current)])[:keep]
        state.update(primed=True, title=document["title"],
                     etag=response.header("etag"),
                     last_modified=response.header("last-modified"))
        return state


def _retry_after(response) -> float | None:
    value = response.header("retry-after")
    if value and value.strip().isdigit():
        return float(value.strip())
    return None


@register_poller("rss")
def rss_poller(app, feed, settings, reactor):
    return RssPoller(app, feed, settings, reactor, seconds(settings, "feed-interval", 300))
