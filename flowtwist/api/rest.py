"""The Flowdock REST API (spec sections 3, 8, 9): organizations, flows, messages,
comments, threads, private conversations, users, sources, invitations, files, and the
push endpoints.  Handlers translate HTTP to calls on `App.chat` and the directory."""
from __future__ import annotations

import re
from typing import Any

from flowtwist.api import shapes
from flowtwist.api.http import (Authenticator, HTTPError, Response, Router, header,
                                query_params, request_params)
from flowtwist.app import App
from flowtwist.chat import Actor
from flowtwist.model import (MAX_FLOW_NAME, Flow, Forbidden, NotFound, Unprocessable,
                             User, ValidationError, private_key)
from flowtwist.pipeline import public
from flowtwist import tags as tagging

LIST_EVENT_LIMIT = 100


def _int(value: Any, field: str, default: int | None = None, lo: int | None = None,
         hi: int | None = None) -> int | None:
    if value is None or value == "":
        return default
    if isinstance(value, (bool, float)):
        raise ValidationError({field: ["must be an integer"]})
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ValidationError({field: ["must be an integer"]})
    if (lo is not None and number < lo) or (hi is not None and number > hi):
        raise ValidationError({field: [f"must be between {lo} and {hi}"]})
    return number


def _message_id(value: str) -> int:
    """A message id from a path: anything but a number names no message (404)."""
    if not value.isdigit():
        raise NotFound()
    return int(value)


def _name(value: Any, field: str) -> str | None:
    if value in (None, ""):
        return None
    if not isinstance(value, str):
        raise ValidationError({field: ["must be a string"]})
    return value


def _names(value: Any) -> list[str] | None:
    """A comma list parameter; a JSON array (filters in a GET body) works too."""
    if not value:
        return None
    items = value if isinstance(value, list) else str(value).split(",")
    return [str(e).strip() for e in items if str(e).strip()] or None


def _bool(value: Any) -> bool:
    return value in (True, 1, "1", "true", "True", "yes", "on")


def _wants_wait(request) -> bool:
    return header(request, "x-flowdock-wait-for-message") not in (None, "", "false", "0")


class RestApi:
    def __init__(self, app: App, auth: Authenticator, mail_addresses=None):
        self.app = app
        self.mail_addresses = mail_addresses    # flowtwist.bridges.email.FlowAddresses
        self.auth = auth
        self.chat = app.chat
        self.directory = app.directory
        self.base = app.public_url.rstrip("/")
        self.router = Router(auth)
        r = self.router.route
        r("GET", "/organizations", self.organizations)
        r("GET", "/organizations/find", self.organization_find)
        r("GET", "/organizations/:org", self.organization)
        r("PUT", "/organizations/:org", self.organization_update)
        r("GET", "/organizations/:org/users", self.organization_users)
        r("DELETE", "/organizations/:org/users/:uid", self.organization_remove_user)
        r("GET", "/flows", self.flows)
        r("GET", "/flows/all", self.flows_all)
        r("GET", "/flows/find", self.flow_find)
        r("POST", "/flows/:org", self.flow_create)
        r("GET", "/flows/:org/:flow", self.flow_show)
        r("PUT", "/flows/:org/:flow", self.flow_update)
        r("GET", "/flows/:org/:flow/users", self.flow_users)
        r("POST", "/flows/:org/:flow/users", self.flow_add_user)
        r("PUT", "/flows/:org/:flow/users/:uid", self.flow_block_user)
        r("POST", "/messages", self.post_message)
        r("POST", "/comments", self.post_comment)
        r("POST", "/flows/:org/:flow/messages", self.post_message)
        r("GET", "/flows/:org/:flow/messages", self.list_messages)
        r("GET", "/flows/:org/:flow/messages/:mid", self.show_message)
        r("PUT", "/flows/:org/:flow/messages/:mid", self.edit_message)
        r("DELETE", "/flows/:org/:flow/messages/:mid", self.delete_message)
        r("POST", "/flows/:org/:flow/messages/:mid/comments", self.post_comment)
        r("GET", "/flows/:org/:flow/messages/:mid/comments", self.list_comments)
        r("GET", "/flows/:org/:flow/threads", self.list_threads)
        r("GET", "/flows/:org/:flow/threads/:thread", self.show_thread)
        r("POST", "/flows/:org/:flow/threads/:thread/messages", self.post_message)
        r("GET", "/flows/:org/:flow/threads/:thread/messages", self.list_messages)
        r("GET", "/private", self.privates)
        r("GET", "/private/:uid", self.private_show)
        r("PUT", "/private/:uid", self.private_update)
        r("POST", "/private/:uid/messages", self.private_post)
        r("GET", "/private/:uid/messages", self.private_list)
        r("GET", "/private/:uid/messages/:mid", self.private_message)
        r("PUT", "/private/:uid/messages/:mid", self.private_edit)
        r("DELETE", "/private/:uid/messages/:mid", self.private_delete)
        r("GET", "/user", self.me)
        r("GET", "/users", self.users)
        r("GET", "/users/:uid", self.user_show)
        r("PUT", "/users/:uid", self.user_update)
        r("GET", "/sources", self.sources)
        r("PUT", "/sources", self.source_update_by_token)
        r("GET", "/flows/:org/:flow/sources", self.flow_sources)
        r("POST", "/flows/:org/:flow/sources", self.source_create)
        r("GET", "/flows/:org/:flow/sources/:sid", self.source_show)
        r("PUT", "/flows/:org/:flow/sources/:sid", self.source_update)
        r("DELETE", "/flows/:org/:flow/sources/:sid", self.source_delete)
        r("GET", "/flows/:org/:flow/invitations", self.invitations)
        r("POST", "/flows/:org/:flow/invitations", self.invite)
        r("POST", "/flows/:org/:flow/invitations/import", self.invite_import)
        r("GET", "/flows/:org/:flow/invitations/:iid", self.invitation)
        r("DELETE", "/flows/:org/:flow/invitations/:iid", self.invitation_delete)
        r("GET", "/flows/:org/:flow/feeds", self.flow_feeds)
        r("POST", "/flows/:org/:flow/feeds", self.feed_create)
        r("GET", "/flows/:org/:flow/feeds/:fid", self.feed_show)
        r("DELETE", "/flows/:org/:flow/feeds/:fid", self.feed_delete)
        r("GET", "/files/:owner/:digest/:name", self.file_download)
        r("POST", "/messages/team_inbox/:token", self.push_team_inbox)
        r("POST", "/messages/chat/:token", self.push_chat)

    # ------------------------------------------------------------ helpers

    async def _user(self, request) -> User:
        return await self.auth.user(request)

    async def _org_of(self, user: User, org_name: str):
        org = await self.directory.organization_by_name(org_name)
        if org is None or org.id not in {o.id for o in await self.directory.organizations_of(user.id)}:
            raise NotFound()
        return org

    async def _is_org_admin(self, user: User, org_id: int) -> bool:
        return any(u.id == user.id and admin
                   for u, admin in await self.directory.org_members(org_id))

    async def _flow_json(self, flow: Flow, user: User, *, joined: bool = True,
                         with_users: bool = False) -> dict:
        org = await self.directory.get_organization(flow.organization_id)
        members = await self.chat.members(flow.id)
        users = [shapes.flow_user_json(u, m) for u, m in members] if with_users else None
        mine = next((m for u, m in members if u.id == user.id), None)
        out = shapes.flow_json(flow, org, self.base, joined=joined,
                               open=mine.open if mine else False, users=users,
                               user_count=len(members))
        if self.mail_addresses is not None:
            out["email"] = self.mail_addresses.addresses(org.parameterized_name,
                                                         flow.parameterized_name)[0]
        return out

    def _flow_path(self, flow: Flow, org) -> str:
        return f"{org.parameterized_name}/{flow.parameterized_name}"

    # ------------------------------------------------------------ organizations

    async def organizations(self, request):
        user = await self._user(request)
        out = []
        for org in await self.directory.organizations_of(user.id):
            members = await self.directory.org_members(org.id)
            out.append(shapes.org_json(org, self.base, len(members), members))
        return out

    async def organization_find(self, request):
        user = await self._user(request)
        org_id = _int(query_params(request).get("id"), "id")
        for org in await self.directory.organizations_of(user.id):
            if org.id == org_id:
                members = await self.directory.org_members(org.id)
                return shapes.org_json(org, self.base, len(members), members)
        raise NotFound()

    async def organization(self, request, org):
        user = await self._user(request)
        found = await self._org_of(user, org)
        members = await self.directory.org_members(found.id)
        return shapes.org_json(found, self.base, len(members), members)

    async def organization_update(self, request, org):
        user = await self._user(request)
        found = await self._org_of(user, org)
        if not await self._is_org_admin(user, found.id):
            raise Forbidden("Only organization admins can do that")
        name = request_params(request).get("name")
        if not isinstance(name, str) or not name.strip():
            raise ValidationError({"name": ["can't be blank"]})
        found = await self.directory.rename_organization(found.id, name.strip())
        members = await self.directory.org_members(found.id)
        return shapes.org_json(found, self.base, len(members), members)

    async def organization_users(self, request, org):
        user = await self._user(request)
        found = await self._org_of(user, org)
        return [shapes.user_json(u, admin) for u, admin in
                await self.directory.org_members(found.id)]

    async def organization_remove_user(self, request, org, uid):
        user = await self._user(request)
        found = await self._org_of(user, org)
        if not await self._is_org_admin(user, found.id):
            raise Forbidden("Only organization admins can do that")
        uid = _int(uid, "id")
        mine = {m.flow_id for m in await self.directory.memberships_of(uid)}
        lost = [f for f in await self.directory.flows_of_org(found.id) if f.id in mine]
        await self.directory.remove_org_member(found.id, uid)
        await self.chat.flows_lost(uid, lost)
        return Response(204)

    # ------------------------------------------------------------ flows

    async def flows(self, request):
        user = await self._user(request)
        with_users = _bool(query_params(request).get("users"))
        return [await self._flow_json(f, user, with_users=with_users)
                for f in await self.chat.joined_flows(user)]

    async def flows_all(self, request):
        user = await self._user(request)
        with_users = _bool(query_params(request).get("users"))
        return [await self._flow_json(f, user, joined=joined, with_users=with_users)
                for f, joined in await self.chat.all_flows(user)]

    async def flow_find(self, request):
        user = await self._user(request)
        flow_id = query_params(request).get("id") or ""
        flow = await self.chat.resolve_flow_ref(user, flow_id)
        return await self._flow_json(flow, user, with_users=True)

    async def flow_show(self, request, org, flow):
        user = await self._user(request)
        found = await self.chat.flow_by_path(user, org, flow)
        return await self._flow_json(found, user, with_users=True)

    async def flow_create(self, request, org):
        user = await self._user(request)
        found = await self._org_of(user, org)
        params = request_params(request)
        name = params.get("name")
        if not isinstance(name, str) or not name.strip():
            raise ValidationError({"name": ["can't be blank"]})
        if len(name) > MAX_FLOW_NAME:
            raise ValidationError({"name": [f"is too long (maximum is {MAX_FLOW_NAME} characters)"]})
        mode = params.get("access_mode", "organization")
        if mode not in ("invitation", "link", "organization"):
            raise ValidationError({"access_mode": ["is not included in the list"]})
        from flowtwist.model import parameterize
        if await self.directory.flow_by_name(found.parameterized_name, parameterize(name)):
            raise ValidationError({"name": ["has already been taken"]})
        flow = await self.directory.create_flow(found.id, name.strip(), mode)
        await self.directory.add_flow_member(flow.id, user.id)
        return Response(201, await self._flow_json(flow, user, with_users=True))

    async def flow_update(self, request, org, flow):
        user = await self._user(request)
        params = request_params(request)
        found = await self.directory.flow_by_name(org, flow)
        if found is None:
            raise NotFound()
        member = await self.chat.membership(found.id, user.id)
        if member is None:
            # Joining an organization-visible flow with open:true.
            await self._org_of(user, org)
            if not (_bool(params.get("open")) and found.access_mode == "organization"):
                raise NotFound()
            await self.chat.add_members(user, found, [user])
        elif member.disabled:
            raise Forbidden("You have been blocked from this flow")
        changes: dict[str, Any] = {}
        if "name" in params:
            name = params["name"]
            if not isinstance(name, str) or not name.strip():
                raise ValidationError({"name": ["can't be blank"]})
            if len(name) > MAX_FLOW_NAME:
                raise ValidationError({"name": [f"is too long (maximum is {MAX_FLOW_NAME} characters)"]})
            changes["name"] = name.strip()
        if "access_mode" in params:
            if params["access_mode"] not in ("invitation", "link", "organization"):
                raise ValidationError({"access_mode": ["is not included in the list"]})
            changes["access_mode"] = params["access_mode"]
        if "disabled" in params:
            changes["disabled"] = _bool(params["disabled"])
        if "description" in params:
            changes["description"] = str(params["description"] or "")
        if changes:
            found = await self.directory.update_flow(found.id, **changes)
            self.chat.forget_flow(found.id)
        if "open" in params and member is not None:
            await self.directory.update_membership(found.id, user.id, open=_bool(params["open"]))
            self.chat.forget_flow(found.id)
        return await self._flow_json(found, user, with_users=True)

    async def flow_users(self, request, org, flow):
        user = await self._user(request)
        found = await self.chat.flow_by_path(user, org, flow)
        return [shapes.flow_user_json(u, m) for u, m in await self.chat.members(found.id)]

    async def flow_add_user(self, request, org, flow):
        user = await self._user(request)
        found = await self.chat.flow_by_path(user, org, flow)
        uid = _int(request_params(request).get("id"), "id")
        if uid is None:
            raise ValidationError({"id": ["can't be blank"]})
        org_members = {u.id: u for u, _ in await self.directory.org_members(found.organization_id)}
        if uid not in org_members:
            raise ValidationError({"id": ["is not a member of the organization"]})
        await self.chat.add_members(user, found, [org_members[uid]])
        return {}

    async def flow_block_user(self, request, org, flow, uid):
        user = await self._user(request)
        found = await self.chat.flow_by_path(user, org, flow)
        uid = _int(uid, "id")
        if await self.chat.membership(found.id, uid) is None:
            raise NotFound()
        admins = {u.id for u, a in await self.directory.org_members(found.organization_id) if a}
        if uid in admins and user.id not in admins:
            raise Forbidden("Only admins can block admins")
        disabled = _bool(request_params(request).get("disabled"))
        await self.directory.update_membership(found.id, uid, disabled=disabled)
        self.chat.forget_flow(found.id)
        if disabled:    # listeners (IRC) drop the member
            await self.app.pipeline.publish_transient({
                "conversation": found.id, "flow": found.id, "event": "backend.user.block",
                "user": str(user.id), "content": str(uid), "tags": []})
        return {}

    # ------------------------------------------------------------ messages

    async def _poster(self, request, params) -> tuple[Actor, User | None]:
        token = params.get("flow_token")
        if token:
            source = await self.auth.source(str(token))
            return Actor(source=source), None
        user = await self._user(request)
        return Actor(user=user), user

    async def _target_flow(self, actor: Actor, user: User | None, params, org=None,
                           flow=None) -> Flow:
        if actor.source is not None:
            found = await self.chat.flow(actor.source.flow_id)
            if found is None:
                raise NotFound()
            if org is not None:     # a source posts into its own flow only
                named = await self.directory.flow_by_name(org, flow)
                if named is None or named.id != found.id:
                    raise NotFound()
            return found
        if org is not None:
            return await self.chat.flow_by_path(user, org, flow)
        flow_id = params.get("flow")
        if not flow_id:
            raise ValidationError({"flow": ["can't be blank"]})
        # a flow id, or the legacy `org:flow` id of older clients
        return await self.chat.resolve_flow_ref(user, str(flow_id))

    async def post_message(self, request, org=None, flow=None, thread=None):
        params = request_params(request)
        actor, user = await self._poster(request, params)
        target = await self._target_flow(actor, user, params, org, flow)
        if thread is not None:
            params["thread_id"] = thread
        files = params.pop("_files", None)
        if files and params.get("event") in ("activity", "discussion"):
            params["_attachments"] = files
        elif files:
            params["_upload"] = files.get("content") or next(iter(files.values()))
            params.setdefault("event", "file")
        if params.get("event") == "comment":
            return await self.post_comment(request, org, flow, params.get("message"),
                                           params=params, actor=actor, user=user)
        wait = actor.source is None or _wants_wait(request)
        doc = await self.chat.post(actor, target, params, wait=wait)
        return self._posted(doc, wait, target)

    def _posted(self, doc, wait: bool, flow: Flow | None = None):
        if not wait:
            return Response(202, {})
        if doc is None:
            return Response(202, {})
        headers = {}
        if flow is not None:
            headers[b"Link"] = (f"<{self.base}/flows/find?id={flow.id}>; rel=\"flow\"").encode()
        return Response(201, public(doc), headers)

    async def post_comment(self, request, org=None, flow=None, mid=None, params=None,
                           actor=None, user=None):
        if params is None:
            params = request_params(request)
            actor, user = await self._poster(request, params)
        target = await self._target_flow(actor, user, params, org, flow)
        parent = mid if mid is not None else params.get("message")
        if parent in (None, ""):
            raise ValidationError({"message": ["can't be blank"]})
        wait = actor.source is None or _wants_wait(request)
        doc = await self.chat.comment(actor, target, parent, params, wait=wait)
        return self._posted(doc, wait, target)

    def _list_args(self, params, members) -> dict:
        events = params.get("event")
        tags = params.get("tags")
        search = params.get("search")
        sort = params.get("sort", "desc")
        if sort not in ("asc", "desc"):
            raise ValidationError({"sort": ["must be asc or desc"]})
        tag_mode = params.get("tag_mode", "and")
        if tag_mode not in ("and", "or"):
            raise ValidationError({"tag_mode": ["must be and or or"]})
        try:
            tag_list = tagging.split_param(tags)
        except ValueError:
            raise ValidationError({"tags": ["must be a comma separated list"]})
        return dict(
            events=_names(events),
            limit=_int(params.get("limit"), "limit", 30, 1, LIST_EVENT_LIMIT),
            newest_first=sort != "asc",
            since_id=_int(params.get("since_id"), "since_id"),
            until_id=_int(params.get("until_id"), "until_id"),
            tags=tagging.normalise_filter(tag_list, members) or None,
            tag_mode=tag_mode,
            search=str(search).split() if search else None,
            skip=_int(params.get("skip"), "skip", 0, 0),
        )

    async def list_messages(self, request, org, flow, thread=None):
        user = await self._user(request)
        found = await self.chat.flow_by_path(user, org, flow)
        params = request_params(request)
        members = [(u.id, u.nick) for u, _ in await self.chat.members(found.id)]
        args = self._list_args(params, members)
        if thread is not None:
            args["thread_id"] = thread
        return [public(d) for d in await self.app.store.query(found.id, **args)]

    async def list_comments(self, request, org, flow, mid):
        user = await self._user(request)
        found = await self.chat.flow_by_path(user, org, flow)
        mid = _message_id(mid)
        docs = await self.app.store.query(found.id, events=["comment"], tags=[f"influx:{mid}"],
                                          limit=LIST_EVENT_LIMIT, newest_first=False)
        return [public(d) for d in docs]

    async def show_message(self, request, org, flow, mid):
        user = await self._user(request)
        found = await self.chat.flow_by_path(user, org, flow)
        doc = await self.app.store.get(found.id, _message_id(mid))
        if doc is None:
            raise NotFound()
        return public(doc)

    async def edit_message(self, request, org, flow, mid):
        user = await self._user(request)
        found = await self.chat.flow_by_path(user, org, flow)
        params = request_params(request)
        await self.chat.edit(user, found.id, mid, params.get("content"), params.get("tags"),
                             flow=found)
        return {}

    async def delete_message(self, request, org, flow, mid):
        user = await self._user(request)
        found = await self.chat.flow_by_path(user, org, flow)
        removed = await self.chat.delete(user, found.id, mid)
        return Response(204) if removed else {}

    # ------------------------------------------------------------ threads

    async def list_threads(self, request, org, flow):
        from flowtwist.model import parse_iso
        from flowtwist.pipeline import public_thread
        user = await self._user(request)
        found = await self.chat.flow_by_path(user, org, flow)
        params = request_params(request)

        def when(key):
            value = params.get(key)
            if not value:
                return None
            try:
                return parse_iso(str(value))
            except ValueError:
                raise ValidationError({key: ["must be an ISO 8601 time"]})
        limit = _int(params.get("limit"), "limit", 30, 1, 100)
        threads = await self.app.store.list_threads(
            found.id, until=when("until"), since=when("since"), limit=limit,
            application=_name(params.get("application"), "application"),
            include_empty=_bool(params.get("empty")))
        headers = {}
        if len(threads) == limit:
            org_obj = await self.directory.get_organization(found.organization_id)
            last = threads[-1]["updated_at"]
            headers[b"Link"] = (f"<{self.base}/flows/{self._flow_path(found, org_obj)}"
                                f"/threads?until={last}>; rel=\"next\"").encode()
        return Response(200, [public_thread(t) for t in threads], headers)

    async def show_thread(self, request, org, flow, thread):
        from flowtwist.pipeline import public_thread
        user = await self._user(request)
        found = await self.chat.flow_by_path(user, org, flow)
        doc = await self.app.store.get_thread(thread)
        if doc is None or doc.get("flow") != found.id:
            raise NotFound()
        return public_thread(doc)

    # ------------------------------------------------------------ private

    async def _conversation_json(self, user: User, other: User) -> dict:
        is_open = await self.directory.private_open(user.id, other.id)
        return {"id": other.id, "url": f"{self.base}/private/{other.id}",
                "name": f"@{other.nick}", "open": bool(is_open),
                "activity": {"inbox": False, "mentions": 0, "chat": False},
                "users": [{k: v for k, v in shapes.user_json(u).items()
                           if k in ("id", "nick", "email", "avatar", "name")}
                          for u in (user, other)]}

    async def privates(self, request):
        user = await self._user(request)
        out = []
        for other_id in await self.directory.private_partners(user.id):
            other = await self.directory.get_user(other_id)
            if other is not None:
                out.append(await self._conversation_json(user, other))
        return out

    async def private_show(self, request, uid):
        user = await self._user(request)
        other = await self.chat.private_peer(user, uid)
        if await self.directory.private_open(user.id, other.id) is None:
            await self.directory.set_private_open(user.id, other.id, False)
        return await self._conversation_json(user, other)

    async def private_update(self, request, uid):
        user = await self._user(request)
        other = await self.chat.private_peer(user, uid)
        params = request_params(request)
        if "open" in params:
            await self.directory.set_private_open(user.id, other.id, _bool(params["open"]))
        return await self._conversation_json(user, other)

    async def private_post(self, request, uid):
        user = await self._user(request)
        other = await self.chat.private_peer(user, uid)
        params = request_params(request)
        files = params.pop("_files", None)
        if files:
            params["_upload"] = files.get("content") or next(iter(files.values()))
            params.setdefault("event", "file")
        doc = await self.chat.post_private(user, other, params, wait=True)
        return self._posted(doc, True)

    async def private_list(self, request, uid):
        user = await self._user(request)
        other = await self.chat.private_peer(user, uid)
        args = self._list_args(request_params(request), [])
        docs = await self.app.store.query(private_key(user.id, other.id), **args)
        return [public(d) for d in docs]

    async def private_message(self, request, uid, mid):
        user = await self._user(request)
        other = await self.chat.private_peer(user, uid)
        doc = await self.app.store.get(private_key(user.id, other.id), _message_id(mid))
        if doc is None:
            raise NotFound()
        return public(doc)

    async def private_edit(self, request, uid, mid):
        user = await self._user(request)
        other = await self.chat.private_peer(user, uid)
        params = request_params(request)
        await self.chat.edit(user, private_key(user.id, other.id), mid,
                             params.get("content"), params.get("tags"))
        return {}

    async def private_delete(self, request, uid, mid):
        user = await self._user(request)
        other = await self.chat.private_peer(user, uid)
        removed = await self.chat.delete(user, private_key(user.id, other.id), mid)
        return Response(204) if removed else {}

    # ------------------------------------------------------------ users

    async def me(self, request):
        return shapes.user_json(await self._user(request))

    async def users(self, request):
        user = await self._user(request)
        seen: dict[int, User] = {}
        for org in await self.directory.organizations_of(user.id):
            members = await self.directory.org_members(org.id)
            if any(u.id == user.id and a for u, a in members):
                seen.update((u.id, u) for u, _ in members)
        for flow in await self.chat.joined_flows(user):
            seen.update((u.id, u) for u, _ in await self.chat.members(flow.id))
        seen[user.id] = user
        return [shapes.user_json(u) for _, u in sorted(seen.items())]

    async def user_show(self, request, uid):
        user = await self._user(request)
        other = await self.chat.private_peer(user, uid)
        return shapes.user_json(other)

    async def user_update(self, request, uid):
        user = await self._user(request)
        if _int(uid, "id") != user.id:
            raise Forbidden("You can only update your own profile")
        params = request_params(request)
        changes = {}
        if "nick" in params:
            nick = params["nick"]
            if not isinstance(nick, str) or not re.fullmatch(r"[\w.\-]{1,64}", nick):
                raise ValidationError({"nick": ["is invalid"]})
            # @mentions and IRC names resolve nicks: one nick, one person, per organization
            for org in await self.directory.organizations_of(user.id):
                if any(u.nick.lower() == nick.lower() and u.id != user.id
                       for u, _ in await self.directory.org_members(org.id)):
                    raise ValidationError({"nick": ["has already been taken"]})
            changes["nick"] = nick
        if "email" in params:
            email = params["email"]
            if not isinstance(email, str) or not re.fullmatch(r"[^@\s]+@[^@\s]+", email):
                raise ValidationError({"email": ["is invalid"]})
            other = await self.directory.user_by_email(email)
            if other is not None and other.id != user.id:
                raise ValidationError({"email": ["has already been taken"]})
            changes["email"] = email
        if "name" in params:
            changes["name"] = str(params["name"])[:100]
        if changes:
            updated = await self.directory.update_user(user.id, **changes)
            self.app.accounts.forget()
            for flow in await self.chat.joined_flows(user):
                self.chat.forget_flow(flow.id)
            if "nick" in changes:
                await self._announce_user_edit(updated)
        return {}

    async def _announce_user_edit(self, user: User) -> None:
        for flow in await self.chat.joined_flows(user):
            await self.app.pipeline.publish_transient({
                "conversation": flow.id, "flow": flow.id, "event": "user-edit",
                "user": str(user.id), "tags": [],
                "content": {"user": {"id": user.id, "nick": user.nick, "name": user.name}}})

    # ------------------------------------------------------------ sources

    async def _source_json(self, source, with_token=False):
        flow = await self.chat.flow(source.flow_id)
        org = await self.directory.get_organization(flow.organization_id)
        creator = await self.directory.get_user(source.creator_id) if source.creator_id else None
        return shapes.source_json(source, self.base, self._flow_path(flow, org), creator,
                                  with_token)

    async def sources(self, request):
        token = query_params(request).get("flow_token")
        if token:
            return [await self._source_json(await self.auth.source(token))]
        user = await self._user(request)
        out = []
        for flow in await self.chat.joined_flows(user):
            for source in await self.directory.sources_of_flow(flow.id):
                out.append(await self._source_json(source))
        return out

    async def flow_sources(self, request, org, flow):
        user = await self._user(request)
        found = await self.chat.flow_by_path(user, org, flow)
        return [await self._source_json(s) for s in await self.directory.sources_of_flow(found.id)]

    async def _flow_source(self, request, org, flow, sid):
        user = await self._user(request)
        found = await self.chat.flow_by_path(user, org, flow)
        source = await self.directory.get_source(_int(sid, "id"))
        if source is None or source.flow_id != found.id:
            raise NotFound()
        return source

    async def source_create(self, request, org, flow):
        user = await self._user(request)
        found = await self.chat.flow_by_path(user, org, flow)
        params = request_params(request)
        name = params.get("name")
        if not isinstance(name, str) or not name.strip():
            raise ValidationError({"name": ["can't be blank"]})
        source = await self.directory.create_source(found.id, name.strip(), user.id,
                                                    str(params.get("external_url") or ""))
        return Response(201, await self._source_json(source, with_token=True))

    async def source_show(self, request, org, flow, sid):
        return await self._source_json(await self._flow_source(request, org, flow, sid))

    def _source_changes(self, params) -> dict:
        changes = {}
        for key in ("error_message", "configuration_url"):
            if key in params:
                changes[key] = str(params[key] or "")
        return changes

    async def source_update(self, request, org, flow, sid):
        source = await self._flow_source(request, org, flow, sid)
        source = await self.directory.update_source(
            source.id, **self._source_changes(request_params(request)))
        return await self._source_json(source)

    async def source_update_by_token(self, request):
        params = request_params(request)
        token = params.get("flow_token")
        if not token:
            raise ValidationError({"flow_token": ["can't be blank"]})
        source = await self.auth.source(str(token))
        source = await self.directory.update_source(source.id, **self._source_changes(params))
        return await self._source_json(source)

    async def source_delete(self, request, org, flow, sid):
        source = await self._flow_source(request, org, flow, sid)
        await self.directory.delete_source(source.id)
        return Response(204)

    # ------------------------------------------------------------ feeds (RSS/Atom, Twitter)

    async def flow_feeds(self, request, org, flow):
        from flowtwist.bridges import feeds
        _, found, path = await self._flow_and_path(request, org, flow)
        return [feeds.feed_json(f, self.base, path)
                for f in await self.directory.feeds(found.id) if not f["removed"]]

    async def _flow_feed(self, request, org, flow, fid):
        user, found, path = await self._flow_and_path(request, org, flow)
        feed = await self.directory.get_feed(_int(fid, "id"))
        if feed is None or feed["flow"] != found.id or feed["removed"]:
            raise NotFound()
        return user, found, path, feed

    async def feed_create(self, request, org, flow):
        """`type` rss (`url`), twitter_search (`query`) or twitter_follow
        (`screen_name`); 201 when added (and the add action posted), 200 if the flow
        had it already."""
        from flowtwist.bridges import feeds
        user, found, path = await self._flow_and_path(request, org, flow)
        params = request_params(request)
        kind = params.get("type") or "rss"
        feed, created = await feeds.subscribe(self.app, user, found, str(kind), params)
        return Response(201 if created else 200, feeds.feed_json(feed, self.base, path))

    async def feed_show(self, request, org, flow, fid):
        from flowtwist.bridges import feeds
        _, _, path, feed = await self._flow_feed(request, org, flow, fid)
        return feeds.feed_json(feed, self.base, path)

    async def feed_delete(self, request, org, flow, fid):
        from flowtwist.bridges import feeds
        user, found, _, feed = await self._flow_feed(request, org, flow, fid)
        await feeds.unsubscribe(self.app, user, found, feed)
        return Response(200, {})

    # ------------------------------------------------------------ invitations

    def _invitation_json(self, invitation, flow_path: str) -> dict:
        return {"id": invitation.id, "state": invitation.state, "email": invitation.email,
                "flow": invitation.flow_id,
                "url": f"{self.base}/flows/{flow_path}/invitations/{invitation.id}"}

    async def _flow_and_path(self, request, org, flow):
        user = await self._user(request)
        found = await self.chat.flow_by_path(user, org, flow)
        return user, found, f"{org}/{flow}"

    async def invitations(self, request, org, flow):
        _, found, path = await self._flow_and_path(request, org, flow)
        return [self._invitation_json(i, path)
                for i in await self.directory.invitations_of_flow(found.id)]

    async def invitation(self, request, org, flow, iid):
        _, found, path = await self._flow_and_path(request, org, flow)
        invitation = await self.directory.get_invitation(_int(iid, "id"))
        if invitation is None or invitation.flow_id != found.id:
            raise NotFound()
        return self._invitation_json(invitation, path)

    async def invite(self, request, org, flow):
        _, found, path = await self._flow_and_path(request, org, flow)
        params = request_params(request)
        email = params.get("email")
        if not isinstance(email, str) or not re.fullmatch(r"[^@\s]+@[^@\s]+\.[^@\s]+", email):
            raise ValidationError({"email": ["is invalid"]})
        invitation = await self.directory.create_invitation(found.id, email,
                                                            str(params.get("message") or ""))
        return Response(201, self._invitation_json(invitation, path))

    async def invite_import(self, request, org, flow):
        inviter, found, path = await self._flow_and_path(request, org, flow)
        params = request_params(request)
        text = params.get("list")
        if not isinstance(text, str) or not text.strip():
            raise ValidationError({"list": ["can't be blank"]})
        members = {u.email.lower(): u for u, _ in
                   await self.directory.org_members(found.organization_id)}
        invitations, added, wrong = [], [], []
        for entry in re.split(r"[,\n]", text):
            entry = entry.strip()
            if not entry:
                continue
            m = re.search(r"<([^>]+)>", entry)
            email = (m.group(1) if m else entry).strip()
            if not re.fullmatch(r"[^@\s\"]+@[^@\s]+\.[^@\s]+", email):
                wrong.append({entry: "is not a valid email address"})
            elif email.lower() in members:
                user = members[email.lower()]
                await self.chat.add_members(inviter, found, [user])
                member = await self.chat.membership(found.id, user.id)
                added.append(shapes.flow_user_json(user, member))
            else:
                inv = await self.directory.create_invitation(found.id, email,
                                                             str(params.get("message") or ""))
                invitations.append(self._invitation_json(inv, path))
        return {"invitations": invitations, "added_users": added, "erroneous_emails": wrong}

    async def invitation_delete(self, request, org, flow, iid):
        _, found, _ = await self._flow_and_path(request, org, flow)
        invitation = await self.directory.get_invitation(_int(iid, "id"))
        if invitation is None or invitation.flow_id != found.id:
            raise NotFound()
        await self.directory.delete_invitation(invitation.id)
        return Response(204)

    # ------------------------------------------------------------ files

    async def file_download(self, request, owner, digest, name):
        user = await self._user(request)
        loaded = await self.app.files.load(owner, digest)
        if loaded is None:
            raise NotFound()
        data, content_type, conversation = loaded
        if conversation.startswith("private:"):
            if str(user.id) not in conversation.split(":")[1:]:
                raise NotFound()
        else:
            await self.chat.visible_flow(user, conversation)
        return Response(200, raw=data, content_type=content_type, headers={
            b"Content-Disposition": f'attachment; filename="{name}"'.encode("utf-8", "replace"),
            b"X-Content-Type-Options": b"nosniff"})

    # ------------------------------------------------------------ v1 push

    async def _push_flows(self, token: str) -> list[Flow]:
        flows = []
        for part in token.split(","):
            flow = await self.directory.flow_by_token(part.strip())
            if flow is None:
                raise NotFound("Unknown flow API token")
            if flow.disabled:
                raise Unprocessable("This flow is archived")
            flows.append(flow)
        return flows

    async def push_team_inbox(self, request, token):
        params = request_params(request)
        errors = {}
        for field in ("source", "from_address", "subject", "content"):
            if not isinstance(params.get(field), str) or not params[field].strip():
                errors[field] = ["can't be blank"]
        source = params.get("source")
        if isinstance(source, str) and not re.fullmatch(r"[\w \-]+", source):
            errors["source"] = ["can only contain alphanumerics, underscores, dashes and spaces"]
        project = params.get("project")
        if project is not None and (not isinstance(project, str)
                                    or not re.fullmatch(r"[\w \-]*", project)):
            errors["project"] = ["can only contain alphanumerics, underscores, dashes and spaces"]
        if errors:
            raise ValidationError(errors)
        try:
            extra = tagging.split_param(params.get("tags"))
        except ValueError:
            raise ValidationError({"tags": ["must be an array or a comma separated string"]})
        from flowtwist.html import sanitize
        # Stored like an email in the team inbox, with the push fields alongside.
        content = {k: params.get(k) for k in ("source", "from_address", "subject", "from_name",
                                              "reply_to", "link", "project")
                   if params.get(k) is not None}
        content.update(
            content=sanitize(params["content"]), contentType="text/html",
            **{"from": [{"name": params.get("from_name") or "",
                         "address": params["from_address"]}]},
            to=[], cc=[], bcc=[], sender=None,
            replyTo=[{"name": "", "address": params["reply_to"]}] if params.get("reply_to") else [])
        tags = tagging.dedupe([f":source:{params['source']}"] + [t.lstrip("#") for t in extra])
        for flow in await self._push_flows(token):
            await self.chat.post_inbox(flow, "mail", content, tags, title=params["subject"],
                                       uuid=params.get("uuid"))
        return {}

    async def push_chat(self, request, token):
        params = request_params(request)
        name = params.get("external_user_name")
        errors = {}
        if not isinstance(name, str) or not name.strip():
            errors["external_user_name"] = ["can't be blank"]
        elif re.search(r"\s", name):
            errors["external_user_name"] = ["should not contain whitespace"]
        if errors:
            raise ValidationError(errors)
        flows = await self._push_flows(token)
        actor = Actor(external_user_name=name)
        post = {k: params[k] for k in ("content", "tags", "thread_id", "uuid") if k in params}
        post["event"] = "message"
        for flow in flows:
            if params.get("message_id"):
                await self.chat.comment(actor, flow, params["message_id"], post, wait=True)
            else:
                await self.chat.post(actor, flow, post, wait=True)
        return {}
