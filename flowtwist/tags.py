"""Tags: hashtags, @mentions and the server's meta tags (API spec, section 6)."""
from __future__ import annotations

import re
from typing import Iterable

HASHTAG = re.compile(r"(?<![\w#])#([\w-]+)")
MENTION = re.compile(r"(?<![\w@])@([\w.-]*[\w-])")
URL = re.compile(r"\b(?:https?|ftp)://[^\s<>\"']+|\bwww\.[^\s<>\"']+\.[a-z]{2,}", re.I)

EVERYONE = frozenset({"everyone", "everybody", "all", "anyone", "anybody"})


def split_param(tags) -> list[str]:
    """The `tags` parameter: a JSON array or a comma string."""
    if tags is None or tags == "":
        return []
    if isinstance(tags, str):
        tags = tags.split(",")
    if not isinstance(tags, (list, tuple)):
        raise ValueError("tags must be a list or a comma separated string")
    return [str(t).strip() for t in tags if str(t).strip()]


def text_tags(text: str) -> tuple[list[str], list[str]]:
    """Hashtags and mentioned names found in a text, in order.  URLs are left out: a
    fragment (`/#anchor`) or a path (`/@name`) is not a tag."""
    text = URL.sub(" ", text)
    return HASHTAG.findall(text), MENTION.findall(text)


def build_tags(text: str | None, param_tags: Iterable[str],
               members: Iterable[tuple[int, str]]) -> list[str]:
    """The full tag list of a posted message.

    `members` are (user id, nick) of the people who can be mentioned (enabled members of
    the flow).  Mentions become `:user:<id>` plus `:unread:<id>`; `@everyone` adds
    `:user:everyone` and an `:unread:` for every member.
    """
    by_nick = {nick.lower(): uid for uid, nick in members if nick}
    hashtags, mentions = text_tags(text or "")
    params = list(param_tags)
    user_tags: list[str] = []
    plain: list[str] = []

    def mention(name: str) -> None:
        low = name.lower()
        if low in EVERYONE:
            user_tags.append(":user:everyone")
            user_tags.extend(f":unread:{uid}" for uid in by_nick.values())
        elif low == "team":
            user_tags.append(":user:team")
        elif low in by_nick:
            uid = by_nick[low]
            user_tags.extend((f":user:{uid}", f":unread:{uid}"))

    for name in mentions:
        mention(name)
    for tag in params:
        if tag.startswith("@"):
            mention(tag[1:])
        elif tag.startswith("#"):
            plain.append(tag[1:])
        elif tag:
            plain.append(tag)
    meta: list[str] = []
    if text:
        mentioned = {t.split(":")[-1] for t in user_tags if t.startswith(":user:")}
        # A nick may contain dots, but a sentence's full stop is not part of it.
        words = {w.lower().rstrip(".") for w in re.findall(r"[\w.-]+", URL.sub(" ", text))}
        for nick, uid in by_nick.items():
            if nick in words and str(uid) not in mentioned:
                meta.append(f":highlight:{uid}")
        if URL.search(text):
            meta.append(":url")
    return dedupe(user_tags + meta + hashtags + plain)


def dedupe(tags: Iterable[str]) -> list[str]:
    """Drop case-insensitive duplicates, keeping the first spelling and order."""
    seen: set[str] = set()
    out = []
    for tag in tags:
        key = tag.lower()
        if key and key not in seen:
            seen.add(key)
            out.append(tag)
    return out


def normalise_filter(tags: Iterable[str], members: Iterable[tuple[int, str]]) -> list[str]:
    """Tags of a `tags=` list filter: `#x` → `x`, `@nick` → `:user:<id>`."""
    by_nick = {nick.lower(): uid for uid, nick in members}
    out = []
    for tag in tags:
        if tag.startswith("#"):
            out.append(tag[1:])
        elif tag.startswith("@"):
            uid = by_nick.get(tag[1:].lower())
            out.append(f":user:{uid}" if uid is not None else tag)
        else:
            out.append(tag)
    return out
