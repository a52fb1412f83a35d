"""What one IRC connection knows once authenticated: its channels (the flows it can
see) and its roster (the nick it shows for every visible user)."""
from __future__ import annotations

import functools
from typing import Iterable

import attrs

from flowtwist.bridges.irc import wire
from flowtwist.model import Flow, FlowMember, Organization, User

RESERVED_NICKS = frozenset({"nickserv", "flowdock"})


def channel_name(org: Organization, flow: Flow) -> str:
    return f"#{org.parameterized_name}/{flow.parameterized_name}"


@attrs.define(slots=False)
class Channel:
    """A visible flow.  `open` is the membership's open flag: joined on IRC."""
    flow: Flow
    org: Organization
    member: bool                 # a (non-blocked) member, or only organisation-visible
    open: bool
    members: list[tuple[User, FlowMember]] = attrs.Factory(list)

    @functools.cached_property
    def name(self) -> str:
        return channel_name(self.org, self.flow)

    @functools.cached_property
    def key(self) -> str:
        return wire.irc_lower(self.name)

    @property
    def topic(self) -> str:
        return f"{self.flow.name} ({self.org.name})"

    def active_users(self) -> list[User]:
        """Non-disabled members by ascending id."""
        return sorted((u for u, m in self.members if not (m.disabled or u.disabled)),
                      key=lambda u: u.id)

    def has_user(self, user_id: int) -> bool:
        return any(u.id == user_id for u in self.active_users())


class Roster:
    """Per-connection nicks: the own nick never changes; others keep theirs in
    ascending id order; a later colliding one gets the smallest free suffix."""

    def __init__(self, me: User):
        self.me = me
        self.users: dict[int, User] = {me.id: me}
        self.nicks: dict[int, str] = {}
        self.by_nick: dict[str, int] = {}
        self.hosts: dict[int, str] = {}     # `nick!email` by user id, for rendering
        self._by_event_id: dict = {}
        self.rebuild([])

    def rebuild(self, users: Iterable[User]) -> list[tuple[int, str, str]]:
        """Recompute nicks for these users (plus self); returns (id, old, new) for
        users whose nick changed."""
        old = dict(self.nicks)
        self.users = {u.id: u for u in users if not u.disabled}
        self.users[self.me.id] = self.me
        bases = {uid: wire.irc_nick(u.nick) for uid, u in self.users.items()}
        all_bases = {wire.irc_lower(b) for b in bases.values()} | RESERVED_NICKS
        nicks = {self.me.id: bases[self.me.id]}
        taken = {wire.irc_lower(bases[self.me.id])} | RESERVED_NICKS
        for uid in sorted(self.users):
            if uid == self.me.id:
                continue
            nick = bases[uid]
            if wire.irc_lower(nick) in taken:
                n = 2
                while wire.irc_lower(f"{bases[uid]}{n}") in taken | all_bases:
                    n += 1
                nick = f"{bases[uid]}{n}"
            nicks[uid] = nick
            taken.add(wire.irc_lower(nick))
        self.nicks = nicks
        self.hosts = {}
        self._by_event_id = {}
        self.by_nick = {wire.irc_lower(n): uid for uid, n in nicks.items()}
        return [(uid, old[uid], nicks[uid]) for uid in nicks
                if uid in old and old[uid] != nicks[uid]]

    def nick(self, user_id: int) -> str | None:
        return self.nicks.get(user_id)

    def find(self, nick: str) -> User | None:
        uid = self.by_nick.get(wire.irc_lower(nick))
        return self.users.get(uid) if uid is not None else None

    def host_by_id(self, user_id) -> str | None:
        """The host of a known user by the id as events carry it ("42"), or None."""
        host = self._by_event_id.get(user_id)
        if host is None:
            try:
                user = self.users.get(int(user_id))
            except (TypeError, ValueError):
                return None
            if user is None:
                return None
            host = self._by_event_id[user_id] = self.host(user)
        return host

    def host(self, user: User) -> str:
        host = self.hosts.get(user.id)
        if host is None or self.users.get(user.id) is not user:
            host = f"{self.nicks.get(user.id) or wire.irc_nick(user.nick)}!{user.email}"
            if self.users.get(user.id) is user:
                self.hosts[user.id] = host
        return host
