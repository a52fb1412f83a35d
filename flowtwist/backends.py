"""Choose each port's implementation from the settings: the embedded default unless a
production server is configured."""
from __future__ import annotations

import os

from flowtwist.interfaces import Bus, Directory, MessageStore


def build_directory(settings: dict, reactor=None) -> Directory:
    if settings.get("postgres"):
        from flowtwist.store.postgres import PostgresDirectory
        return PostgresDirectory(settings["postgres"], reactor)
    from flowtwist.store.sqlite import SqliteDirectory
    return SqliteDirectory(os.path.join(settings["data"], "directory.sqlite3"), reactor)


def build_store(settings: dict, reactor=None) -> MessageStore:
    if settings.get("mongo"):
        from flowtwist.store.mongo import MongoMessageStore
        return MongoMessageStore(settings["mongo"], reactor)
    from flowtwist.store.sqlite import SqliteMessageStore
    return SqliteMessageStore(os.path.join(settings["data"], "messages.sqlite3"), reactor)


def build_bus(settings: dict, reactor=None) -> Bus:
    if settings.get("redis"):
        from flowtwist.bus.redis import RedisBus
        return RedisBus(settings["redis"], reactor)
    from flowtwist.bus.memory import MemoryBus
    return MemoryBus(reactor)
