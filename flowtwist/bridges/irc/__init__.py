"""The IRC gateway: every flow is a channel, private conversations are queries.

Layout: wire.py (parsing, decoding, 512-byte lines), connection.py (one client:
throttling, keepalive, authentication, events in), commands.py (one method per IRC
command), render.py (one renderer per Flowdock event type), state.py (channels and
nicks of a connection).  This module is the listener: `IRCGateway` is the factory
shared by all connections, `irc_edge` registers it with the service.
"""
from __future__ import annotations

import os
import time
from importlib import metadata

from twisted.application import internet
from twisted.internet import endpoints, protocol

from flowtwist.bridges.irc.connection import IRCConnection, _EventView
from flowtwist.bridges.irc.fanout import FlowFanout
from flowtwist.model import Organization, User
from flowtwist.service import register_edge


def _version() -> str:
    try:
        return "flowtwist-" + metadata.version("flowtwist")
    except metadata.PackageNotFoundError:
        return "flowtwist"


class IRCGateway(protocol.Factory):
    """Shared by every IRC connection of this process: server identity, the MOTD,
    small caches, and the per-event render cache for fan-out."""

    def __init__(self, app, clock=None, motd_path: str | None = None):
        if clock is None:
            from twisted.internet import reactor as clock
        self.app = app
        self.clock = clock
        self.server_name = app.server_name
        self.network = app.server_name
        self.version = _version()
        self.started = time.time()
        self.created = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(self.started))
        self.motd_path = motd_path
        self.connections: set[IRCConnection] = set()
        self.known_users: dict[int, User] = {}
        self._orgs: dict[int, Organization] = {}
        self._render_event = None
        self._render_cache: dict = {}
        self._active: dict[int, int] = {}
        self.fanouts: dict[str, FlowFanout] = {}      # by hub channel ("flow:<id>")

    def presence_changed(self, user_id: int, active: bool) -> bool:
        """Count a user's active connections; True when the user as a whole turned
        active (first one) or idle (last one)."""
        count = self._active.get(user_id, 0) + (1 if active else -1)
        if count <= 0:
            self._active.pop(user_id, None)
            return not active
        self._active[user_id] = count
        return active and count == 1

    def subscribe_flow(self, channel: str, conn: IRCConnection) -> None:
        """Let a connection receive a flow's events, through the flow's fan-out."""
        fanout = self.fanouts.get(channel)
        if fanout is None:
            fanout = self.fanouts[channel] = FlowFanout(_EventView)
            self.app.pipeline.hub.add(channel, fanout)
        fanout.members[conn] = None

    def unsubscribe_flow(self, channel: str, conn: IRCConnection) -> None:
        fanout = self.fanouts.get(channel)
        if fanout is None:
            return
        fanout.members.pop(conn, None)
        if not fanout.members:
            del self.fanouts[channel]
            self.app.pipeline.hub.remove(channel, fanout)

    def buildProtocol(self, addr):
        return IRCConnection(self)

    def user_count(self) -> int:
        return len({c.user.id for c in self.connections if c.user is not None}) or 1

    def motd_lines(self) -> list[str] | None:
        if not self.motd_path:
            return None
        try:
            with open(self.motd_path, encoding="utf-8", errors="replace") as f:
                return [line.rstrip("\r\n") for line in f] or None
        except OSError:
            return None

    async def organization(self, org_id: int) -> Organization:
        org = self._orgs.get(org_id)
        if org is None:
            org = await self.app.directory.get_organization(org_id)
            self._orgs[org_id] = org
        return org

    async def load_user(self, user_id: int) -> User | None:
        user = await self.app.directory.get_user(user_id)
        if user is not None:
            if len(self.known_users) > 10_000:
                self.known_users.clear()
            self.known_users[user_id] = user
        return user

    def rendered(self, event, author: str, target: str, render) -> bytes:
        """The lines of one event for one author prefix and target, rendered once
        for all the connections that see it the same way."""
        if self._render_event is not event:
            self._render_event = event
            self._render_cache = {}
        key = (author, target)
        data = self._render_cache.get(key)
        if data is None:
            data = self._render_cache[key] = b"".join(render())
        return data


@register_edge
def irc_edge(app, settings, web_root, reactor):
    """The IRC listener for settings["irc"] (a Twisted endpoint string: tcp:6667,
    or ssl:6697:privateKey=key.pem:certKey=cert.pem for TLS); empty = off."""
    endpoint_string = settings.get("irc") or ""
    if not endpoint_string:
        return []
    motd = settings.get("irc-motd") or os.environ.get("FLOWTWIST_IRC_MOTD") or None
    gateway = IRCGateway(app, reactor, motd)
    service = internet.StreamServerEndpointService(
        endpoints.serverFromString(reactor, endpoint_string), gateway)
    service._raiseSynchronously = True
    service.setName("irc")
    return [service]
