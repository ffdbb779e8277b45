"""The durable outbox: messages waiting for the broker, in order, in one SQLite file (WAL) on the node.

Every message the agent publishes is appended here before it is sent, and deleted once the broker has
acknowledged it (PUBACK). An agent killed meanwhile sends what is left, in the same order, after it
starts again; so a message may go out twice (the copy is byte-identical), never zero times
([ADR 0010](../../docs/adr/0010-durable-outbox.md)).

All SQLite calls run on one worker thread of their own: the connection is never used from the event loop.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")
OUTBOX_FILE = "outbox.sqlite3"  # in the state directory

SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    retain INTEGER NOT NULL
)
"""


@dataclass(frozen=True, slots=True)
class Stored:
    seq: int
    topic: str
    payload: bytes
    retain: bool


class OutboxStore:
    """Append, read back in order, delete acknowledged: the three things the transport needs."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="outbox")
        self._db: sqlite3.Connection | None = None

    async def _call(self, func: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._thread, func, *args)

    def _open(self) -> list[Stored]:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")  # each commit fsyncs the WAL: power loss keeps what was acknowledged
        db.execute(SCHEMA)
        self._db = db
        rows = db.execute("SELECT seq, topic, payload, retain FROM outbox ORDER BY seq").fetchall()
        return [Stored(seq, topic, bytes(payload), bool(retain)) for seq, topic, payload, retain in rows]

    async def open(self) -> list[Stored]:
        """Open (creating it if needed) and return what a previous run left unsent, oldest first."""
        return await self._call(self._open)

    def _apply(self, added: Sequence[tuple[str, bytes, bool]], acked: Sequence[int]) -> list[int]:
        assert self._db is not None
        db = self._db
        seqs = []
        db.execute("BEGIN IMMEDIATE")
        try:
            for topic, payload, retain in added:
                cursor = db.execute(
                    "INSERT INTO outbox (topic, payload, retain) VALUES (?, ?, ?)", (topic, payload, int(retain))
                )
                assert cursor.lastrowid is not None
                seqs.append(cursor.lastrowid)
            db.executemany("DELETE FROM outbox WHERE seq = ?", [(seq,) for seq in acked])
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return seqs

    async def apply(self, added: Sequence[tuple[str, bytes, bool]], acked: Sequence[int]) -> list[int]:
        """One transaction: append ``added`` (returns their sequence numbers, in order), forget ``acked``."""
        return await self._call(self._apply, list(added), list(acked))

    def _close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    async def close(self) -> None:
        await self._call(self._close)
        self._thread.shutdown(wait=False)
