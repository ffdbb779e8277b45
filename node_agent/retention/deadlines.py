"""The durable retention deadlines: when each completed task directory on this node is due for removal."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from node_agent.errors import StoreCorrupt
from node_agent.ids import is_valid_id
from node_agent.store.records import RecordStore

Key = tuple[str, str]  # (jobId, taskId)


class DirectoryKind(StrEnum):
    TASK = "task"
    PREPARATION = "preparation"
    RELEASE = "release"


@dataclass(frozen=True, slots=True)
class Deadline:
    """One directory no task of the node needs any more (a completed or handed-back task, a completed release,
    a preparation once its job has ended here), stored under ``("retention", jobId, taskId)``; ``completed_at``
    orders removals under disk pressure, ``deadline`` is when the retention sweep removes it."""

    job_id: str
    task_id: str
    kind: DirectoryKind
    completed_at: datetime
    deadline: datetime
    directory: str  # relative to the node root, for people; removal derives the path from the ids

    @property
    def key(self) -> Key:
        return (self.job_id, self.task_id)

    def record(self) -> dict[str, Any]:
        return {
            "version": 1,
            "jobId": self.job_id,
            "taskId": self.task_id,
            "kind": str(self.kind),
            "completedAt": self.completed_at.isoformat(),
            "deadline": self.deadline.isoformat(),
            "directory": self.directory,
        }

    @classmethod
    def from_record(cls, key: Key, record: dict[str, Any]) -> Deadline:
        """Parse a stored record; StoreCorrupt when it is not one (or names other ids than its key)."""
        try:
            deadline = cls(
                job_id=record["jobId"],
                task_id=record["taskId"],
                kind=DirectoryKind(record["kind"]),
                completed_at=datetime.fromisoformat(record["completedAt"]),
                deadline=datetime.fromisoformat(record["deadline"]),
                directory=str(record["directory"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise StoreCorrupt(f"retention record {key} does not match its schema: {exc!r}") from exc
        if deadline.key != key or not all(is_valid_id(part) for part in key):
            raise StoreCorrupt(f"retention record {key} names another task: {deadline.key}")
        if deadline.completed_at.tzinfo is None or deadline.deadline.tzinfo is None:
            raise StoreCorrupt(f"retention record {key} has a time without a time zone")
        return deadline


def read_deadlines(store: RecordStore) -> dict[Key, Deadline]:
    """Every retention record of the store (blocking: call through asyncio.to_thread from the loop)."""
    found: dict[Key, Deadline] = {}
    for job_id in store.children(("retention",)):
        for task_id in store.children(("retention", job_id)):
            record = store.load(("retention", job_id, task_id))
            if record is not None:
                found[(job_id, task_id)] = Deadline.from_record((job_id, task_id), record)
    return found


class DeadlineBook:
    """The deadlines in memory, each change written to the store first (but those held from task records);
    the only writer of the retention records."""

    def __init__(self, store: RecordStore, entries: dict[Key, Deadline] | None = None) -> None:
        self.store = store
        self.entries: dict[Key, Deadline] = entries or {}
        self._removing: dict[Key, asyncio.Event] = {}

    async def load(self) -> None:
        self.entries = await asyncio.to_thread(read_deadlines, self.store)

    def due(self, now: datetime) -> list[Deadline]:
        """The deadlines that have passed, earliest first."""
        return sorted((d for d in self.entries.values() if d.deadline <= now), key=lambda d: (d.deadline, d.key))

    async def schedule(self, deadline: Deadline, *, keep_existing: bool = False) -> Deadline:
        """Record a deadline durably; with ``keep_existing`` an earlier record of the directory wins."""
        known = self.entries.get(deadline.key)
        if keep_existing and known is not None:
            return known
        await self.store.put(("retention", *deadline.key), deadline.record())
        self.entries[deadline.key] = deadline
        return deadline

    def hold(self, deadline: Deadline) -> None:
        """Hold a deadline the store keeps in another record (a completed task's, ``agent/retained.py``):
        in memory only. It replaces a stored one of the directory, which ``drop`` removes with it."""
        self.entries[deadline.key] = deadline

    async def drop(self, key: Key) -> None:
        self.entries.pop(key, None)
        await self.store.delete(("retention", *key))

    async def drop_job(self, job_id: str) -> None:
        for key in [key for key in self.entries if key[0] == job_id]:
            del self.entries[key]
        await self.store.delete_tree(("retention", job_id))

    async def claim(self, job_id: str, task_id: str) -> None:
        """A task is about to use its directory again (it was handed back, then added here once more): wait
        for a removal in flight to end, and forget the deadline."""
        key = (job_id, task_id)
        if (removing := self._removing.get(key)) is not None:
            await removing.wait()
        if key in self.entries:
            await self.drop(key)

    @contextlib.asynccontextmanager
    async def removing(self, key: Key) -> AsyncIterator[None]:
        """Mark a removal in flight, so that ``claim`` waits for it."""
        done = self._removing[key] = asyncio.Event()
        try:
            yield
        finally:
            del self._removing[key]
            done.set()
