"""Twitter searches and accounts into flows, through the API v2 recent search.

Each subscription (`twitter_search`: a query; `twitter_follow`: a screen name, searched
as `from:<name>`) is polled from --twitter-api with the --twitter-bearer-token, asking
only for tweets newer than the last one seen (`since_id`, following `next_token`
pages).  A 429 answer stops every Twitter poller of the process until its
`x-rate-limit-reset`.  Each tweet becomes a `twitter` event, uuid `twitter:<id>`, so
it is posted once per flow.  The first poll of a new subscription posts at most
--feed-backlog tweets.

The `twitter` content: {id, text, created_at, user: {id, screen_name, name,
profile_image_url}}.
"""
from __future__ import annotations

import json
import time
from urllib.parse import urlencode

from flowtwist.bridges import feeds
from flowtwist.bridges.feeds import PollError, Poller, register_poller, seconds

MAX_PAGES = 5
PAGE_SIZE = 100
SEARCH_PATH = "/2/tweets/search/recent"


class RateGate:
    """The app-wide rate limit: when the API says stop, every poller waits."""

    def __init__(self):
        self.resume_at: dict[str, float] = {}

    def wait(self, api: str) -> float:
        return max(0.0, self.resume_at.get(api, 0.0) - time.time())

    def close_until(self, api: str, when: float) -> None:
        self.resume_at[api] = max(self.resume_at.get(api, 0.0), when)


GATE = RateGate()


def _query(feed: dict) -> str:
    if feed["kind"] == "twitter_follow":
        return f"from:{feed['target']}"
    return feed["target"]


def _int_id(value) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


class TwitterPoller(Poller):
    def _api(self) -> str:
        return (self.settings.get("twitter-api") or "https://api.twitter.com").rstrip("/")

    async def poll(self, feed: dict, state: dict) -> dict:
        api = self._api()
        token = self.settings.get("twitter-bearer-token") or ""
        if not token:
            raise PollError("no Twitter bearer token configured (--twitter-bearer-token)",
                            retry_after=self.interval * feeds.MAX_BACKOFF)
        wait = GATE.wait(api)
        if wait > 0:
            raise PollError("rate limited by the Twitter API", retry_after=wait + 0.05)
        since_id = state.get("since_id")
        tweets: dict[str, dict] = {}
        users: dict[str, dict] = {}
        newest = since_id
        next_token = None
        backlog = int(seconds(self.settings, "feed-backlog", 3))
        for _ in range(MAX_PAGES):
            params = {"query": _query(feed), "max_results": str(PAGE_SIZE),
                      "tweet.fields": "created_at,author_id", "expansions": "author_id",
                      "user.fields": "name,username,profile_image_url"}
            if since_id:
                params["since_id"] = since_id
            if next_token:
                params["next_token"] = next_token
            page = await self._get(api, token, params)
            for user in (page.get("includes") or {}).get("users") or []:
                if isinstance(user, dict) and user.get("id"):
                    users[str(user["id"])] = user
            for tweet in page.get("data") or []:
                if isinstance(tweet, dict) and tweet.get("id"):
                    tweets[str(tweet["id"])] = tweet
            meta = page.get("meta") or {}
            if _int_id(meta.get("newest_id")) > _int_id(newest):
                newest = str(meta["newest_id"])
            next_token = meta.get("next_token")
            # On the first poll only a few are posted: no need to read further.
            if not next_token or (not state.get("primed") and len(tweets) >= backlog):
                break
        for tweet_id in tweets:
            if _int_id(tweet_id) > _int_id(newest):
                newest = tweet_id
        ordered = sorted(tweets.values(), key=lambda t: _int_id(t["id"]))
        if not state.get("primed"):
            ordered = ordered[-backlog:] if backlog else []
        items = []
        for tweet in ordered:
            author = users.get(str(tweet.get("author_id")), {})
            content = {"id": str(tweet["id"]), "text": str(tweet.get("text") or ""),
                       "created_at": tweet.get("created_at"),
                       "user": {"id": str(author.get("id") or tweet.get("author_id") or ""),
                                "screen_name": author.get("username") or "",
                                "name": author.get("name") or "",
                                "profile_image_url": author.get("profile_image_url")}}
            title = f"@{content['user']['screen_name']}: {content['text']}"[:140]
            items.append((content, title, f"twitter:{tweet['id']}"))
        await self.post("twitter", items)
        if newest:
            state["since_id"] = newest
        state["primed"] = True
        return state

    async def _get(self, api: str, token: str, params: dict) -> dict:
        url = f"{api}{SEARCH_PATH}?{urlencode(params)}"
        response = await feeds.fetch(
            url, {"Authorization": f"Bearer {token}", "User-Agent": feeds.USER_AGENT,
                  "Accept": "application/json"},
            seconds(self.settings, "feed-timeout", 30), 5 * 1024 * 1024, self.reactor)
        if response.status == 429:
            reset = response.header("x-rate-limit-reset")
            until = float(reset) if reset and reset.strip().isdigit() else time.time() + 900
            GATE.close_until(api, until)
            raise PollError("rate limited by the Twitter API (429)",
                            retry_after=max(0.0, until - time.time()) + 0.05)
        if response.status != 200:
            detail = ""
            try:
                body = json.loads(response.body)
                detail = body.get("detail") or body.get("title") or ""
            except (ValueError, AttributeError):
                pass
            raise PollError(f"Twitter API answered HTTP {response.status}"
                            + (f": {detail}" if detail else ""))
        try:
            page = json.loads(response.body)
        except ValueError:
            raise PollError("Twitter API answered something that is not JSON")
        if not isinstance(page, dict):
            raise PollError("Twitter API answered an unexpected JSON shape")
        if page.get("errors") and not page.get("data") and not page.get("meta"):
            first = page["errors"][0] if isinstance(page["errors"], list) else {}
            raise PollError(f"Twitter API error: {first.get('detail') or first.get('message')}")
        return page


@register_poller("twitter_search", "twitter_follow")
def twitter_poller(app, feed, settings, reactor):
    return TwitterPoller(app, feed, settings, reactor,
                         seconds(settings, "twitter-interval", 60))
