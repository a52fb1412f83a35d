"""Credentials: password hashing, and authentication that does not pay the slow hash
on every request.

A successful email+password check is remembered as an HMAC of the credentials (never
the password itself) for a few minutes; a changed password or a disabled user evicts
it.  Token look-ups are cached for a few seconds so that a revoked token stops working
quickly across processes.
"""
from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import time

import bcrypt
from twisted.internet import threads

from flowtwist.interfaces import Directory
from flowtwist.model import User

# Tests set this lower; production keeps bcrypt's cost at 12 (about 0.25 s a check).
BCRYPT_ROUNDS = int(os.environ.get("FLOWTWIST_BCRYPT_ROUNDS", "12"))


def hash_password(password: str, rounds: int | None = None) -> str:
    return bcrypt.hashpw(password.encode("utf-8"),
                         bcrypt.gensalt(rounds or BCRYPT_ROUNDS)).decode("ascii")


def check_password(password: str, hashed: str) -> bool:
    if not hashed:
        return False
    try:
        return bcrypt.checkpw(password.encode("utf-8"), hashed.encode("ascii"))
    except ValueError:
        return False


class TTLCache:
    """A small dict whose entries expire; bounded so hostile input cannot grow it."""

    def __init__(self, ttl: float, max_size: int = 10_000, clock=time.monotonic):
        self._ttl = ttl
        self._max = max_size
        self._clock = clock
        self._data: dict = {}

    def get(self, key):
        entry = self._data.get(key)
        if entry is None:
            return None
        value, expires = entry
        if expires < self._clock():
            del self._data[key]
            return None
        return value

    def put(self, key, value):
        if len(self._data) >= self._max:
            self._data.clear()
        self._data[key] = (value, self._clock() + self._ttl)

    def discard(self, key):
        self._data.pop(key, None)

    def clear(self):
        self._data.clear()


class Accounts:
    def __init__(self, directory: Directory, password_ttl: float = 300.0,
                 token_ttl: float = 5.0, clock=time.monotonic):
        self.directory = directory
        self._secret = secrets.token_bytes(32)
        self._passwords = TTLCache(password_ttl, clock=clock)
        self._tokens = TTLCache(token_ttl, clock=clock)

    def _fingerprint(self, email: str, password: str, password_hash: str) -> bytes:
        msg = "\0".join((email.lower(), password, password_hash)).encode("utf-8")
        return hmac.new(self._secret, msg, hashlib.sha256).digest()

    async def by_token(self, token: str) -> User | None:
        if not token or len(token) > 256:
            return None
        user = self._tokens.get(token)
        if user is None:
            user = await self.directory.user_by_token(token)
            if user is None:
                return None
            self._tokens.put(token, user)
        return None if user.disabled else user

    async def by_password(self, email: str, password: str) -> User | None:
        if not email or len(email) > 320 or len(password) > 1024:
            return None
        user = await self.directory.user_by_email(email)
        if user is None or user.disabled:
            return None
        key = self._fingerprint(email, password, user.password_hash)
        if self._passwords.get(key):
            return user
        ok = await threads.deferToThread(check_password, password, user.password_hash)
        if not ok:
            return None
        self._passwords.put(key, True)
        return user

    async def by_basic(self, username: str, password: str) -> User | None:
        """Basic auth: a personal API token as user name (any password), else email."""
        user = await self.by_token(username)
        if user is not None:
            return user
        return await self.by_password(username, password)

    def forget(self, user: User | None = None) -> None:
        """Drop cached credentials after a change (password, token, disable)."""
        self._tokens.clear()
        if user is None:
            self._passwords.clear()
