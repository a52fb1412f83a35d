"""The web app's side of the HTTP port: the single-page app in `web/`, signing in and
out with a session cookie, and the WebSocket endpoint.

    GET  /  (a browser: Accept text/html)   the app (REST clients still get the API)
    GET  /app, /app/<anything>              the app (its own routes: /app/<org>/<flow>)
    GET  /static/<file>                     the app's files (ES modules, CSS), no build
    GET  /session                           who is signed in, and the CSRF token
    POST /login                             email + password (JSON or form) → cookie
    POST /logout                            with the CSRF token; ends the sockets too
    GET  /ws                                the WebSocket API (flowtwist/websocket.py)

Sessions are random tokens; the server keeps only their SHA-256 (in the directory's
settings, so they survive a restart and are shared by every process) with the user
and a CSRF token.  The cookie is HttpOnly and SameSite=Lax; every state-changing
request authenticated by the cookie must also carry the CSRF token (header
`X-CSRF-Token`, or a `csrf` form field for /logout), and sign-in refuses a
cross-site Origin.
"""
from __future__ import annotations

import hashlib
import json
import mimetypes
import os
import secrets
import time
from urllib.parse import parse_qsl, urlsplit

from twisted.internet import defer
from twisted.logger import Logger
from twisted.web import resource, server, static

from flowtwist.accounts import TTLCache
from flowtwist.api import shapes
from flowtwist.api.http import header, json_bytes
from flowtwist.model import ChatError, Forbidden, User
from flowtwist.service import WEB_DIR, register_edge
from flowtwist.websocket import SocketFactory, SocketResource, parse_cookie

log = Logger()

COOKIE = "flowtwist_session"
SESSION_DAYS = 30
SAFE_METHODS = (b"GET", b"HEAD", b"OPTIONS")

mimetypes.add_type("text/javascript", ".js")
mimetypes.add_type("text/css", ".css")
mimetypes.add_type("image/svg+xml", ".svg")


def _key(token: str) -> str:
    return "web-session:" + hashlib.sha256(token.encode()).hexdigest()


class SessionStore:
    """Signed-in browsers.  `user_of(request)` is what the Authenticator asks."""

    def __init__(self, directory, secure: bool = False, clock=time.time):
        self.directory = directory
        self.secure = secure
        self.clock = clock
        self._cache = TTLCache(5.0)     # other processes' sign-outs seen within seconds
        self.on_end = []                # callbacks(session key) when a session ends

    async def create(self, user: User) -> tuple[str, str]:
        token = secrets.token_urlsafe(32)
        csrf = secrets.token_urlsafe(24)
        expires = int((self.clock() + SESSION_DAYS * 86400) * 1000)
        record = {"user": user.id, "csrf": csrf, "expires": expires}
        await self.directory.set_setting(_key(token), record)
        self._cache.put(_key(token), record)
        return token, csrf

    async def lookup(self, token: str | None) -> tuple[User, dict, str] | None:
        if not token or len(token) > 100:
            return None
        key = _key(token)
        record = self._cache.get(key)
        if record is None:
            record = await self.directory.get_setting(key) or {}
            self._cache.put(key, record)
        if not record or record.get("expires", 0) < self.clock() * 1000:
            return None
        user = await self.directory.get_user(int(record["user"]))
        if user is None or user.disabled:
            return None
        return user, record, key

    async def end(self, token: str) -> None:
        key = _key(token)
        await self.directory.set_setting(key, None)
        self._cache.put(key, {})
        for callback in self.on_end:
            callback(key)

    async def from_cookie_header(self, cookie_header: str) -> tuple[User, str] | None:
        found = await self.lookup(parse_cookie(cookie_header, COOKIE))
        return (found[0], found[2]) if found else None

    async def user_of(self, request) -> User | None:
        """The cookie's user; a state-changing request must show the CSRF token."""
        found = await self.lookup(cookie_of(request))
        if found is None:
            return None
        user, record, _ = found
        if request.method.upper() not in SAFE_METHODS:
            given = header(request, "x-csrf-token") or ""
            if not secrets.compare_digest(given.encode(), record["csrf"].encode()):
                raise Forbidden("Missing or wrong CSRF token (X-CSRF-Token header)")
        return user

    def cookie(self, token: str, max_age: int) -> bytes:
        parts = [f"{COOKIE}={token}", "Path=/", "HttpOnly", "SameSite=Lax",
                 f"Max-Age={max_age}"]
        if self.secure:
            parts.append("Secure")
        return "; ".join(parts).encode()


def cookie_of(request) -> str | None:
    value = request.getCookie(COOKIE.encode())
    return value.decode("ascii", "replace") if value else None


def _same_origin(request) -> bool:
    """A browser's Origin (or Referer) must name this host; non-browsers send none."""
    origin = header(request, "origin") or header(request, "referer")
    if not origin or origin == "null":
        return origin != "null"
    host = (header(request, "host") or "").lower()
    return urlsplit(origin).netloc.lower() == host


class _Handler(resource.Resource):
    isLeaf = True

    def __init__(self, sessions: SessionStore, accounts=None):
        super().__init__()
        self.sessions = sessions
        self.accounts = accounts

    def render(self, request):
        d = defer.ensureDeferred(self.handle(request))

        def failed(f):
            if not f.check(ChatError):
                log.failure("web app request failed", f)
                self._reply(request, 500, {"message": "Internal server error"})
            else:
                self._reply(request, f.value.status, {"message": f.value.message})
        d.addErrback(failed)
        return server.NOT_DONE_YET

    @staticmethod
    def _reply(request, status: int, body: dict, location: str | None = None) -> None:
        if request.finished or request._disconnected:
            return
        request.setResponseCode(status)
        request.setHeader(b"Cache-Control", b"no-store")
        if location and status in (302, 303):
            request.setHeader(b"Location", location.encode())
            request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
            request.write(b"See " + location.encode())
        else:
            data = json_bytes(body)
            request.setHeader(b"Content-Type", b"application/json; charset=utf-8")
            request.setHeader(b"Content-Length", str(len(data)).encode())
            request.write(data)
        request.finish()

    @staticmethod
    def _form(request) -> tuple[dict, bool]:
        """(fields, is_form): a JSON body, or an HTML form post (answered by redirect)."""
        request.content.seek(0)
        raw = request.content.read(64 * 1024)
        ctype = (header(request, "content-type") or "").split(";")[0].strip().lower()
        if ctype == "application/x-www-form-urlencoded":
            try:
                return dict(parse_qsl(raw.decode("utf-8"), keep_blank_values=True)), True
            except UnicodeDecodeError:
                raise ChatError("Form body is not UTF-8")
        if not raw:
            return {}, False
        try:
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise ChatError("Malformed JSON in request body")
        if not isinstance(data, dict):
            raise ChatError("Request body must be a JSON object")
        return data, False

    async def handle(self, request) -> None:
        raise NotImplementedError


class LoginResource(_Handler):
    async def handle(self, request):
        if request.method != b"POST":
            request.setHeader(b"Allow", b"POST")
            return self._reply(request, 405, {"message": "Method not allowed"})
        fields, is_form = self._form(request)
        if not _same_origin(request):
            return self._reply(request, 403, {"message": "Cross-site sign-in refused"})
        email, password = fields.get("email"), fields.get("password")
        user = None
        if isinstance(email, str) and isinstance(password, str):
            user = await self.accounts.by_password(email.strip(), password)
        if user is None:
            if is_form:
                return self._reply(request, 303, {}, "/app?error=login")
            return self._reply(request, 401, {"message": "Wrong email or password"})
        token, csrf = await self.sessions.create(user)
        # Set-Cookie by hand: SameSite is not in Request.addCookie's API.
        request.responseHeaders.addRawHeader(
            b"Set-Cookie", self.sessions.cookie(token, SESSION_DAYS * 86400))
        if is_form:
            return self._reply(request, 303, {}, "/app")
        return self._reply(request, 200, {"user": shapes.user_json(user), "csrf": csrf})


class LogoutResource(_Handler):
    async def handle(self, request):
        if request.method != b"POST":
            request.setHeader(b"Allow", b"POST")
            return self._reply(request, 405, {"message": "Method not allowed"})
        fields, is_form = self._form(request)
        token = cookie_of(request)
        found = await self.sessions.lookup(token)
        if found is not None:
            given = header(request, "x-csrf-token") or str(fields.get("csrf") or "")
            if not secrets.compare_digest(given.encode(), found[1]["csrf"].encode()):
                return self._reply(request, 403, {"message": "Missing or wrong CSRF token"})
            await self.sessions.end(token)
        request.responseHeaders.addRawHeader(b"Set-Cookie", self.sessions.cookie("", 0))
        if is_form:
            return self._reply(request, 303, {}, "/app")
        return self._reply(request, 200, {})


class SessionResource(_Handler):
    async def handle(self, request):
        found = await self.sessions.lookup(cookie_of(request))
        if found is None:
            return self._reply(request, 401, {"message": "Not signed in"})
        user, record, _ = found
        return self._reply(request, 200, {"user": shapes.user_json(user),
                                          "csrf": record["csrf"]})


class AppPage(resource.Resource):
    """index.html for /app and every path under it (the app routes by itself)."""
    isLeaf = True

    def __init__(self, web_dir: str):
        super().__init__()
        self.path = os.path.join(web_dir, "index.html")

    def render_GET(self, request):
        with open(self.path, "rb") as f:
            data = f.read()
        request.setHeader(b"Content-Type", b"text/html; charset=utf-8")
        request.setHeader(b"Cache-Control", b"no-cache")
        request.setHeader(b"X-Frame-Options", b"DENY")
        request.setHeader(b"Referrer-Policy", b"same-origin")
        request.setHeader(b"Content-Security-Policy",
                          b"default-src 'self'; img-src 'self' data: https:; "
                          b"connect-src 'self' ws: wss:; style-src 'self'; "
                          b"frame-ancestors 'none'")
        return data

    render_HEAD = render_GET


class StaticFiles(static.File):
    """web/ without directory listings; revalidated on each load (no build step, no
    fingerprinted names)."""

    def directoryListing(self):
        return resource.NoResource()

    def render_GET(self, request):
        request.setHeader(b"Cache-Control", b"no-cache")
        return super().render_GET(request)


def wants_html(request) -> bool:
    accept = header(request, "accept") or ""
    return request.method in (b"GET", b"HEAD") and "text/html" in accept


@register_edge
def web_edge(app, settings, web_root, reactor):
    """Attach the web app, sign-in and the WebSocket to the web port."""
    sessions = SessionStore(app.directory, secure=app.public_url.startswith("https:"))
    auth = getattr(getattr(web_root, "rest", None), "auth", None)
    if auth is not None:
        auth.sessions = sessions        # REST calls from the app authenticate by cookie
    sockets = SocketFactory(app, sessions, reactor)
    sessions.on_end.append(sockets.end_session)
    page = AppPage(WEB_DIR)
    web_root.putChild(b"app", page)
    web_root.putChild(b"static", StaticFiles(WEB_DIR))
    web_root.putChild(b"login", LoginResource(sessions, app.accounts))
    web_root.putChild(b"logout", LogoutResource(sessions))
    web_root.putChild(b"session", SessionResource(sessions))
    web_root.putChild(b"ws", SocketResource(sockets))
    web_root.html_root = page
    web_root.sessions = sessions
    web_root.sockets = sockets
    return []
