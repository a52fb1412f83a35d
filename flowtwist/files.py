"""Uploaded files, kept in the data folder by content hash."""
from __future__ import annotations

import hashlib
import os
import re

from twisted.internet import threads

MAX_FILE = 10 * 1024 * 1024


def safe_name(name: str) -> str:
    name = os.path.basename(name.replace("\\", "/")).strip() or "file"
    return re.sub(r"[^\w.\- ]", "_", name)[:200]


class FileStore:
    def __init__(self, data_dir: str):
        self.root = os.path.join(data_dir, "files")

    async def save(self, owner: str, data: bytes, content_type: str, file_name: str) -> dict:
        """Store bytes; returns the attachment object of the message."""
        from flowtwist.model import ValidationError
        if len(data) > MAX_FILE:
            raise ValidationError({"content": ["file is too large"]})
        digest = hashlib.sha256(data).hexdigest()[:32]
        name = safe_name(file_name)
        owner_dir = hashlib.sha256(owner.encode()).hexdigest()[:16]
        path = os.path.join(self.root, owner_dir, digest)
        await threads.deferToThread(self._write, path, owner, data, content_type)
        return {"path": f"/files/{owner_dir}/{digest}/{name}", "file_name": name,
                "file_size": len(data), "content_type": content_type}

    @staticmethod
    def _write(path: str, owner: str, data: bytes, content_type: str) -> None:
        os.makedirs(path, exist_ok=True)
        with open(os.path.join(path, "data"), "wb") as f:
            f.write(data)
        with open(os.path.join(path, "meta"), "w") as f:
            f.write(content_type + "\n" + owner)

    async def load(self, owner_dir: str, digest: str) -> tuple[bytes, str, str] | None:
        """(bytes, content type, owning conversation) or None."""
        if not re.fullmatch(r"[0-9a-f]{16}", owner_dir) or not re.fullmatch(r"[0-9a-f]{32}", digest):
            return None
        path = os.path.join(self.root, owner_dir, digest)
        return await threads.deferToThread(self._read, path)

    @staticmethod
    def _read(path: str):
        try:
            with open(os.path.join(path, "data"), "rb") as f:
                data = f.read()
            with open(os.path.join(path, "meta")) as f:
                content_type, owner = f.read().split("\n", 1)
            return data, content_type, owner
        except FileNotFoundError:
            return None
