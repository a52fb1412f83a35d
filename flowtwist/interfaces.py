"""The ports: what the pipeline and the edges need from the bus and the stores.

Each role has an embedded implementation (in-process bus, SQLite stores) and a
production one (Redis, MongoDB, PostgreSQL).  The same contract tests run against both
(tests/contract_*.py).  Every method that touches I/O returns an awaitable.

Message documents are dicts in the wire shape of the API spec, plus two internal keys
that never leave the server: `conversation` (a flow id, or `private:<lo>:<hi>`) and
`seq` (a server-wide increasing position, used as the SSE event id).
"""
from __future__ import annotations

from typing import Any, Awaitable, Callable, Iterable, Protocol

from flowtwist.model import (Flow, FlowMember, Invitation, Organization, Source,
                             User)

Doc = dict[str, Any]


class Bus(Protocol):
    """A durable at-least-once queue, and publish/subscribe fan-out between processes."""

    def enqueue(self, item: Doc, key: str | None = None) -> Awaitable[None]:
        """Accept an item; once this resolves the item survives a consumer crash.
        Items with the same `key` (the pipeline passes the conversation) are consumed
        in order, one batch at a time; items of different keys may be consumed in
        parallel, by different processes."""

    def consume(self, handler: Callable[[list[Doc]], Awaitable[None]]) -> None:
        """Start calling `handler` with batches of queued items, one batch at a time.
        An item is acknowledged only after the handler's awaitable succeeds; items
        of a failed batch are retried (and dead-lettered after repeated failures)."""

    def publish(self, channel: str, payload: bytes) -> Awaitable[None]:
        """Send `payload` to every process subscribed to `channel`."""

    def subscribe(self, channel: str, receiver: Callable[[str, bytes], None]) -> None:
        """Call `receiver(channel, payload)` for what is published on `channel`."""

    def unsubscribe(self, channel: str, receiver: Callable[[str, bytes], None]) -> None:
        ...

    def on_gap(self, callback: Callable[[], None]) -> None:
        """Call `callback` after a reconnect, when messages may have been missed;
        listeners then catch up from the store by their last seen id."""

    def start(self) -> Awaitable[None]:
        ...

    def stop(self) -> Awaitable[None]:
        ...


class MessageStore(Protocol):
    """History: messages, edits, threads.  Ids are per conversation and increasing."""

    def insert_many(self, docs: list[Doc]) -> Awaitable[list[tuple[Doc, bool]]]:
        """Store new messages in order, assigning `id` (per conversation) and `seq`
        (server-wide).  Where a message with the same conversation and `uuid`
        exists, store nothing and return the stored one with created=False.
        A new message whose `thread` dict has `initial_message` None gets its own id
        there (it starts that thread)."""

    def get(self, conversation: str, message_id: int) -> Awaitable[Doc | None]:
        ...

    def find_uuid(self, conversation: str, uuid: str) -> Awaitable[Doc | None]:
        ...

    def update(self, conversation: str, message_id: int, changes: Doc) -> Awaitable[Doc | None]:
        """Set top-level fields of a stored message; returns the new document."""

    def remove(self, conversation: str, message_id: int) -> Awaitable[bool]:
        ...

    def query(self, conversation: str, *, events: list[str] | None = None,
              limit: int = 30, newest_first: bool = True,
              since_id: int | None = None, until_id: int | None = None,
              tags: list[str] | None = None, tag_mode: str = "and",
              search: list[str] | None = None, skip: int = 0,
              thread_id: str | None = None) -> Awaitable[list[Doc]]:
        """Matching messages, always returned in ascending id order."""

    def after_seq(self, conversations: Iterable[str], seq: int,
                  limit: int = 1000) -> Awaitable[list[Doc]]:
        """Messages of these conversations with `seq` greater than the given one,
        in seq order (for resuming a stream)."""

    def last_seq(self) -> Awaitable[int]:
        ...

    def save_thread(self, thread: Doc) -> Awaitable[None]:
        """Insert or replace a thread (keyed by its `id`)."""

    def get_thread(self, thread_id: str) -> Awaitable[Doc | None]:
        ...

    def find_external_thread(self, source_key: str, external_id: str) -> Awaitable[Doc | None]:
        ...

    def list_threads(self, flow_id: str, *, until: int | None = None,
                     since: int | None = None, limit: int = 30,
                     application: str | None = None,
                     include_empty: bool = False) -> Awaitable[list[Doc]]:
        """Threads of a flow by `updated_at` descending."""

    def start(self) -> Awaitable[None]:
        ...

    def stop(self) -> Awaitable[None]:
        ...


class Directory(Protocol):
    """Organizations, users, flows, memberships, tokens, sources, invitations."""

    # organizations
    def create_organization(self, name: str, parameterized_name: str | None = None) -> Awaitable[Organization]: ...
    def get_organization(self, org_id: int) -> Awaitable[Organization | None]: ...
    def organization_by_name(self, parameterized_name: str) -> Awaitable[Organization | None]: ...
    def organizations(self) -> Awaitable[list[Organization]]: ...
    def rename_organization(self, org_id: int, name: str) -> Awaitable[Organization]: ...
    def organizations_of(self, user_id: int) -> Awaitable[list[Organization]]: ...
    def add_org_member(self, org_id: int, user_id: int, admin: bool = False) -> Awaitable[None]: ...
    def remove_org_member(self, org_id: int, user_id: int) -> Awaitable[None]: ...
    def org_members(self, org_id: int) -> Awaitable[list[tuple[User, bool]]]:
        """(user, admin) pairs."""

    # users
    def create_user(self, email: str, nick: str, name: str, password_hash: str) -> Awaitable[User]: ...
    def get_user(self, user_id: int) -> Awaitable[User | None]: ...
    def user_by_email(self, email: str) -> Awaitable[User | None]: ...
    def user_by_token(self, token: str) -> Awaitable[User | None]: ...
    def users(self) -> Awaitable[list[User]]: ...
    def update_user(self, user_id: int, **fields: Any) -> Awaitable[User]:
        """Set nick, email, name, avatar, website, password_hash, disabled."""

    # flows
    def create_flow(self, org_id: int, name: str, access_mode: str = "organization") -> Awaitable[Flow]: ...
    def get_flow(self, flow_id: str) -> Awaitable[Flow | None]: ...
    def flow_by_name(self, org_name: str, flow_name: str) -> Awaitable[Flow | None]: ...
    def flow_by_token(self, api_token: str) -> Awaitable[Flow | None]: ...
    def flows_of_org(self, org_id: int) -> Awaitable[list[Flow]]: ...
    def update_flow(self, flow_id: str, **fields: Any) -> Awaitable[Flow]:
        """Set name, parameterized_name, access_mode, disabled, description."""

    # flow memberships
    def add_flow_member(self, flow_id: str, user_id: int) -> Awaitable[None]: ...
    def remove_flow_member(self, flow_id: str, user_id: int) -> Awaitable[None]: ...
    def flow_members(self, flow_id: str) -> Awaitable[list[tuple[User, FlowMember]]]: ...
    def memberships_of(self, user_id: int) -> Awaitable[list[FlowMember]]: ...
    def get_membership(self, flow_id: str, user_id: int) -> Awaitable[FlowMember | None]: ...
    def update_membership(self, flow_id: str, user_id: int, **fields: Any) -> Awaitable[None]:
        """Set disabled, status, last_activity, open."""

    # private conversations: per (owner, other) the `open` flag
    def private_open(self, user_id: int, other_id: int) -> Awaitable[bool | None]: ...
    def set_private_open(self, user_id: int, other_id: int, open: bool) -> Awaitable[None]: ...
    def private_partners(self, user_id: int) -> Awaitable[list[int]]: ...

    # sources (integrations)
    def create_source(self, flow_id: str, name: str, creator_id: int | None,
                      external_url: str = "") -> Awaitable[Source]: ...
    def get_source(self, source_id: int) -> Awaitable[Source | None]: ...
    def source_by_token(self, flow_token: str) -> Awaitable[Source | None]:
        """Deleted sources are returned too (with deleted=True) so posts get 410."""
    def sources_of_flow(self, flow_id: str) -> Awaitable[list[Source]]: ...
    def update_source(self, source_id: int, **fields: Any) -> Awaitable[Source]: ...
    def delete_source(self, source_id: int) -> Awaitable[None]: ...

    # invitations
    def create_invitation(self, flow_id: str, email: str, message: str = "") -> Awaitable[Invitation]: ...
    def get_invitation(self, invitation_id: int) -> Awaitable[Invitation | None]: ...
    def invitations_of_flow(self, flow_id: str) -> Awaitable[list[Invitation]]: ...
    def delete_invitation(self, invitation_id: int) -> Awaitable[None]: ...

    # feed subscriptions of flows (RSS/Atom, Twitter) and their pollers' state.
    # A feed is a dict: {"id": int, "flow": flow id, "kind": "rss" | "twitter_search" |
    # "twitter_follow", "target": URL, search query or screen name, "creator": user id
    # or None, "created_at": ms, "announced": bool (its add action was posted),
    # "removed": bool (to be removed, its remove action not yet posted), "state": dict
    # (the poller's own: validators, since_id, failures, seen entry ids; opaque here)}.
    def create_feed(self, flow_id: str, kind: str, target: str, creator_id: int | None,
                    announced: bool = True) -> Awaitable[tuple[Doc, bool]]:
        """(feed, created): an existing subscription with the same flow, kind and
        target is returned as it is (created False; a removed one is revived)."""
    def get_feed(self, feed_id: int) -> Awaitable[Doc | None]: ...
    def feeds(self, flow_id: str | None = None) -> Awaitable[list[Doc]]:
        """Subscriptions of one flow, or of all flows; by id."""
    def update_feed(self, feed_id: int, **fields: Any) -> Awaitable[None]:
        """Set announced, removed, state (replaced whole)."""
    def delete_feed(self, feed_id: int) -> Awaitable[None]: ...

    # key/value settings
    def get_setting(self, key: str) -> Awaitable[Any]: ...
    def set_setting(self, key: str, value: Any) -> Awaitable[None]: ...

    def start(self) -> Awaitable[None]: ...
    def stop(self) -> Awaitable[None]: ...
