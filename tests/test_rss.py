"""RSS/Atom feeds: subscriptions through REST and flowtwist-admin, polled by a running
flowtwist from a local HTTP server serving real-world-shaped feeds."""
import itertools
import os
import threading
import time
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.conftest import World
from tests.support import Flowtwist

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "feeds")
_names = itertools.count(1)


class FeedSite:
    """Serves tests/fixtures/feeds/* under /feeds/ plus a few scripted paths."""

    def __init__(self):
        self.changing: list[tuple[str, str]] = [("c-1", "Changing one"), ("c-2", "Changing two")]
        self.etag_version = 1
        self.etag_requests: list[tuple[str | None, int]] = []
        self.slow_requests = 0
        self.lock = threading.Lock()
        site = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                site.handle(self)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()

    def rss(self, title: str, items) -> bytes:
        body = "".join(f"<item><title>{t}</title><link>/items/{g}</link><guid>{g}</guid>"
                       f"<description>About {t}</description></item>" for g, t in items)
        return (f'<?xml version="1.0"?><rss version="2.0"><channel><title>{title}</title>'
                f"<link>/</link>{body}</channel></rss>").encode()

    def handle(self, h: BaseHTTPRequestHandler):
        path = h.path.split("?")[0]
        if path.startswith("/feeds/"):
            name = os.path.basename(path)
            try:
                with open(os.path.join(FIXTURES, name), "rb") as f:
                    data = f.read()
            except FileNotFoundError:
                return self.send(h, 404, b"not found", "text/plain")
            kind = "text/html" if name.endswith(".html") else "application/rss+xml"
            return self.send(h, 200, data, kind)
        if path == "/changing.xml":
            with self.lock:
                items = list(reversed(self.changing))
            return self.send(h, 200, self.rss("Changing feed", items), "application/rss+xml")
        if path == "/etag.xml":
            with self.lock:
                etag = f'"v{self.etag_version}"'
                items = [(f"e-{i}", f"Etag item {i}") for i in range(self.etag_version, 0, -1)]
                asked = h.headers.get("If-None-Match")
                self.etag_requests.append((asked, 304 if asked == etag else 200))
            if asked == etag:
                h.send_response(304)
                h.send_header("ETag", etag)
                h.end_headers()
                return
            return self.send(h, 200, self.rss("Etag feed", items), "application/rss+xml",
                             {"ETag": etag, "Last-Modified": formatdate(usegmt=True)})
        if path == "/slow.xml":
            with self.lock:
                self.slow_requests += 1
            time.sleep(3)
            return self.send(h, 200, self.rss("Slow", [("s-1", "Too late")]), "application/rss+xml")
        if path == "/moved":
            h.send_response(301)
            h.send_header("Location", "/feeds/rss091.xml")
            h.send_header("Content-Length", "0")
            h.end_headers()
            return
        if path in ("/huge.xml", "/huge-unsized.xml"):
            data = self.rss("Huge", [(f"h-{i}", "x" * 1000) for i in range(400)])
            if path == "/huge.xml":
                return self.send(h, 200, data, "application/rss+xml")
            h.send_response(200)    # no Content-Length: the body ends when the connection does
            h.send_header("Content-Type", "application/rss+xml")
            h.end_headers()
            try:
                h.wfile.write(data)
            except OSError:
                pass
            return
        self.send(h, 404, b"not found", "text/plain")

    @staticmethod
    def send(h, status, data: bytes, content_type: str, headers=None):
        h.send_response(status)
        h.send_header("Content-Type", content_type)
        h.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.end_headers()
        try:
            h.wfile.write(data)
        except OSError:     # the poller gave up (size cap): fine
            pass


@pytest.fixture(scope="module")
def site():
    s = FeedSite()
    yield s
    s.close()


@pytest.fixture(scope="module")
def world():
    server = Flowtwist(extra_args=["--feed-interval", "0.3", "--feed-timeout", "1",
                                   "--feed-backlog", "3", "--feed-max-size", "200000"])
    server.start()
    try:
        yield World(server)
    finally:
        server.close()


def new_flow(world) -> tuple[dict, object]:
    """A fresh flow (alice and bob) and alice's stream of it."""
    flow = world.server.create_flow("acme", f"Feeds {next(_names)}", [world.alice, world.bob])
    stream = world.alice.stream(flow["path"])
    assert stream.status == 200
    return flow, stream


def subscribe(world, flow, url, status=201) -> dict:
    r = world.alice.post(f"/flows/{flow['path']}/feeds", {"type": "rss", "url": url})
    assert r.status_code == status, r.text
    return r.json()


def rss_events(stream, n, timeout=15) -> list[dict]:
    events = stream.events(n, timeout=timeout, skip=("activity.user", "action"))
    assert all(e["event"] == "rss" for e in events), events
    return events


def feed_state(world, flow, feed_id, until, timeout=15) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        shown = world.alice.get(f"/flows/{flow['path']}/feeds/{feed_id}").json()
        if until(shown) or time.monotonic() > deadline:
            return shown
        time.sleep(0.1)


def test_rss2_first_poll_posts_the_newest_few_with_links_resolved(world, site):
    flow, stream = new_flow(world)
    url = site.base + "/feeds/rss20.xml"
    feed = subscribe(world, flow, url)
    assert feed["type"] == "rss" and feed["url"] == url and feed["creator"] == world.alice.id
    action = stream.events(1, timeout=10)[0]
    assert action["event"] == "action"
    assert action["content"] == {"type": "add_rss_feed", "description": url}
    assert action["user"] == str(world.alice.id)
    events = rss_events(stream, 3)
    assert [e["content"]["title"] for e in events] == [
        "Third post", "Fourth post", "Fifth post: caching & you"]
    fifth = events[2]["content"]
    assert fifth["link"] == site.base + "/blog/posts/5"
    assert fifth["feed"] == {"title": "Example Engineering Blog", "url": url,
                             "link": site.base + "/blog/"}
    assert fifth["published"] == "2025-06-03T10:00:00.000Z"
    assert fifth["author"] == "Ann Author"
    assert "alert" not in fifth["summary"] and "<" not in fifth["summary"]
    assert fifth["summary"].startswith("Caching matters.")
    assert "script" not in fifth["summary_html"] and "onerror" not in fifth["summary_html"]
    assert f'href="{site.base}/blog/posts/4"' in fifth["summary_html"]
    assert events[2]["app"] == "influx" and events[2]["user"] == "0"
    # Later polls find nothing new: the backlog is not posted, nothing repeats.
    assert stream.quiet(1.5) == []
    stored = world.alice.get(f"/flows/{flow['path']}/messages", params={"event": "rss"}).json()
    assert len(stored) == 3
    listed = world.bob.get(f"/flows/{flow['path']}/feeds").json()
    assert [f["id"] for f in listed] == [feed["id"]]
    assert listed[0]["title"] == "Example Engineering Blog" and listed[0]["error_message"] is None
    stream.close()


@pytest.mark.parametrize("name, titles, first_link", [
    ("rss091.xml", ["Opening hours", "Menu changed"], "/feeds/hours.html"),
    ("rdf.xml", ["Item A", "Item B"], "http://rdf.example.org/a"),
    ("atom.xml", ["Entry one", "Entry two — ünïcödé"],
     "http://atom.example.net/journal/2025/06/entry-one"),
    ("malformed.xml", ["Second & last", "Fish & chips today"], "http://sloppy.example.com/last"),
])
def test_feed_formats(world, site, name, titles, first_link):
    flow, stream = new_flow(world)
    subscribe(world, flow, f"{site.base}/feeds/{name}")
    events = rss_events(stream, 2)
    assert [e["content"]["title"] for e in events] == titles
    link = events[0]["content"]["link"]
    assert link == (site.base + first_link if first_link.startswith("/") else first_link)
    if name == "atom.xml":
        entry = events[1]["content"]
        assert entry["feed"]["title"] == "Atom Journal"
        assert 'href="http://atom.example.net/about"' in entry["summary_html"]
        assert "iframe" not in entry["summary_html"] and entry["summary"] == "Second entry with HTML."
    if name == "rss091.xml":
        assert events[1]["content"]["summary"] == "Crème brûlée is back."
        assert events[1]["content"]["feed"]["title"] == "Café News 0.91"
    stream.close()


def test_a_changing_feed_posts_each_new_entry_once(world, site):
    flow, stream = new_flow(world)
    with site.lock:
        site.changing[:] = [("c-1", "Changing one"), ("c-2", "Changing two")]
    subscribe(world, flow, site.base + "/changing.xml")
    assert [e["content"]["title"] for e in rss_events(stream, 2)] == ["Changing one", "Changing two"]
    with site.lock:
        site.changing.append(("c-3", "Changing three"))
    assert rss_events(stream, 1)[0]["content"]["link"] == site.base + "/items/c-3"
    with site.lock:
        site.changing[:] = [("c-3", "Changing three"), ("c-4", "Changing four"),
                            ("c-5", "Changing five")]
    assert [e["content"]["title"] for e in rss_events(stream, 2)] == [
        "Changing four", "Changing five"]
    assert stream.quiet(1.5) == []
    stream.close()


def test_conditional_get_answered_with_304(world, site):
    flow, stream = new_flow(world)
    feed = subscribe(world, flow, site.base + "/etag.xml")
    assert rss_events(stream, 1)[0]["content"]["title"] == "Etag item 1"
    deadline = time.monotonic() + 10
    while sum(1 for _, status in site.etag_requests if status == 304) < 2:
        assert time.monotonic() < deadline, site.etag_requests
        time.sleep(0.1)
    assert site.etag_requests[0] == (None, 200)
    assert all(asked == '"v1"' for asked, _ in site.etag_requests[1:])
    with site.lock:
        site.etag_version = 2
    assert rss_events(stream, 1)[0]["content"]["title"] == "Etag item 2"
    assert stream.quiet(1) == []
    shown = world.alice.get(f"/flows/{flow['path']}/feeds/{feed['id']}").json()
    assert shown["error_message"] is None and shown["last_polled_at"]
    stream.close()


def test_errors_are_reported_and_retried_with_backoff(world, site):
    flow, stream = new_flow(world)
    slow = subscribe(world, flow, site.base + "/slow.xml")
    page = subscribe(world, flow, site.base + "/feeds/notafeed.html")
    missing = subscribe(world, flow, site.base + "/feeds/missing.xml")
    huge = subscribe(world, flow, site.base + "/huge.xml")
    unsized = subscribe(world, flow, site.base + "/huge-unsized.xml")
    shown = feed_state(world, flow, slow["id"], lambda f: f["error_message"])
    assert "timed out" in shown["error_message"]
    assert "not a feed" in feed_state(world, flow, page["id"], lambda f: f["error_message"])[
        "error_message"]
    assert feed_state(world, flow, missing["id"], lambda f: f["error_message"])[
        "error_message"] == "HTTP 404"
    for feed in (huge, unsized):
        assert "larger than 200000 bytes" in feed_state(
            world, flow, feed["id"], lambda f: f["error_message"])["error_message"]
    # Backoff: with a 0.3 s interval, a failing feed is not hammered.
    before = site.slow_requests
    time.sleep(2)
    assert site.slow_requests - before <= 2
    assert [e for e in stream.quiet(0.5) if e["event"] == "rss"] == []
    stream.close()


def test_redirects_are_followed(world, site):
    flow, stream = new_flow(world)
    subscribe(world, flow, site.base + "/moved")
    events = rss_events(stream, 2)
    assert events[1]["content"]["link"] == site.base + "/feeds/menu.html"
    stream.close()


def test_subscription_validation_visibility_and_removal(world, site):
    flow, stream = new_flow(world)
    path = flow["path"]
    r = world.alice.post(f"/flows/{path}/feeds", {"type": "rss", "url": "ftp://x.example/"})
    assert r.status_code == 400 and "url" in r.json()["errors"]
    r = world.alice.post(f"/flows/{path}/feeds", {"type": "gopher", "url": site.base})
    assert r.status_code == 400
    assert world.carol.get(f"/flows/{path}/feeds").status_code == 404
    assert world.carol.post(f"/flows/{path}/feeds", {"url": site.base + "/changing.xml"}
                            ).status_code == 404
    url = site.base + "/changing.xml"
    with site.lock:
        site.changing[:] = [("v-1", "Valid one"), ("v-2", "Valid two")]
    feed = subscribe(world, flow, url)
    assert subscribe(world, flow, url, status=200)["id"] == feed["id"]
    events = stream.events(1, timeout=10)
    assert events[0]["content"]["type"] == "add_rss_feed"
    rss_events(stream, 2)
    r = world.bob.delete(f"/flows/{path}/feeds/{feed['id']}")
    assert r.status_code == 200
    removed = stream.events(1, timeout=10, skip=("activity.user", "rss"))[0]
    assert removed["event"] == "action" and removed["user"] == str(world.bob.id)
    assert removed["content"] == {"type": "remove_rss_feed", "description": url}
    assert world.alice.get(f"/flows/{path}/feeds").json() == []
    assert world.alice.delete(f"/flows/{path}/feeds/{feed['id']}").status_code == 404
    with site.lock:
        site.changing.append(("c-6", "After removal"))
    assert [e for e in stream.quiet(1.5) if e["event"] == "rss"] == []
    stream.close()


def test_admin_adds_lists_and_removes_feeds(world, site):
    flow, stream = new_flow(world)
    url = site.base + "/feeds/rdf.xml"
    out = world.server.admin("add-feed", flow["path"], url, "--by", world.alice.email)
    feed_id = int(out.split()[1])
    action = stream.events(1, timeout=10)[0]
    assert action["content"] == {"type": "add_rss_feed", "description": url}
    assert action["user"] == str(world.alice.id)
    assert len(rss_events(stream, 2)) == 2
    listed = world.server.admin("list", "feeds", flow["path"])
    assert listed.startswith(f"{feed_id}\t{flow['path']}\trss\t{url}")
    world.server.admin("remove-feed", flow["path"], str(feed_id))
    removed = stream.events(1, timeout=10)[0]
    assert removed["content"] == {"type": "remove_rss_feed", "description": url}
    assert removed["user"] == "0"
    assert world.alice.get(f"/flows/{flow['path']}/feeds").json() == []
    stream.close()


def test_nothing_is_posted_twice_across_a_restart(world, site):
    flow, stream = new_flow(world)
    with site.lock:
        site.changing[:] = [("r-1", "Restart one")]
    subscribe(world, flow, site.base + "/changing.xml")
    assert rss_events(stream, 1)[0]["content"]["title"] == "Restart one"
    stream.close()
    world.server.stop()
    with site.lock:
        site.changing.append(("r-2", "Restart two"))
    world.server.start()

    def titles():
        return [m["content"]["title"] for m in world.alice.get(
            f"/flows/{flow['path']}/messages", params={"event": "rss"}).json()]
    deadline = time.monotonic() + 15
    while len(titles()) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    stream = world.alice.stream(flow["path"])
    assert stream.quiet(1.5) == []
    assert titles() == ["Restart one", "Restart two"]
    stream.close()
