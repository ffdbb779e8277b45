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
# A record committed with the messages that announce it (a completed task: ADR 0010), kept until the agent has
# written it to its own file; the start-up applies what is left before it reads the records.
RECORDS_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    key TEXT PRIMARY KEY,
    data BLOB NOT NULL
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
        self.records_left: list[tuple[str, bytes]] = []  # what a previous run committed and did not forget

    async def _call(self, func: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._thread, func, *args)

    def _open(self) -> list[Stored]:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")  # each commit fsyncs the WAL: power loss keeps what was acknowledged
        db.execute(SCHEMA)
        db.execute(RECORDS_SCHEMA)
        self._db = db
        self.records_left = [(key, bytes(data)) for key, data in db.execute("SELECT key, data FROM records")]
        rows = db.execute("SELECT seq, topic, payload, retain FROM outbox ORDER BY seq").fetchall()
        return [Stored(seq, topic, bytes(payload), bool(retain)) for seq, topic, payload, retain in rows]

    async def open(self) -> list[Stored]:
        """Open (creating it if needed) and return what a previous run left unsent, oldest first."""
        return await self._call(self._open)

    def _apply(
        self,
        added: Sequence[tuple[str, bytes, bool]],
        acked: Sequence[int],
        records: Sequence[tuple[str, bytes | None]] = (),
    ) -> list[int]:
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
            for key, data in records:  # in call order: a record put, then forgotten, is gone
                if data is None:
                    db.execute("DELETE FROM records WHERE key = ?", (key,))
                else:
                    db.execute("INSERT OR REPLACE INTO records (key, data) VALUES (?, ?)", (key, data))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return seqs

    async def apply(
        self,
        added: Sequence[tuple[str, bytes, bool]],
        acked: Sequence[int],
        records: Sequence[tuple[str, bytes | None]] = (),
    ) -> list[int]:
        """One transaction: append ``added`` (returns their sequence numbers, in order), forget ``acked``, and
        put or (``None``) delete ``records``."""
        return await self._call(self._apply, list(added), list(acked), list(records))

    def _close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    async def close(self) -> None:
        await self._call(self._close)
        self._thread.shutdown(wait=False)
