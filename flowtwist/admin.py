"""flowtwist-admin: manage organizations, users, flows and memberships on the same
configuration (options, environment, config file) as the server."""
from __future__ import annotations

import argparse
import getpass
import sys

from twisted.internet import defer, task
from twisted.python import usage

from flowtwist import backends
from flowtwist.accounts import hash_password
from flowtwist.options import SETTINGS, resolve


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="flowtwist-admin", description=__doc__)
    p.add_argument("--config", "-c", help="TOML config file, as for twistd flowtwist")
    for name, _, help in SETTINGS:
        if name in ("data", "postgres", "mongo", "redis", "mail-domain",
                    "mail-address-style"):
            p.add_argument(f"--{name}", help=help)
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("create-org", help="create an organization")
    s.add_argument("name")
    s = sub.add_parser("create-user", help="create a user; prints its id and API token")
    s.add_argument("--email", required=True)
    s.add_argument("--nick", required=True)
    s.add_argument("--name", required=True)
    s.add_argument("--password", help="password (asked for when omitted)")
    s.add_argument("--org", help="also add to this organization (parameterized name)")
    s.add_argument("--admin", action="store_true", help="as an organization admin")
    s = sub.add_parser("create-flow", help="create a flow; prints its id and flow API token")
    s.add_argument("org")
    s.add_argument("name")
    s.add_argument("--access-mode", default="organization",
                   choices=["organization", "invitation", "link"])
    s = sub.add_parser("add-org-member", help="add a user (by email) to an organization")
    s.add_argument("org")
    s.add_argument("email")
    s.add_argument("--admin", action="store_true")
    s = sub.add_parser("add-member", help="add a user (by email) to a flow ORG/FLOW")
    s.add_argument("flow", help="org/flow")
    s.add_argument("email")
    s = sub.add_parser("set-password", help="set a user's password")
    s.add_argument("email")
    s.add_argument("--password")
    s = sub.add_parser("flow-email", help="print the email address(es) of a flow ORG/FLOW")
    s.add_argument("flow", help="org/flow")
    s = sub.add_parser("add-feed", help="subscribe a flow ORG/FLOW to an RSS/Atom feed, a "
                       "Twitter search or account (the running server posts it and polls)")
    s.add_argument("flow", help="org/flow")
    s.add_argument("target", help="feed URL, search query or screen name")
    s.add_argument("--type", default="rss", choices=["rss", "twitter_search", "twitter_follow"])
    s.add_argument("--by", help="email of the user the add action is attributed to")
    s = sub.add_parser("remove-feed", help="remove a feed subscription (id from list feeds)")
    s.add_argument("flow", help="org/flow")
    s.add_argument("id", type=int)
    s = sub.add_parser("list", help="list organizations, users, flows, members or feeds")
    s.add_argument("what", choices=["orgs", "users", "flows", "members", "feeds"])
    s.add_argument("target", nargs="?", help="org/flow for members (and optionally feeds)")
    return p


class AdminError(Exception):
    pass


async def run(args, directory, settings=None) -> None:
    out = print
    settings = settings or {}
    if args.command == "create-org":
        org = await directory.create_organization(args.name)
        out(f"organization {org.id} {org.parameterized_name}")
    elif args.command == "create-user":
        if await directory.user_by_email(args.email):
            raise AdminError(f"a user with email {args.email} exists already")
        password = args.password or getpass.getpass("password: ")
        org = await _org(directory, args.org) if args.org else None
        user = await directory.create_user(args.email, args.nick, args.name,
                                           hash_password(password))
        if org is not None:
            await directory.add_org_member(org.id, user.id, args.admin)
        out(f"user {user.id} {user.email} nick {user.nick}")
        out(f"api token {user.api_token}")
    elif args.command == "create-flow":
        org = await _org(directory, args.org)
        flow = await directory.create_flow(org.id, args.name, args.access_mode)
        out(f"flow {flow.id} {org.parameterized_name}/{flow.parameterized_name}")
        out(f"flow api token {flow.api_token}")
    elif args.command == "add-org-member":
        org = await _org(directory, args.org)
        user = await _user(directory, args.email)
        await directory.add_org_member(org.id, user.id, args.admin)
        out(f"added {user.email} to {org.parameterized_name}" + (" as admin" if args.admin else ""))
    elif args.command == "add-member":
        org_name, _, flow_name = args.flow.partition("/")
        flow = await directory.flow_by_name(org_name, flow_name)
        if flow is None:
            raise AdminError(f"no flow {args.flow}")
        user = await _user(directory, args.email)
        await directory.add_org_member(flow.organization_id, user.id,
                                       any(u.id == user.id and a for u, a in
                                           await directory.org_members(flow.organization_id)))
        await directory.add_flow_member(flow.id, user.id)
        out(f"added {user.email} to {args.flow}")
    elif args.command == "set-password":
        user = await _user(directory, args.email)
        password = args.password or getpass.getpass("password: ")
        await directory.update_user(user.id, password_hash=hash_password(password))
        out(f"password of {user.email} changed")
    elif args.command == "list":
        await _list(directory, args.what, args.target, out)
    elif args.command == "add-feed":
        from flowtwist.bridges.feeds import KIND_FIELDS, normalise_target
        from flowtwist.model import ValidationError
        flow = await _flow(directory, args.flow)
        by = await _user(directory, args.by) if args.by else None
        try:
            target = normalise_target(args.type, {KIND_FIELDS[args.type]: args.target})
        except ValidationError as e:
            raise AdminError(f"{args.target}: {e}")
        feed, created = await directory.create_feed(flow.id, args.type, target,
                                                    by.id if by else None, announced=False)
        out(f"feed {feed['id']} {feed['kind']} {feed['target']}"
            + ("" if created else " (subscribed already)"))
    elif args.command == "remove-feed":
        flow = await _flow(directory, args.flow)
        feed = await directory.get_feed(args.id)
        if feed is None or feed["flow"] != flow.id or feed["removed"]:
            raise AdminError(f"no feed {args.id} in {args.flow}")
        await directory.update_feed(feed["id"], removed=True)
        out(f"feed {feed['id']} removed")
    elif args.command == "flow-email":
        from flowtwist.bridges.email import FlowAddresses
        flow = await _flow(directory, args.flow)
        org = await directory.get_organization(flow.organization_id)
        for address in FlowAddresses.from_settings(settings).addresses(
                org.parameterized_name, flow.parameterized_name):
            out(address)


async def _flow(directory, path):
    org_name, _, flow_name = path.partition("/")
    flow = await directory.flow_by_name(org_name, flow_name) if flow_name else None
    if flow is None:
        raise AdminError(f"no flow {path}")
    return flow


async def _org(directory, name):
    org = await directory.organization_by_name(name)
    if org is None:
        raise AdminError(f"no organization {name}")
    return org


async def _user(directory, email):
    user = await directory.user_by_email(email)
    if user is None:
        raise AdminError(f"no user {email}")
    return user


async def _list(directory, what, target, out) -> None:
    if what == "orgs":
        for org in await directory.organizations():
            out(f"{org.id}\t{org.parameterized_name}\t{org.name}")
    elif what == "users":
        for user in await directory.users():
            out(f"{user.id}\t{user.email}\t{user.nick}\t{user.name}"
                + ("\tdisabled" if user.disabled else ""))
    elif what == "flows":
        for org in await directory.organizations():
            for flow in await directory.flows_of_org(org.id):
                out(f"{flow.id}\t{org.parameterized_name}/{flow.parameterized_name}\t"
                    f"{flow.access_mode}\tflow api token {flow.api_token}")
    elif what == "feeds":
        flows = [await _flow(directory, target)] if target else [
            flow for org in await directory.organizations()
            for flow in await directory.flows_of_org(org.id)]
        for flow in flows:
            org = await directory.get_organization(flow.organization_id)
            for feed in await directory.feeds(flow.id):
                if not feed["removed"]:
                    error = (feed["state"] or {}).get("error")
                    out(f"{feed['id']}\t{org.parameterized_name}/{flow.parameterized_name}\t"
                        f"{feed['kind']}\t{feed['target']}" + (f"\terror: {error}" if error else ""))
    elif what == "members":
        if not target or "/" not in target:
            raise AdminError("list members needs ORG/FLOW")
        flow = await directory.flow_by_name(*target.split("/", 1))
        if flow is None:
            raise AdminError(f"no flow {target}")
        for user, member in await directory.flow_members(flow.id):
            out(f"{user.id}\t{user.email}\t{user.nick}" + ("\tblocked" if member.disabled else ""))


def main(argv=None) -> None:
    args = parser().parse_args(argv)
    given = {k.replace("_", "-"): v for k, v in vars(args).items()
             if k in ("config", "data", "postgres", "mongo", "redis", "mail_domain",
                      "mail_address_style")}
    try:
        settings = resolve(given)
    except usage.UsageError as e:
        sys.exit(f"flowtwist-admin: {e}")
    directory = backends.build_directory(settings)

    async def go(reactor):
        await directory.start()
        try:
            await run(args, directory, settings)
        finally:
            await directory.stop()

    def react(reactor):
        return defer.ensureDeferred(go(reactor))

    try:
        task.react(lambda reactor: react(reactor).addErrback(_report))
    except SystemExit as e:
        if e.code:
            raise


def _report(failure):
    if failure.check(AdminError):
        print(f"flowtwist-admin: {failure.value}", file=sys.stderr)
        raise SystemExit(1)
    return failure


if __name__ == "__main__":
    main()
