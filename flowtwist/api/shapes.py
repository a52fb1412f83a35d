"""JSON shapes of directory objects (API spec, section 4b)."""
from __future__ import annotations

import hashlib

from flowtwist.model import Flow, FlowMember, Organization, Source, User, iso_ms


def avatar(user: User) -> str:
    if user.avatar:
        return user.avatar
    digest = hashlib.md5(user.email.strip().lower().encode()).hexdigest()
    return f"https://www.gravatar.com/avatar/{digest}"


def user_json(user: User, admin: bool | None = None) -> dict:
    out = {"id": user.id, "email": user.email, "name": user.name, "nick": user.nick,
           "avatar": avatar(user), "website": user.website or None}
    if admin is not None:
        out["admin"] = admin
    return out


def flow_user_json(user: User, member: FlowMember) -> dict:
    return {"id": user.id, "nick": user.nick, "name": user.name, "email": user.email,
            "avatar": avatar(user), "status": member.status,
            "disabled": member.disabled or user.disabled,
            "last_activity": member.last_activity, "last_ping": member.last_activity,
            "website": user.website or None}


def org_json(org: Organization, base: str, user_count: int,
             members: list[tuple[User, bool]] | None = None) -> dict:
    out = {"id": org.id, "name": org.name, "parameterized_name": org.parameterized_name,
           "user_limit": org.user_limit, "user_count": user_count, "active": True,
           "url": f"{base}/organizations/{org.parameterized_name}",
           "subscription": {"trial": False, "billing_date": None}}
    if members is not None:
        out["users"] = [{"id": u.id, "name": u.name, "email": u.email, "admin": a}
                        for u, a in members]
    return out


def flow_json(flow: Flow, org: Organization, base: str, *, joined: bool = True,
              open: bool = True, users: list[dict] | None = None,
              unread_mentions: int = 0, user_count: int = 0) -> dict:
    path = f"{org.parameterized_name}/{flow.parameterized_name}"
    out = {
        "id": flow.id, "name": flow.name, "parameterized_name": flow.parameterized_name,
        "description": flow.description or None,
        "organization": {"id": org.id, "name": org.name,
                         "parameterized_name": org.parameterized_name,
                         "user_limit": org.user_limit, "user_count": user_count,
                         "active": True,
                         "url": f"{base}/organizations/{org.parameterized_name}"},
        "unread_mentions": unread_mentions, "open": open, "joined": joined,
        "url": f"{base}/flows/{path}", "web_url": f"{base}/app/{path}",
        "access_mode": flow.access_mode, "disabled": flow.disabled,
        "links": {"messages": f"{base}/flows/{path}/messages",
                  "users": f"{base}/flows/{path}/users",
                  "threads": f"{base}/flows/{path}/threads"},
    }
    if flow.access_mode in ("organization", "link"):
        out["join_url"] = f"{base}/app/{path}/join"
    if users is not None:
        out["users"] = users
    return out


def source_json(source: Source, base: str, flow_path: str, creator: User | None,
                with_token: bool = False) -> dict:
    out = {"id": source.id, "name": source.name,
           "url": f"{base}/flows/{flow_path}/sources/{source.id}",
           "external_url": source.external_url or None,
           "error_message": source.error_message or None,
           "configuration_url": source.configuration_url or None,
           "created_at": iso_ms(source.created_at), "updated_at": iso_ms(source.updated_at),
           "_links": {}, "application": {"id": 0, "name": source.name, "icon_url": None,
                                          "url": None},
           "creator": user_json(creator) if creator else None}
    if with_token:
        out["flow_token"] = source.flow_token
    return out
