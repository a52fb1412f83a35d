"""HTML handling for what integrations and bridges post: a whitelist sanitizer for
team-inbox bodies, and HTML to plain text (for email bodies, IRC, feed summaries)."""
from __future__ import annotations

import html
import re
from html.parser import HTMLParser

ALLOWED_TAGS = frozenset(
    "a abbr acronym address article aside b big blockquote br caption cite code dd del "
    "details dfn div dl dt em figcaption figure footer h1 h2 h3 h4 h5 h6 header hgroup hr i "
    "img ins kbd li nav ol p pre samp section small span strong sub summary sup table tbody "
    "td tfoot th thead tr tt ul var wb".split())
ALLOWED_ATTRS = {"a": {"href", "title"}, "img": {"src", "alt", "title", "width", "height"},
                 "abbr": {"title"}, "acronym": {"title"}, "td": {"colspan", "rowspan"},
                 "th": {"colspan", "rowspan"}}
VOID = frozenset({"br", "hr", "img", "wb"})
DROP_CONTENT = frozenset({"script", "style", "head", "title", "iframe", "object", "template"})
SAFE_URL = re.compile(r"^(?:https?:|mailto:|/|#|cid:)", re.I)


class _Sanitizer(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []
        self.open: list[str] = []
        self.dropping = 0

    def handle_starttag(self, tag, attrs):
        if tag in DROP_CONTENT:
            self.dropping += 1
            return
        if self.dropping or tag not in ALLOWED_TAGS:
            return
        kept = []
        for name, value in attrs:
            if name in ALLOWED_ATTRS.get(tag, ()) and value is not None:
                if name in ("href", "src") and not SAFE_URL.match(value.strip()):
                    continue
                kept.append(f' {name}="{html.escape(value, quote=True)}"')
        self.out.append(f"<{tag}{''.join(kept)}>")
        if tag not in VOID:
            self.open.append(tag)

    def handle_endtag(self, tag):
        if tag in DROP_CONTENT:
            self.dropping = max(0, self.dropping - 1)
            return
        if self.dropping or tag not in self.open:
            return
        while self.open:
            top = self.open.pop()
            self.out.append(f"</{top}>")
            if top == tag:
                break

    def handle_data(self, data):
        if not self.dropping:
            self.out.append(html.escape(data, quote=False))


def sanitize(markup: str) -> str:
    """Keep only the tags the Flowdock push API allows; no scripts, no handlers."""
    parser = _Sanitizer()
    parser.feed(markup)
    parser.close()
    return "".join(parser.out) + "".join(f"</{t}>" for t in reversed(parser.open))


BLOCK = frozenset({"p", "div", "br", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6",
                   "blockquote", "pre", "table", "ul", "ol", "hr", "section", "article",
                   "header", "footer"})


class _Text(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.dropping = 0
        self.href: str | None = None

    def handle_starttag(self, tag, attrs):
        if tag in DROP_CONTENT:
            self.dropping += 1
        elif tag in BLOCK:
            self.parts.append("\n")
        if tag == "li":
            self.parts.append("- ")
        if tag == "a":
            self.href = dict(attrs).get("href")

    def handle_endtag(self, tag):
        if tag in DROP_CONTENT:
            self.dropping = max(0, self.dropping - 1)
        elif tag in BLOCK:
            self.parts.append("\n")
        if tag == "a":
            self.href = None

    def handle_data(self, data):
        if not self.dropping:
            self.parts.append(re.sub(r"\s+", " ", data))


def to_text(markup: str) -> str:
    """Readable plain text of an HTML document or fragment."""
    parser = _Text()
    parser.feed(markup)
    parser.close()
    text = "".join(parser.parts)
    lines = [line.strip() for line in text.splitlines()]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()
