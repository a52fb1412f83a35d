"""The assembled application: the ports, the pipeline and the logic layer that every
edge (REST, stream, WebSocket, IRC, SMTP, feeds) is given."""
from __future__ import annotations

import attrs

from flowtwist.accounts import Accounts
from flowtwist.chat import Chat
from flowtwist.files import FileStore
from flowtwist.interfaces import Bus, Directory, MessageStore
from flowtwist.pipeline import Pipeline


@attrs.define
class App:
    bus: Bus
    store: MessageStore
    directory: Directory
    pipeline: Pipeline
    chat: Chat
    accounts: Accounts
    files: FileStore
    public_url: str = "http://localhost:8080"
    stream_url: str = "http://localhost:8081"
    server_name: str = "flowtwist"

    @classmethod
    def assemble(cls, bus: Bus, store: MessageStore, directory: Directory, data_dir: str,
                 reactor=None, **config) -> "App":
        pipeline = Pipeline(bus, store, directory, reactor)
        files = FileStore(data_dir)
        chat = Chat(directory, store, pipeline, files=files)
        return cls(bus=bus, store=store, directory=directory, pipeline=pipeline, chat=chat,
                   accounts=Accounts(directory), files=files, **config)

    async def start(self) -> None:
        await self.directory.start()
        await self.store.start()
        await self.bus.start()
        self.pipeline.start_consumer()

    async def stop(self) -> None:
        await self.bus.stop()
        await self.store.stop()
        await self.directory.stop()
