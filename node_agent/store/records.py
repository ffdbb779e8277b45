"""Durable records as small JSON files, each replaced atomically; durable writes are group-committed.

``put`` returns once the record is durable (``store/commit.py`` says how a batch of writes shares its
fsyncs); ``put_unsynced`` replaces the record just as atomically but skips the fsyncs, for records that only
matter while the machine keeps running.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from node_agent.errors import StoreCorrupt
from node_agent.store.commit import GroupCommitter, KnownDirs, Write, write_files

Key = tuple[str, ...]  # validated ids only: ("jobs", job_id, "tasks", task_id)


@dataclass(slots=True)
class _KeyLock:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0  # holding or waiting


class RecordStore:
    """Key -> JSON document under the state directory; writes to one key are applied in call order."""

    def __init__(self, state_dir: Path) -> None:
        self.root = state_dir
        self._locks: dict[Key, _KeyLock] = {}
        self._dirs = KnownDirs()
        self._committer = GroupCommitter(self._dirs)

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
        """Replace the record; return once it is durable (it shares its fsyncs with concurrent puts)."""
        await self.put_json(key, json.dumps(document, separators=(",", ":")).encode())

    async def put_json(self, key: Key, data: bytes) -> None:
        """``put`` of a document already serialised: ``data`` must be one JSON object (UTF-8)."""
        write = Write(self._path(key), data)
        async with self._exclusive(key):
            await self._committer.commit(write)

    async def put_unsynced(self, key: Key, document: dict[str, Any]) -> None:
        """Replace the record atomically without an fsync: a killed agent finds it, a power loss may not
        (the record may then be missing or empty: its reader must accept that)."""
        write = Write(self._path(key), json.dumps(document, separators=(",", ":")).encode())
        async with self._exclusive(key):
            [error] = await asyncio.to_thread(write_files, [write], self._dirs, durable=False)
        if error is not None:
            raise error

    async def delete(self, key: Key) -> None:
        async with self._exclusive(key):
            await asyncio.to_thread(self._path(key).unlink, missing_ok=True)

    async def delete_tree(self, key: Key) -> None:
        """Remove every record below ``key`` (a job and its tasks)."""
        top = self.root.joinpath(*key)
        await asyncio.to_thread(shutil.rmtree, top, ignore_errors=True)
        self._dirs.forget_below(top)

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
