"""Twitter searches and accounts: a running flowtwist polls a local server that answers
like the API v2 recent search (bearer token, since_id, next_token pages, 429)."""
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import pytest

from tests.conftest import World
from tests.support import Flowtwist

TOKEN = "test-bearer-token"
PAGE = 2        # the fake API pages by two, so that paging is exercised


class FakeTwitter:
    def __init__(self):
        self.lock = threading.Lock()
        self.tweets: list[dict] = []       # {id, text, author, created_at}
        self.users = {"1": {"id": "1", "username": "jack", "name": "Jack",
                            "profile_image_url": "https://pbs.example/jack.png"},
                      "2": {"id": "2", "username": "ann_dev", "name": "Ann Dev",
                            "profile_image_url": "https://pbs.example/ann.png"}}
        self.next_id = 1000
        self.requests: list[dict] = []
        self.limit_once_until: int | None = None
        site = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                site.handle(self)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()

    def tweet(self, text: str, author: str = "2") -> str:
        with self.lock:
            self.next_id += 7
            tweet_id = str(self.next_id)
            self.tweets.append({"id": tweet_id, "text": text, "author_id": author,
                                "created_at": "2025-06-03T10:00:00.000Z"})
        return tweet_id

    def matches(self, tweet: dict, query: str) -> bool:
        if query.startswith("from:"):
            return self.users[tweet["author_id"]]["username"] == query[5:]
        return query.lower() in tweet["text"].lower()

    def handle(self, h):
        url = urlparse(h.path)
        params = {k: v[0] for k, v in parse_qs(url.query).items()}
        with self.lock:
            limited = self.limit_once_until
            self.limit_once_until = None
            self.requests.append({"time": time.time(), "limited": limited is not None, **params})
        if h.headers.get("Authorization") != f"Bearer {TOKEN}":
            return self.send(h, 401, {"title": "Unauthorized", "detail": "Unauthorized"})
        if url.path != "/2/tweets/search/recent":
            return self.send(h, 404, {"title": "Not Found"})
        if limited is not None:
            return self.send(h, 429, {"title": "Too Many Requests"},
                             {"x-rate-limit-reset": str(limited), "x-rate-limit-remaining": "0"})
        since = int(params.get("since_id") or 0)
        with self.lock:
            found = [t for t in self.tweets
                     if int(t["id"]) > since and self.matches(t, params["query"])]
        found.sort(key=lambda t: -int(t["id"]))
        start = int(params.get("next_token") or 0)
        page = found[start:start + PAGE]
        body = {"meta": {"result_count": len(page)}}
        if page:
            body["data"] = page
            body["includes"] = {"users": [self.users[a] for a in {t["author_id"] for t in page}]}
            body["meta"].update(newest_id=page[0]["id"], oldest_id=page[-1]["id"])
        if start + PAGE < len(found):
            body["meta"]["next_token"] = str(start + PAGE)
        self.send(h, 200, body)

    @staticmethod
    def send(h, status, body, headers=None):
        data = json.dumps(body).encode()
        try:
            h.send_response(status)
            h.send_header("Content-Type", "application/json")
            h.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                h.send_header(k, v)
            h.end_headers()
            h.wfile.write(data)
        except OSError:     # flowtwist stopped mid-request at the end of the module
            pass


@pytest.fixture(scope="module")
def api():
    fake = FakeTwitter()
    yield fake
    fake.close()


@pytest.fixture(scope="module")
def world(api):
    server = Flowtwist(extra_args=["--twitter-api", api.base, "--twitter-bearer-token", TOKEN,
                                   "--twitter-interval", "0.3", "--feed-backlog", "3",
                                   "--feed-timeout", "2"])
    server.start()
    try:
        yield World(server)
    finally:
        server.close()


def tweets(stream, n, timeout=15) -> list[dict]:
    events = stream.events(n, timeout=timeout, skip=("activity.user", "action"))
    assert all(e["event"] == "twitter" for e in events), events
    return events


def test_search_posts_new_tweets_once_with_since_id_and_paging(world, api):
    ids = [api.tweet(f"#flowtwist tweet {i}") for i in range(1, 6)]
    api.tweet("unrelated chatter")
    stream = world.alice.stream("acme/main")
    r = world.alice.post("/flows/acme/main/feeds",
                         {"type": "twitter_search", "query": "#flowtwist"})
    assert r.status_code == 201, r.text
    feed = r.json()
    assert feed["type"] == "twitter_search" and feed["query"] == "#flowtwist"
    action = stream.events(1, timeout=10)[0]
    assert action["content"] == {"type": "add_twitter_search", "description": "#flowtwist"}
    # First poll: the newest three of the backlog, oldest first.
    first = tweets(stream, 3)
    assert [e["content"]["id"] for e in first] == ids[2:]
    content = first[-1]["content"]
    assert content == {"id": ids[4], "text": "#flowtwist tweet 5",
                       "created_at": "2025-06-03T10:00:00.000Z",
                       "user": {"id": "2", "screen_name": "ann_dev", "name": "Ann Dev",
                                "profile_image_url": "https://pbs.example/ann.png"}}
    assert first[-1]["app"] == "influx" and first[-1]["user"] == "0"
    # Five new tweets arrive in pages of two: all are posted, in order, once.
    new_ids = [api.tweet(f"more #FlowTwist {i}") for i in range(5)]
    later = tweets(stream, 5)
    assert [e["content"]["id"] for e in later] == new_ids
    assert stream.quiet(1.5) == []
    with api.lock:
        searched = [r for r in api.requests if r.get("query") == "#flowtwist"]
    assert "since_id" not in searched[0]
    assert any(r.get("since_id") == ids[4] for r in searched)
    assert any(r.get("since_id") == new_ids[-1] for r in searched)
    assert any(r.get("next_token") for r in searched)
    stored = world.alice.get("/flows/acme/main/messages",
                             params={"event": "twitter", "limit": 100}).json()
    assert [m["content"]["id"] for m in stored] == ids[2:] + new_ids
    world.alice.delete(f"/flows/acme/main/feeds/{feed['id']}")
    stream.close()


def test_follow_an_account_and_respect_429(world, api):
    stream = world.alice.stream("acme/side")
    r = world.alice.post("/flows/acme/side/feeds",
                         {"type": "twitter_follow", "screen_name": "@jack"})
    assert r.status_code == 201, r.text
    assert r.json()["screen_name"] == "jack"
    action = stream.events(1, timeout=10)[0]
    assert action["content"] == {"type": "add_twitter_follow", "description": "jack"}
    # jack has no tweets yet: the first poll posts nothing, later ones do.
    deadline = time.monotonic() + 10
    while not any(r.get("query") == "from:jack" for r in list(api.requests)):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    first = api.tweet("hello from jack", author="1")
    assert tweets(stream, 1)[0]["content"]["user"]["screen_name"] == "jack"
    # The API says: no more until the reset time.
    reset = int(time.time()) + 2
    with api.lock:
        api.limit_once_until = reset
        limited_from = len(api.requests)
    second = api.tweet("jack again", author="1")
    event = tweets(stream, 1)[0]
    assert event["content"]["id"] == second and event["content"]["text"] == "jack again"
    with api.lock:
        after = api.requests[limited_from:]
    limited = [i for i, r in enumerate(after) if r["limited"]]
    assert len(limited) == 1 and after[limited[0]]["time"] < reset
    # Nothing asked the API between the 429 and its reset.
    later = after[limited[0] + 1:]
    assert later and all(r["time"] >= reset for r in later), [r["time"] - reset for r in later]
    assert stream.quiet(1) == []
    stored = world.alice.get("/flows/acme/side/messages", params={"event": "twitter"}).json()
    assert [m["content"]["id"] for m in stored] == [first, second]
    stream.close()


def test_errors_are_shown_on_the_subscription(world, api):
    r = world.alice.post("/flows/acme/main/feeds",
                         {"type": "twitter_follow", "screen_name": "not a name!"})
    assert r.status_code == 400 and "screen_name" in r.json()["errors"]
    r = world.alice.post("/flows/acme/main/feeds", {"type": "twitter_search", "query": " "})
    assert r.status_code == 400
