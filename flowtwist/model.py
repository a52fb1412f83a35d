"""The domain: organizations, users, flows, sources, and the message document.

Directory records are frozen attrs classes.  Messages travel as plain dicts in the
Flowdock wire shape (section 4a of the API spec) because that is what every edge
reads and writes; the helpers here build and check them.
"""
from __future__ import annotations

import re
import secrets
import time
import unicodedata
import uuid as uuidlib
from datetime import datetime, timezone

import attrs

MAX_CONTENT = 8096
MAX_FLOW_NAME = 100

# Events a client may post; everything else is produced by the server.
POSTABLE_EVENTS = frozenset(
    {"message", "status", "comment", "file", "activity", "discussion", "line"})
# Events with a text content whose tags are parsed from it.
TEXT_EVENTS = frozenset({"message", "status", "line"})


class ChatError(Exception):
    """A refusal that an edge turns into its own error (HTTP status, IRC numeric...)."""
    status = 400

    def __init__(self, message: str, errors: dict[str, list[str]] | None = None):
        super().__init__(message)
        self.message = message
        self.errors = errors


class ValidationError(ChatError):
    status = 400

    def __init__(self, errors: dict[str, list[str]], message: str = "Validation error"):
        super().__init__(message, errors)


class Unprocessable(ChatError):
    """Well-formed, but not something that can be acted on: a parameter of the wrong
    type (`thread` that is not an object), or a flow that takes no posts (archived)."""
    status = 422


class Unauthorized(ChatError):
    status = 401


class Forbidden(ChatError):
    status = 403


class NotFound(ChatError):
    status = 404

    def __init__(self, message: str = "not found"):
        super().__init__(message)


class Gone(ChatError):
    status = 410


class Unavailable(ChatError):
    """A backend cannot take the request now; nothing was accepted."""
    status = 503


def now_ms() -> int:
    return int(time.time() * 1000)


def iso_ms(ms: int) -> str:
    """ISO 8601 UTC with milliseconds, as Flowdock writes `created_at`."""
    dt = datetime.fromtimestamp(ms / 1000, tz=timezone.utc)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def parse_iso(text: str) -> int:
    """ISO 8601 to ms; raises ValueError."""
    text = text.strip().replace("Z", "+00:00")
    dt = datetime.fromisoformat(text)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return int(dt.timestamp() * 1000)


def new_token() -> str:
    return secrets.token_hex(16)


def new_uuid() -> str:
    return uuidlib.uuid4().hex


def parameterize(name: str) -> str:
    """Flowdock's `parameterized_name`: lowercase ASCII words joined by dashes."""
    text = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    text = re.sub(r"[^a-zA-Z0-9]+", "-", text).strip("-").lower()
    return text or "flow"


def private_key(a: int, b: int) -> str:
    """The conversation key of a private conversation between two users."""
    lo, hi = sorted((int(a), int(b)))
    return f"private:{lo}:{hi}"


def flow_channel(flow_id: str) -> str:
    return "flow:" + flow_id


def user_channel(user_id: int) -> str:
    return f"user:{user_id}"


@attrs.frozen
class Organization:
    id: int
    name: str
    parameterized_name: str
    user_limit: int = 0


@attrs.frozen
class User:
    id: int
    email: str
    nick: str
    name: str
    password_hash: str = attrs.field(repr=False, default="")
    api_token: str = attrs.field(repr=False, default="")
    avatar: str = ""
    website: str = ""
    disabled: bool = False


@attrs.frozen
class Flow:
    id: str
    organization_id: int
    name: str
    parameterized_name: str
    access_mode: str = "organization"   # invitation | link | organization
    api_token: str = attrs.field(repr=False, default="")
    disabled: bool = False
    description: str = ""


@attrs.frozen
class FlowMember:
    """A user's membership of a flow, with their per-flow state."""
    flow_id: str
    user_id: int
    disabled: bool = False
    status: str | None = None
    last_activity: int = 0
    open: bool = True


@attrs.frozen
class Source:
    """An integration posting into one flow with its `flow_token`."""
    id: int
    flow_id: str
    name: str
    flow_token: str = attrs.field(repr=False)
    creator_id: int | None = None
    external_url: str = ""
    error_message: str = ""
    configuration_url: str = ""
    created_at: int = 0
    updated_at: int = 0
    deleted: bool = False


@attrs.frozen
class Invitation:
    id: int
    flow_id: str
    email: str
    state: str = "pending"
    message: str = ""
