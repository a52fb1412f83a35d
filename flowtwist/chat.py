"""What people and integrations can do: see flows, post, comment, edit, delete.

This is the logic layer between the edges (REST, stream, WebSocket, IRC, SMTP,
feeds) and the pipeline.  It checks who may do what, validates and normalises
messages into queue items, and reads history.  It knows no protocol.
"""
from __future__ import annotations

import base64
import hashlib
import re
from typing import Any

import attrs

from flowtwist import tags as tagging
from flowtwist.html import sanitize
from flowtwist.accounts import TTLCache
from flowtwist.interfaces import Directory, Doc, MessageStore
from flowtwist.model import (MAX_CONTENT, POSTABLE_EVENTS, Flow, FlowMember, Forbidden,
                             NotFound, Source, Unprocessable, User, ValidationError,
                             flow_channel,
                             new_uuid, now_ms, private_key)
from flowtwist.pipeline import Pipeline

THREAD_STATUS_COLORS = frozenset(
    "red green yellow cyan orange grey black lime purple blue".split())


@attrs.frozen
class Actor:
    """Who is posting: a user, or an integration source (then `user` is "0")."""
    user: User | None = None
    source: Source | None = None
    external_user_name: str | None = None

    @property
    def user_id(self) -> str:
        return str(self.user.id) if self.user else "0"


def invalid(field: str, problem: str) -> ValidationError:
    return ValidationError({field: [problem]})


def wrong_type(field: str, problem: str) -> Unprocessable:
    """A parameter that must be an object and is not: 422, unlike a bad value (400)."""
    return Unprocessable("Unprocessable entity", {field: [problem]})


def only_links(markup: str) -> str:
    """Integration titles and thread field values: text with `<a>` links only."""
    return re.sub(r"<(?!/?a[\s>])[^>]*>", "", sanitize(markup))


def writable(flow: Flow) -> None:
    if flow.disabled:
        raise Unprocessable("This flow is archived")


class Chat:
    def __init__(self, directory: Directory, store: MessageStore, pipeline: Pipeline,
                 files=None, cache_ttl: float = 5.0):
        self.directory = directory
        self.store = store
        self.pipeline = pipeline
        self.files = files
        # Membership lists are read on every post (mentions, access); cached briefly.
        self._members = TTLCache(cache_ttl)
        self._flows = TTLCache(cache_ttl)

    # ------------------------------------------------------------ access

    def forget_flow(self, flow_id: str) -> None:
        self._members.discard(flow_id)
        self._flows.discard(flow_id)

    async def flow(self, flow_id: str) -> Flow | None:
        flow = self._flows.get(flow_id)
        if flow is None:
            flow = await self.directory.get_flow(flow_id)
            if flow is not None:
                self._flows.put(flow_id, flow)
        return flow

    async def members(self, flow_id: str) -> list[tuple[User, FlowMember]]:
        members = self._members.get(flow_id)
        if members is None:
            members = await self.directory.flow_members(flow_id)
            self._members.put(flow_id, members)
        return members

    async def membership(self, flow_id: str, user_id: int) -> FlowMember | None:
        for user, member in await self.members(flow_id):
            if user.id == user_id:
                return member
        return None

    async def visible_flow(self, user: User, flow_id: str) -> Flow:
        """The flow if the user is an enabled member; NotFound otherwise (a user never
        learns that a flow they cannot see exists)."""
        flow = await self.flow(flow_id)
        if flow is None:
            raise NotFound()
        member = await self.membership(flow.id, user.id)
        if member is None:
            raise NotFound()
        if member.disabled:
            raise Forbidden("You have been blocked from this flow")
        return flow

    async def flow_by_path(self, user: User, org: str, name: str) -> Flow:
        flow = await self.directory.flow_by_name(org, name)
        if flow is None:
            raise NotFound()
        return await self.visible_flow(user, flow.id)

    async def resolve_flow_ref(self, user: User, ref: str) -> Flow:
        """A stream filter entry: a flow id, `org/flow` or legacy `org:flow`."""
        for sep in ("/", ":"):
            if sep in ref:
                org, _, name = ref.partition(sep)
                flow = await self.directory.flow_by_name(org, name)
                if flow is not None:
                    return await self.visible_flow(user, flow.id)
        return await self.visible_flow(user, ref)

    async def joined_flows(self, user: User) -> list[Flow]:
        flows = []
        for member in await self.directory.memberships_of(user.id):
            flow = await self.flow(member.flow_id)
            if flow is not None and not member.disabled:
                flows.append(flow)
        return sorted(flows, key=lambda f: (f.organization_id, f.name.lower()))

    async def all_flows(self, user: User) -> list[tuple[Flow, bool]]:
        """Joined flows and the organization-visible flows one could join."""
        joined = {f.id for f in await self.joined_flows(user)}
        out = []
        for org in await self.directory.organizations_of(user.id):
            for flow in await self.directory.flows_of_org(org.id):
                if flow.id in joined:
                    out.append((flow, True))
                elif flow.access_mode == "organization" and not flow.disabled:
                    out.append((flow, False))
        return out

    async def shares_org(self, user: User, other_id: int) -> bool:
        mine = {o.id for o in await self.directory.organizations_of(user.id)}
        theirs = {o.id for o in await self.directory.organizations_of(other_id)}
        return bool(mine & theirs)

    async def private_peer(self, user: User, other_id: Any) -> User:
        try:
            other_id = int(other_id)
        except (TypeError, ValueError):
            raise NotFound()
        other = await self.directory.get_user(other_id)
        if other is None or not (other_id == user.id or await self.shares_org(user, other_id)):
            raise NotFound()
        return other

    # ------------------------------------------------------------ posting

    async def post(self, actor: Actor, flow: Flow, params: dict, wait: bool = True) -> Doc | None:
        """Validate a posted event for a flow and put it through the pipeline."""
        event = params.get("event")
        if not event:
            raise invalid("event", "can't be blank")
        if not isinstance(event, str) or event not in POSTABLE_EVENTS or event == "comment":
            raise invalid("event", "is not a valid event type")
        writable(flow)
        members = await self.members(flow.id)
        doc = self._base_doc(actor, params, flow.id)
        doc.update(flow=flow.id, event=event)
        mentionable = [(u.id, u.nick) for u, m in members if not (m.disabled or u.disabled)]
        if event in ("message", "status", "line"):
            doc["content"] = self._text(params)
            doc["tags"] = tagging.build_tags(doc["content"], self._param_tags(params),
                                             mentionable)
        elif event == "file":
            await self._file(doc, params, flow.id)
            doc["tags"] = tagging.dedupe(
                tagging.build_tags(None, self._param_tags(params), mentionable) + [":file"])
        else:   # activity, discussion
            self._integration_fields(doc, params)
            await self._attachments(doc, params, flow.id)
            doc["tags"] = tagging.build_tags(None, self._param_tags(params), mentionable)
            if doc["attachments"]:
                doc["tags"] = tagging.dedupe(doc["tags"] + [":file"])
        if actor.source is not None:
            doc["app"] = "influx"
        await self._place_in_thread(doc, actor, params, flow)
        if event == "status" and actor.user is not None:
            await self.directory.update_membership(flow.id, actor.user.id,
                                                   status=doc["content"])
            self._members.discard(flow.id)
        return await self.pipeline.submit({"op": "post", "doc": doc}, wait)

    async def comment(self, actor: Actor, flow: Flow, parent_id: Any, params: dict,
                      wait: bool = True) -> Doc | None:
        try:
            parent_id = int(parent_id)
        except (TypeError, ValueError):
            raise invalid("message", "must be a message id")
        writable(flow)
        parent = await self.store.get(flow.id, parent_id)
        if parent is None:
            raise NotFound()
        if parent["event"] == "comment":
            raise invalid("message", "can't comment on a comment")
        text = self._text(params)
        members = await self.members(flow.id)
        mentionable = [(u.id, u.nick) for u, m in members if not (m.disabled or u.disabled)]
        doc = self._base_doc(actor, params, flow.id)
        title = (parent.get("thread") or {}).get("title") or _title_of(parent)
        doc.update(flow=flow.id, event="comment", content={"title": title, "text": text})
        doc["tags"] = tagging.dedupe(
            tagging.build_tags(text, self._param_tags(params), mentionable)
            + [f"influx:{parent_id}"])
        if parent.get("thread_id"):
            doc["thread_id"] = parent["thread_id"]
            doc["thread"] = await self._thread_snapshot(parent["thread_id"], parent)
        return await self.pipeline.submit({"op": "post", "doc": doc}, wait)

    async def post_private(self, user: User, other: User, params: dict,
                           wait: bool = True) -> Doc | None:
        event = params.get("event") or "message"
        if event not in ("message", "line", "file"):
            raise invalid("event", "is not a valid event type")
        conversation = private_key(user.id, other.id)
        doc = self._base_doc(Actor(user=user), params, conversation)
        doc.update(event=event, to=str(other.id))
        if event == "file":
            await self._file(doc, params, conversation)
            doc["tags"] = [":file"]
        else:
            doc["content"] = self._text(params)
            doc["tags"] = tagging.dedupe(
                self._plain_param_tags(params) + [f":unread:{other.id}"])
        await self.directory.set_private_open(other.id, user.id, True)
        if await self.directory.private_open(user.id, other.id) is None:
            await self.directory.set_private_open(user.id, other.id, True)
        return await self.pipeline.submit({"op": "post", "doc": doc}, wait)

    async def post_inbox(self, flow: Flow, event: str, content: Doc, tags: list[str],
                         title: str = "", uuid: str | None = None,
                         thread_key: str | None = None, wait: bool = True) -> Doc | None:
        """A team-inbox item from a bridge (mail, rss, twitter, push): `app` influx,
        `user` "0".  A stable `uuid` (say a Message-ID or feed entry id) makes a
        repeated delivery a no-op.  Items with the same `thread_key` share a thread."""
        doc: Doc = {"conversation": flow.id, "flow": flow.id, "event": event,
                    "content": content, "tags": tagging.dedupe(tags), "user": "0",
                    "uuid": uuid or new_uuid(), "app": "influx", "attachments": [],
                    "edited": None}
        if content.get("attachments"):
            doc["attachments"] = content["attachments"]
        thread_id = "i" + hashlib.sha256(
            f"{flow.id}\0{thread_key or doc['uuid']}".encode()).hexdigest()[:24]
        thread = await self.store.get_thread(thread_id)
        if thread is None:
            thread = self._new_thread(thread_id, flow, doc)
            thread.update(title=title or _title_of(doc), _application="inbox")
        doc["thread_id"] = thread_id
        doc["thread"] = thread
        return await self.pipeline.submit({"op": "post", "doc": doc}, wait)

    async def post_action(self, user: User, flow: Flow, type_: str, description: Any) -> None:
        """A server `action` event in a flow (join, add_people, add_rss_feed, ...)."""
        doc: Doc = {"conversation": flow.id, "flow": flow.id, "event": "action",
                    "content": {"type": type_, "description": description},
                    "tags": [], "user": str(user.id), "uuid": new_uuid(), "app": None,
                    "attachments": [], "edited": None}
        await self.pipeline.submit({"op": "post", "doc": doc}, wait=True)

    # ------------------------------------------------------------ membership

    async def add_members(self, by: User, flow: Flow, users: list[User]) -> list[User]:
        """Add users to a flow and tell everyone: an `action` in the flow (`join` when
        people add themselves, else `add_people` with their nicks) and a `flow-add`
        to each person added.  Returns those who were not members yet."""
        current = {u.id for u, _ in await self.members(flow.id)}
        added = [u for u in users if u.id not in current]
        if not added:
            return []
        for user in added:
            await self.directory.add_flow_member(flow.id, user.id)
        self.forget_flow(flow.id)
        if [u.id for u in added] == [by.id]:
            await self.post_action(by, flow, "join", "")
        else:
            await self.post_action(by, flow, "add_people", ", ".join(u.nick for u in added))
        summary = await self._flow_summary(flow)
        for user in added:
            await self._tell_user(user.id, by.id, "flow-add", summary)
        return added

    async def flows_lost(self, user_id: int, flows: list[Flow]) -> None:
        """Tell a user they no longer have these flows (`flow-remove`)."""
        for flow in flows:
            self.forget_flow(flow.id)
            await self._tell_user(user_id, user_id, "flow-remove", {"id": flow.id})

    async def _flow_summary(self, flow: Flow) -> Doc:
        org = await self.directory.get_organization(flow.organization_id)
        return {"id": flow.id, "name": flow.name, "open": True,
                "organization": {"id": org.id, "name": org.name,
                                 "parameterized_name": org.parameterized_name}}

    async def _tell_user(self, user_id: int, by_id: int, event: str, content: Any) -> None:
        """An event for one person only, on their user channel (not stored)."""
        await self.pipeline.publish_transient({
            "conversation": private_key(user_id, user_id), "event": event,
            "user": by_id, "content": content, "tags": [], "sent": now_ms()})

    def _base_doc(self, actor: Actor, params: dict, conversation: str) -> Doc:
        uuid = params.get("uuid")
        if uuid == "":
            uuid = None     # a blank uuid is no uuid (it must never dedupe two posts)
        if uuid is not None and (not isinstance(uuid, (str, int)) or isinstance(uuid, bool)
                                 or len(str(uuid)) > 100):
            raise invalid("uuid", "is invalid")
        doc: Doc = {
            "conversation": conversation, "user": actor.user_id, "content": None,
            "tags": [], "uuid": str(uuid) if uuid is not None else new_uuid(),
            "app": "chat", "attachments": [], "edited": None,
        }
        name = params.get("external_user_name") or actor.external_user_name
        if name:
            if not isinstance(name, str) or len(name) > 100:
                raise invalid("external_user_name", "is invalid")
            doc["external_user_name"] = name
        return doc

    @staticmethod
    def _text(params: dict) -> str:
        content = params.get("content")
        if isinstance(content, (int, float)) and not isinstance(content, bool):
            content = str(content)
        if not isinstance(content, str) or not content.strip():
            raise invalid("content", "can't be blank")
        if len(content) > MAX_CONTENT:
            raise invalid("content", f"is too long (maximum is {MAX_CONTENT} characters)")
        return content

    @staticmethod
    def _param_tags(params: dict) -> list[str]:
        try:
            return tagging.split_param(params.get("tags"))
        except ValueError:
            raise invalid("tags", "must be an array or a comma separated string")

    def _plain_param_tags(self, params: dict) -> list[str]:
        return [t.lstrip("#") for t in self._param_tags(params)]

    def _integration_fields(self, doc: Doc, params: dict) -> None:
        title, author = params.get("title"), params.get("author")
        if not isinstance(title, str) or not title.strip():
            raise invalid("title", "can't be blank")
        if author is not None and not isinstance(author, dict):
            raise wrong_type("author", "must be an object")
        if not isinstance(author, dict) or not isinstance(author.get("name"), str) \
                or not author["name"].strip():
            raise invalid("author", "must have a name")
        body = params.get("body")
        if body is not None and not isinstance(body, str):
            raise invalid("body", "must be a string")
        doc.update(title=only_links(title), body=sanitize(body) if body else body, app="influx",
                   author={k: str(v) for k, v in author.items()
                           if k in ("name", "avatar", "email") and v is not None})

    async def _attachments(self, doc: Doc, params: dict, owner: str) -> None:
        """Multipart `attachments[<cid>]` files of an activity/discussion; the body
        refers to them as `cid:<cid>`, which becomes the stored file's path."""
        files = params.get("_attachments") or {}
        if not files:
            return
        if self.files is None:
            raise invalid("attachments", "file uploads are not enabled")
        cids = {}
        for name in files:
            m = re.fullmatch(r"attachments\[([^\]]*)\]", name)
            if m is None:
                raise invalid("attachments", f"unexpected file field {name}")
            cids[name] = m.group(1)
        if len({bool(c) for c in cids.values()}) > 1:
            raise invalid("attachments", "either every attachment has an id or none")
        for name, (data, content_type, file_name) in files.items():
            attachment = await self.files.save(owner, data, content_type, file_name)
            if cids[name]:
                attachment["content_id"] = cids[name]
                if doc.get("body"):
                    doc["body"] = doc["body"].replace(f"cid:{cids[name]}", attachment["path"])
            doc["attachments"].append(attachment)

    async def _file(self, doc: Doc, params: dict, owner: str) -> None:
        if self.files is None:
            raise invalid("event", "file uploads are not enabled")
        upload = params.get("_upload")
        if upload is None:
            content = params.get("content")
            if content is not None and not isinstance(content, dict):
                raise wrong_type("content", "must be an object with data, content_type "
                                            "and file_name")
            if not isinstance(content, dict) or not isinstance(content.get("data"), str):
                raise invalid("content", "must have data, content_type and file_name")
            try:
                data = base64.b64decode(content["data"], validate=True)
            except ValueError:
                raise invalid("content", "data must be base64")
            upload = (data, str(content.get("content_type") or "application/octet-stream"),
                      str(content.get("file_name") or "file"))
        data, content_type, file_name = upload
        attachment = await self.files.save(owner, data, content_type, file_name)
        doc["content"] = attachment
        doc["attachments"] = [attachment]

    # ------------------------------------------------------------ threads

    async def _place_in_thread(self, doc: Doc, actor: Actor, params: dict, flow: Flow) -> None:
        thread_id = params.get("thread_id")
        external = params.get("external_thread_id")
        payload = params.get("thread")
        if payload is not None and not isinstance(payload, dict):
            raise wrong_type("thread", "must be an object")
        integration = doc["event"] in ("activity", "discussion")
        if thread_id:
            thread = await self.store.get_thread(str(thread_id))
            if thread is None or thread.get("flow") != flow.id:
                raise invalid("thread_id", "is not a thread of this flow")
        elif external:
            source_key = f"source:{actor.source.id}" if actor.source else f"user:{actor.user_id}:{flow.id}"
            thread_id = "x" + hashlib.sha256(
                f"{source_key}\0{external}".encode()).hexdigest()[:24]
            thread = await self.store.get_thread(thread_id)
            if thread is None:
                if integration and not (payload and payload.get("title")):
                    raise invalid("thread", "must have a title for a new thread")
                thread = self._new_thread(thread_id, flow, doc)
                if actor.source is not None:
                    thread["source"] = {"id": actor.source.id, "name": actor.source.name,
                                        "application": {"name": actor.source.name}}
                thread.update(_source_key=source_key, _external_id=str(external),
                              _application="inbox")
        elif integration:
            raise invalid("external_thread_id", "can't be blank")
        else:
            thread_id = new_uuid()[:20]
            thread = self._new_thread(thread_id, flow, doc)
        if payload:
            thread.update(self._thread_payload(payload))
        doc["thread_id"] = thread["id"]
        doc["thread"] = thread

    @staticmethod
    def _new_thread(thread_id: str, flow: Flow, doc: Doc) -> Doc:
        return {"id": thread_id, "flow": flow.id, "title": _title_of(doc), "body": None,
                "external_url": None, "status": None, "fields": [], "actions": [],
                "source": None, "activities": 0, "internal_comments": 0,
                "external_comments": 0, "initial_message": None,
                "_application": "chat"}

    @staticmethod
    def _thread_payload(payload: dict) -> Doc:
        out: Doc = {}
        for key in ("title", "body", "external_url"):
            if key in payload:
                if payload[key] is not None and not isinstance(payload[key], str):
                    raise invalid(f"thread.{key}", "must be a string")
                out[key] = payload[key]
                if out[key] and key == "title":
                    out[key] = only_links(out[key])
                elif out[key] and key == "body":
                    out[key] = sanitize(out[key])
        if "status" in payload:
            status = payload["status"]
            if status is not None and (not isinstance(status, dict)
                                       or status.get("color") not in THREAD_STATUS_COLORS):
                raise invalid("thread.status", "must have a value and a known color")
            out["status"] = status
        if "fields" in payload:
            fields = payload["fields"]
            if not isinstance(fields, list) or not all(
                    isinstance(f, dict) and "label" in f and "value" in f for f in fields):
                raise invalid("thread.fields", "must be a list of {label, value}")
            out["fields"] = [{"label": str(f["label"]), "value": only_links(str(f["value"]))}
                             for f in fields]
        if "actions" in payload:
            if not isinstance(payload["actions"], list):
                raise invalid("thread.actions", "must be a list")
            out["actions"] = payload["actions"]
        return out

    async def _thread_snapshot(self, thread_id: str, fallback: Doc) -> Doc:
        thread = await self.store.get_thread(thread_id)
        return thread or dict(fallback.get("thread") or {"id": thread_id})

    # ------------------------------------------------------------ edits

    async def edit(self, user: User, conversation: str, message_id: Any,
                   content: Any = None, tags: Any = None, flow: Flow | None = None) -> None:
        original = await self._own_message(conversation, message_id)
        item: Doc = {"op": "edit", "conversation": conversation, "message": original["id"],
                     "user": user.id, "uuid": new_uuid()}
        item.update({k: original[k] for k in ("flow", "to") if k in original})
        if content is not None:
            if original["event"] not in ("message", "comment") or original.get("user") != str(user.id):
                raise Forbidden("You can only edit the content of your own messages")
            item["content"] = self._text({"content": content})
            if flow is not None:
                mentionable = [(u.id, u.nick) for u, m in await self.members(flow.id)]
                kept = [t for t in original.get("tags", []) if t.startswith("influx:")]
                item["content_tags"] = tagging.dedupe(
                    tagging.build_tags(item["content"], [], mentionable) + kept)
        if tags is not None:
            try:
                new_tags = tagging.split_param(tags)
            except ValueError:
                raise invalid("tags", "must be an array or a comma separated string")
            members = await self.members(flow.id) if flow else []
            item["tags"] = tagging.dedupe(tagging.normalise_filter(
                new_tags, [(u.id, u.nick) for u, _ in members]))
        if content is None and tags is None:
            raise invalid("content", "nothing to change")
        await self.pipeline.submit(item, wait=True)

    async def delete(self, user: User, conversation: str, message_id: Any) -> bool:
        """Delete a message; True if it was removed, False if truncated."""
        original = await self._own_message(conversation, message_id)
        own = original.get("user") == str(user.id)
        if original["event"] in ("message", "comment", "line") and own:
            mode = "truncate"
        elif (original.get("app") == "influx" and original["event"] != "file") or \
                (original["event"] == "file" and own):
            mode = "remove"
        else:
            raise Forbidden("You can't delete this message")
        item: Doc = {"op": "delete", "conversation": conversation, "message": original["id"],
                     "user": user.id, "uuid": new_uuid(), "mode": mode}
        item.update({k: original[k] for k in ("flow", "to") if k in original})
        await self.pipeline.submit(item, wait=True)
        return mode == "remove"

    async def _own_message(self, conversation: str, message_id: Any) -> Doc:
        try:
            message_id = int(message_id)
        except (TypeError, ValueError):
            raise NotFound()
        original = await self.store.get(conversation, message_id)
        if original is None:
            raise NotFound()
        return original

    # ------------------------------------------------------------ presence

    async def activity(self, user: User, flow_id: str, active: bool,
                       left: bool = False) -> None:
        """Announce a user's activity in a flow (`activity.user`, not stored): active,
        idle (empty content) or, with `left`, gone (`{"left": true}`)."""
        last = now_ms()
        await self.directory.update_membership(flow_id, user.id, last_activity=last)
        content = {"last_activity": last} if active else {}
        if left:
            content = {"left": True}
        await self.pipeline.publish_transient({
            "conversation": flow_id, "flow": flow_id, "event": "activity.user",
            "user": str(user.id), "content": content, "tags": [], "sent": last})


def _title_of(doc: Doc) -> str:
    content = doc.get("content")
    if doc.get("title"):
        return str(doc["title"])
    if isinstance(content, str):
        return content.splitlines()[0][:200] if content else ""
    if isinstance(content, dict):
        return str(content.get("title") or content.get("file_name") or content.get("text") or "")
    return ""


__all__ = ["Actor", "Chat", "flow_channel"]
