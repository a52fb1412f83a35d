"""HTTP plumbing shared by the REST, push and streaming resources: routing, request
parsing with a size cap, authentication, JSON responses, errors and CORS."""
from __future__ import annotations

import base64
import json
import re
from typing import Any, Awaitable, Callable
from urllib.parse import parse_qsl, unquote

from twisted.internet import defer
from twisted.logger import Logger
from twisted.web import resource, server

from flowtwist.model import ChatError, Source, Unauthorized, Unavailable, User

log = Logger()

MAX_BODY = 10 * 1024 * 1024       # uploads; JSON bodies are far smaller in practice
MAX_JSON_BODY = 1024 * 1024

CORS_HEADERS = {
    b"Access-Control-Allow-Methods": b"POST, PUT, PATCH, DELETE, GET, OPTIONS",
    b"Access-Control-Allow-Headers": (b"Origin, Accept, Content-type, Authorization, "
                                      b"X-CSRF-Token, X-Requested-With, X-Prototype-Version, "
                                      b"X-flowdock-wait-for-message, Last-Event-ID"),
    b"Access-Control-Expose-Headers": b"Flowdock-User, Link",
}


class HTTPError(ChatError):
    def __init__(self, status: int, message: str, errors=None):
        super().__init__(message, errors)
        self.status = status


class LimitedRequest(server.Request):
    """A request that stops buffering a body larger than MAX_BODY; the handler then
    answers 413 instead of the server holding the whole upload in memory."""
    too_large = False
    _received = 0

    def __init__(self, *args, **kwargs):
        # Bodies are parsed by body_params() alone: Twisted's own form parsing would
        # mix body fields into `args` (the query string), hold a second copy of every
        # upload, and answer a malformed multipart body with a bare 400 and a hang-up.
        kwargs.setdefault("parsePOSTFormSubmission", False)
        super().__init__(*args, **kwargs)

    def gotLength(self, length):
        if length is not None and length > MAX_BODY:
            self.too_large = True
            expect = self.requestHeaders.getRawHeaders(b"expect") or [b""]
            if expect[0].lower() == b"100-continue":
                # The client waits for leave to send the body: refuse it now rather
                # than read it.  (Others send the body anyway; it is read, dropped,
                # and answered 413 by the handler, so they see the reply.)
                self.requestHeaders.removeHeader(b"expect")
                body = json_bytes({"message": "Request entity too large"})
                self.channel.transport.write(
                    b"HTTP/1.1 413 Request Entity Too Large\r\n"
                    b"Content-Type: application/json; charset=utf-8\r\n"
                    b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body)
                self.channel.loseConnection()
            length = 0
        super().gotLength(length)

    def handleContentChunk(self, data):
        if self.too_large:
            return
        self._received += len(data)
        if self._received > MAX_BODY:
            self.too_large = True
            self.content.seek(0)
            self.content.truncate()
            return
        super().handleContentChunk(data)


def make_site(root: resource.Resource) -> server.Site:
    site = server.Site(root)
    site.requestFactory = LimitedRequest
    site.displayTracebacks = False
    site.log = lambda request: None     # access logs are costly at thousands of req/s
    return site


def json_bytes(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def header(request, name: str) -> str | None:
    value = request.getHeader(name)
    return value.decode("latin-1") if isinstance(value, bytes) else value


def query_params(request) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for key, values in request.args.items():
        key = key.decode("utf-8", "replace")
        params[key] = values[-1].decode("utf-8", "replace") if values else ""
    return params


def nest_form(pairs) -> dict[str, Any]:
    """Form keys with brackets (`thread[title]`, `author[name]`, `tags[]`) to dicts/lists."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        m = re.fullmatch(r"([^\[\]]+)((?:\[[^\[\]]*\])*)", key)
        if not m:
            out[key] = value
            continue
        parts = [m.group(1)] + re.findall(r"\[([^\[\]]*)\]", m.group(2))
        target = out
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            if part == "":
                continue
            nxt_is_list = not last and parts[i + 1] == ""
            if last or (nxt_is_list and i + 1 == len(parts) - 1):
                if nxt_is_list:
                    target.setdefault(part, [])
                    if isinstance(target[part], list):
                        target[part].append(value)
                else:
                    target[part] = value
                break
            child = target.get(part)
            if not isinstance(child, dict):
                child = target[part] = {}
            target = child
    return out


def body_params(request) -> dict[str, Any]:
    """The request body as parameters: JSON, urlencoded form or multipart."""
    if getattr(request, "too_large", False):
        raise HTTPError(413, "Request entity too large")
    request.content.seek(0)
    raw = request.content.read()
    if not raw:
        return {}
    ctype = (header(request, "content-type") or "").split(";")[0].strip().lower()
    if ctype in ("application/json", "text/json") or ctype.endswith("+json") or (
            not ctype and raw[:1] in (b"{", b"[")):
        if len(raw) > MAX_JSON_BODY:
            raise HTTPError(413, "Request entity too large")
        try:
            data = json.loads(raw, parse_constant=_no_constant)
        except (ValueError, UnicodeDecodeError, RecursionError):
            raise HTTPError(400, "Malformed JSON in request body")
        if not isinstance(data, dict):
            # Well-formed, but not something parameters can be read from.
            raise HTTPError(422, "Request body must be a JSON object")
        return data
    if ctype == "application/x-www-form-urlencoded":
        try:
            pairs = parse_qsl(raw.decode("utf-8"), keep_blank_values=True)
        except UnicodeDecodeError:
            raise HTTPError(400, "Form body is not UTF-8")
        return nest_form(pairs)
    if ctype == "multipart/form-data":
        return multipart_params(request, raw)
    raise HTTPError(415, "Unsupported content type; use application/json, "
                         "application/x-www-form-urlencoded or multipart/form-data")


def _no_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def multipart_params(request, raw: bytes) -> dict[str, Any]:
    import email.parser
    import email.policy
    ctype = header(request, "content-type") or ""
    msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + ctype.encode("latin-1") + b"\r\n\r\n" + raw)
    if not msg.is_multipart():
        raise HTTPError(400, "Malformed multipart body")
    pairs, files = [], {}
    for part in msg.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if not name:
            continue
        filename = part.get_filename()
        payload = part.get_payload(decode=True) or b""
        if filename is not None:
            files[name] = (payload, part.get_content_type(), filename)
        else:
            pairs.append((name, payload.decode("utf-8", "replace")))
    params = nest_form(pairs)
    if files:
        params["_files"] = files
    return params


def request_params(request) -> dict[str, Any]:
    """Body parameters merged with the query string; the query string wins."""
    params = body_params(request)
    params.update(query_params(request))
    return params


def basic_credentials(request) -> tuple[str, str] | None:
    auth = header(request, "authorization")
    if not auth or not auth.lower().startswith("basic "):
        return None
    try:
        decoded = base64.b64decode(auth[6:].strip(), validate=True).decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        raise Unauthorized("Malformed Authorization header")
    username, _, password = decoded.partition(":")
    # Emails embedded in URLs arrive percent-encoded (a%40b.c); passwords are literal.
    return unquote(username), password


def bearer_token(request) -> str | None:
    auth = header(request, "authorization")
    if auth and auth.lower().startswith("bearer "):
        return auth[7:].strip()
    values = request.args.get(b"access_token")
    return values[-1].decode("utf-8", "replace") if values else None


Handler = Callable[..., Awaitable[Any]]


class Response:
    """A handler's answer when it is not a plain 200 JSON body."""

    def __init__(self, status: int = 200, body: Any = None, headers: dict | None = None,
                 raw: bytes | None = None, content_type: str = "application/json; charset=utf-8"):
        self.status, self.body, self.headers = status, body, headers or {}
        self.raw, self.content_type = raw, content_type


class Router(resource.Resource):
    """Dispatch on method and path pattern to `async def handler(request, **groups)`.

    Every route is also served under `/v1` (the Ruby gem's prefix).  PATCH is an alias
    of PUT.  Unknown paths answer 404, known paths with another method 405.
    """
    isLeaf = True

    def __init__(self, auth: "Authenticator"):
        super().__init__()
        self.auth = auth
        self._routes: list[tuple[str, re.Pattern, Handler]] = []
        self._matches: dict[str, list[tuple[str, Handler, dict]]] = {}

    def route(self, method: str, pattern: str, handler: Handler) -> None:
        regex = re.sub(r":(\w+)", r"(?P<\1>[^/]+)", pattern.rstrip("/") or "/")
        self._routes.append((method, re.compile(f"^(?:/v1)?{regex}/?$"), handler))
        self._matches.clear()

    def matches(self, path: str) -> list[tuple[str, Handler, dict]]:
        """The routes whose pattern matches `path`, in order, with their path
        parameters.  Memoized per path (bounded): scanning the ~60 route patterns cost
        4-7 µs per POST /messages, the memo 0.2 µs."""
        found = self._matches.get(path)
        if found is None:
            found = []
            for route_method, regex, handler in self._routes:
                m = regex.match(path)
                if m:
                    found.append((route_method, handler,
                                  {k: _unquote(v) for k, v in m.groupdict().items()}))
            if len(self._matches) >= 4096:
                self._matches.clear()
            self._matches[path] = found
        return found

    def render(self, request):
        d = defer.ensureDeferred(self._dispatch(request))
        d.addErrback(lambda f: log.failure("unhandled error", f))
        return server.NOT_DONE_YET

    async def _dispatch(self, request) -> None:
        origin = header(request, "origin")
        if origin:
            request.setHeader(b"Access-Control-Allow-Origin", origin.encode("latin-1"))
            request.setHeader(b"Access-Control-Allow-Credentials", b"true")
            request.setHeader(b"Vary", b"Origin")
            request.setHeader(b"Access-Control-Expose-Headers",
                              CORS_HEADERS[b"Access-Control-Expose-Headers"])
        method = request.method.decode("ascii", "replace").upper()
        path = request.path.decode("utf-8", "replace")
        try:
            if method == "OPTIONS":
                for k, v in CORS_HEADERS.items():
                    request.setHeader(k, v)
                self._finish(request, Response(200, None, raw=b""))
                return
            if method == "PATCH":
                method = "PUT"
            allowed: list[str] = []
            for route_method, handler, kwargs in self.matches(path):
                allowed.append(route_method)
                if route_method != method and not (route_method == "GET" and method == "HEAD"):
                    continue
                result = await handler(request, **kwargs)
                self._finish(request, result)
                return
            if allowed:
                if "PUT" in allowed:
                    allowed.append("PATCH")
                request.setHeader(b"Allow", ", ".join(sorted(set(allowed))).encode())
                raise HTTPError(405, "Method not allowed")
            raise HTTPError(404, "not found")
        except ChatError as e:
            self._finish(request, error_response(e))
        except Exception:
            log.failure("error handling {method} {path}", method=method, path=path)
            self._finish(request, Response(500, {"message": "Internal server error"}))

    @staticmethod
    def _finish(request, result) -> None:
        if request._disconnected or request.finished:
            return
        if not isinstance(result, Response):
            result = Response(200, result)
        request.setResponseCode(result.status)
        for k, v in result.headers.items():
            request.setHeader(k, v)
        if result.status == 204:
            request.finish()
            return
        body = result.raw if result.raw is not None else json_bytes(
            {} if result.body is None else result.body)
        request.setHeader(b"Content-Type", result.content_type.encode())
        request.setHeader(b"Content-Length", str(len(body)).encode())
        if request.method != b"HEAD":
            request.write(body)
        request.finish()


def error_response(e: ChatError) -> Response:
    body: dict[str, Any] = {"message": e.message}
    if e.errors:
        body["errors"] = e.errors
    headers = {}
    if e.status == 401:
        headers[b"WWW-Authenticate"] = b'Basic realm="flowtwist"'
    return Response(e.status, body, headers)


def _unquote(value: str) -> str:
    return unquote(value)


class Authenticator:
    """Who is calling: a user (Basic, Bearer, access_token, session cookie) or a
    source (`flow_token`)."""

    def __init__(self, accounts, directory, sessions=None):
        self.accounts = accounts
        self.directory = directory
        self.sessions = sessions

    async def user(self, request, required: bool = True) -> User | None:
        user = None
        try:
            creds = basic_credentials(request)
            if creds is not None:
                user = await self.accounts.by_basic(*creds)
                if user is None:
                    raise Unauthorized("Invalid credentials")
            else:
                token = bearer_token(request)
                if token is not None:
                    user = await self.accounts.by_token(token)
                    if user is None:
                        raise Unauthorized("Invalid access token")
                elif self.sessions is not None:
                    user = await self.sessions.user_of(request)
        except ChatError:
            raise
        except Exception as e:      # a backend down: refuse rather than hang
            log.failure("authentication backend failed")
            raise Unavailable("Service temporarily unavailable") from e
        if user is None and required:
            raise Unauthorized("Authentication required")
        if user is not None:
            request.setHeader(b"Flowdock-User", str(user.id).encode())
        return user

    async def source(self, token: str) -> Source:
        from flowtwist.model import Gone, NotFound
        source = await self.directory.source_by_token(token)
        if source is None:
            raise NotFound("Unknown flow_token")
        if source.deleted:
            raise Gone("This source has been deleted")
        return source


def file_response(data: bytes, content_type: str) -> Response:
    return Response(200, raw=data, content_type=content_type)
