"""Durable records as small JSON files, each replaced atomically (write, fsync, rename, fsync dir)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from node_agent.errors import StoreCorrupt

Key = tuple[str, ...]  # validated ids only: ("jobs", job_id, "tasks", task_id)


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


@dataclass(slots=True)
class _KeyLock:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0  # holding or waiting


class RecordStore:
    """Key -> JSON document under the state directory; writes to one key are applied in call order."""

    def __init__(self, state_dir: Path) -> None:
        self.root = state_dir
        self._locks: dict[Key, _KeyLock] = {}

    @asynccontextmanager
    async def _exclusive(self, key: Key) -> AsyncIterator[None]:
        """One writer of ``key`` at a time, in call order (asyncio.Lock is FIFO). The lock is forgotten once
        nobody holds or waits for it, so the agent does not keep one per key it ever wrote."""
        entry = self._locks.setdefault(key, _KeyLock())
        entry.users += 1
        try:
            async with entry.lock:
                yield
        finally:
            entry.users -= 1
            if entry.users == 0:
                del self._locks[key]

    def _path(self, key: Key) -> Path:
        return self.root.joinpath(*key[:-1], key[-1] + ".json")

    async def put(self, key: Key, document: dict[str, Any]) -> None:
        data = json.dumps(document, separators=(",", ":")).encode()
        async with self._exclusive(key):
            await asyncio.to_thread(_write_atomic, self._path(key), data)

    async def delete(self, key: Key) -> None:
        async with self._exclusive(key):
            await asyncio.to_thread(self._path(key).unlink, missing_ok=True)

    async def delete_tree(self, key: Key) -> None:
        """Remove every record below ``key`` (a job and its tasks)."""
        await asyncio.to_thread(shutil.rmtree, self.root.joinpath(*key), ignore_errors=True)

    def load(self, key: Key) -> dict[str, Any] | None:
        """Read one record (start-up only; call through asyncio.to_thread from the loop)."""
        path = self._path(key)
        try:
            document = json.loads(path.read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise StoreCorrupt(f"record {path} is unreadable: {exc}") from exc
        if not isinstance(document, dict):
            raise StoreCorrupt(f"record {path} is unreadable: not a JSON object")
        return document

    def children(self, key: Key) -> list[str]:
        """Names of the records and folders directly below ``key`` (start-up only)."""
        folder = self.root.joinpath(*key)
        if not folder.is_dir():
            return []
        return sorted(entry.name.removesuffix(".json") for entry in folder.iterdir() if not entry.name.startswith("."))
