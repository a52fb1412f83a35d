"""makeService: the flowtwist MultiService built from the options.

The App service starts the stores, the bus and the queue consumer first; the
listeners (web, stream, and the bridges that register themselves in EDGES) start
only once those are up, so no request ever meets a half-started backend.
"""
from __future__ import annotations

import gc
import os
import secrets
import sys

from twisted.application import internet, service
from twisted.internet import defer, endpoints
from twisted.logger import Logger
from twisted.web import resource

from flowtwist import backends
from flowtwist.accounts import hash_password
from flowtwist.api.http import Authenticator, make_site
from flowtwist.api.rest import RestApi
from flowtwist.api.stream import StreamResource
from flowtwist.app import App
from flowtwist.options import Options, url_of  # noqa: F401 (twistd reads Options here)

log = Logger()

WEB_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "web")


class WebRoot(resource.Resource):
    """The HTTP port: REST API at the root, streaming under /stream, and further
    children (web app, WebSocket) that other modules attach with putChild."""

    def __init__(self, rest: resource.Resource, stream: resource.Resource):
        super().__init__()
        self.rest = rest
        self.putChild(b"stream", stream)

    html_root: resource.Resource | None = None     # the web app, for browsers at `/`

    def getChild(self, name, request):
        if name == b"" and self.html_root is not None and not request.postpath \
                and request.method in (b"GET", b"HEAD") \
                and b"text/html" in (request.getHeader(b"accept") or b""):
            return self.html_root
        return self.rest


def build_app(settings: dict, reactor=None) -> App:
    stream_url = settings["stream-url"] or (url_of(settings["stream"]) if settings["stream"]
                                            else url_of(settings["http"]) + "/stream")
    return App.assemble(
        backends.build_bus(settings, reactor), backends.build_store(settings, reactor),
        backends.build_directory(settings, reactor), settings["data"], reactor,
        public_url=(settings["public-url"] or url_of(settings["http"] or "tcp:8080")).rstrip("/"),
        stream_url=stream_url.rstrip("/"), server_name=settings["server-name"])


def build_web(app: App, settings: dict | None = None):
    """The web port's resource tree and the stream port's resource."""
    auth = Authenticator(app.accounts, app.directory)
    mail = None
    if settings and settings.get("smtp"):      # flows show their address when mail is on
        from flowtwist.bridges.email import FlowAddresses
        mail = FlowAddresses.from_settings(settings)
    rest = RestApi(app, auth, mail_addresses=mail)
    root = WebRoot(rest.router, StreamResource(app, auth, prefix=b"/stream"))
    return root, StreamResource(app, auth), auth


# Other edges (WebSocket, web app, IRC, SMTP, feeds) add themselves here: each is a
# function (app, settings, web_root, reactor) -> list of services (maybe empty).
EDGES: list = []


def register_edge(fn):
    EDGES.append(fn)
    return fn


class FlowtwistService(service.MultiService):
    def __init__(self, settings: dict, reactor=None):
        super().__init__()
        if reactor is None:
            from twisted.internet import reactor
        self.reactor = reactor
        self.settings = settings
        self.app = build_app(settings, reactor)
        self.web_root, self.stream_root, self.auth = build_web(self.app, settings)
        self.listeners = service.MultiService()
        self.started = defer.Deferred()

    def listen(self, option: str, factory) -> None:
        value = self.settings[option]
        if value:
            endpoint = endpoints.serverFromString(self.reactor, value)
            svc = internet.StreamServerEndpointService(endpoint, factory)
            svc._raiseSynchronously = True
            svc.setName(option)
            svc.setServiceParent(self.listeners)

    def startService(self):
        service.Service.startService(self)
        d = defer.ensureDeferred(self._start())
        d.addErrback(self._failed)

    async def _start(self):
        await self.app.start()
        await bootstrap_demo(self.app, self.settings)
        self.listen("http", make_site(self.web_root))
        self.listen("stream", make_site(self.stream_root))
        _import_edges()
        for edge in EDGES:
            for svc in edge(self.app, self.settings, self.web_root, self.reactor) or ():
                svc.setServiceParent(self.listeners)
        self.listeners.setServiceParent(self)
        StreamResource.start_timers(self.reactor)
        self._print_urls()
        tune_gc()
        self.started.callback(self)

    def _failed(self, failure):
        log.failure("flowtwist could not start", failure)
        print(f"flowtwist: could not start: {failure.getErrorMessage()}", file=sys.stderr)
        if self.reactor.running:
            self.reactor.stop()

    def _print_urls(self):
        s = self.settings
        lines = [f"flowtwist is running (data in {os.path.abspath(s['data'])})"]
        if s["http"]:
            lines.append(f"  web app and REST API: {self.app.public_url}/")
        lines.append(f"  streaming API:        {self.app.stream_url}/flows")
        if s["irc"]:
            lines.append(f"  IRC:                  {url_of(s['irc'], 'irc')}")
        if s["smtp"]:
            lines.append(f"  SMTP:                 {url_of(s['smtp'], 'smtp')}")
        for line in lines:
            print(line, flush=True)

    def stopService(self):
        d = defer.maybeDeferred(service.MultiService.stopService, self)
        StreamResource.stop_timers()
        for listener in list(StreamResource.open_streams):
            listener.close(abort=True)
        d.addBoth(lambda _: defer.ensureDeferred(self.app.stop()))
        return d


def tune_gc() -> None:
    """Keep the cyclic garbage collector off the message path.

    What exists once the service has started (modules, caches, the directory's
    records) lives as long as the process: gc.freeze() takes it out of every later
    collection.  And each message allocates many short-lived dicts, Deferreds and
    coroutines, nearly all freed by reference counting: collecting the young generation
    every 10,000 net allocations instead of every 700 (the default) keeps the same
    guarantees at a fraction of the cost.  bench/ (10 s at ~1,800 msg/s): the collector
    ran ~2,000 times for ~0.65 s, pauses up to 37 ms; now ~150 times for ~0.1 s.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 20, 20)


def _import_edges():
    """Import the optional edge modules so that they register themselves."""
    import importlib
    for name in ("flowtwist.websocket", "flowtwist.webapp", "flowtwist.bridges.irc",
                 "flowtwist.bridges.email", "flowtwist.bridges.rss",
                 "flowtwist.bridges.twitter"):
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name != name:
                raise


async def bootstrap_demo(app: App, settings: dict) -> None:
    """On first start with an empty directory, create a demo organization, flows and
    two users, and print how to sign in (also kept in data/demo-credentials.txt)."""
    if settings["demo"] == "no" or await app.directory.organizations():
        return
    org = await app.directory.create_organization("Demo")
    main = await app.directory.create_flow(org.id, "Main")
    random = await app.directory.create_flow(org.id, "Random")
    lines = ["flowtwist demo accounts (created on first start):"]
    for email, nick, name, admin in (("demo@example.com", "demo", "Demo Admin", True),
                                     ("friend@example.com", "friend", "Demo Friend", False)):
        password = secrets.token_urlsafe(9)
        user = await app.directory.create_user(email, nick, name, hash_password(password))
        await app.directory.add_org_member(org.id, user.id, admin)
        for flow in (main, random):
            await app.directory.add_flow_member(flow.id, user.id)
        lines.append(f"  {email} / password {password}  (API token {user.api_token})")
    lines.append(f"  organization '{org.parameterized_name}', flows 'main' and 'random'")
    path = os.path.join(settings["data"], "demo-credentials.txt")
    os.makedirs(settings["data"], exist_ok=True)
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    os.chmod(path, 0o600)
    for line in lines:
        print(line, flush=True)


def makeService(options) -> service.Service:
    return FlowtwistService(dict(options))
