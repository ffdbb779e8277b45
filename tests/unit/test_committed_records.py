"""Completed task records the outbox still holds at start-up (ADR 0010): applied only to the record they complete."""

from __future__ import annotations

import json
from pathlib import Path

from node_agent.agent.recovery import apply_committed
from node_agent.store.records import RecordStore
from node_agent.transport.outbox import OutboxStore


def _row(task_id: str, request_id: str, state: str = "completed") -> tuple[str, bytes]:
    record = {"id": task_id, "state": state, "requestId": request_id, "published": True}
    return f"jobs/j1/tasks/{task_id}", json.dumps(record).encode()


async def test_a_committed_record_completes_only_its_own_unfinished_record(tmp_path: Path) -> None:
    store = RecordStore(tmp_path)
    await store.put(("jobs", "j1", "tasks", "a"), {"id": "a", "state": "active", "requestId": "r-a"})
    await store.put(("jobs", "j1", "tasks", "b"), {"id": "b", "state": "completed", "requestId": "r-b", "x": 1})
    await store.put(("jobs", "j1", "tasks", "c"), {"id": "c", "state": "active", "requestId": "r-new"})
    rows = [
        _row("a", "r-a"),  # the crash came between the outbox commit and the record file: applied
        _row("b", "r-b"),  # already written to its file: left as it is
        _row("c", "r-old"),  # an earlier addTask of the same id (handed back, added again): not this one's
        _row("d", "r-d"),  # no record any more (handed back, job deleted or reimaged): not brought back
        ("jobs/j1/../x", b"{}"),  # not a task's key: ignored
    ]
    await apply_committed(store, rows)
    assert store.load(("jobs", "j1", "tasks", "a")) == json.loads(rows[0][1])
    assert store.load(("jobs", "j1", "tasks", "b")) == {"id": "b", "state": "completed", "requestId": "r-b", "x": 1}
    assert store.load(("jobs", "j1", "tasks", "c")) == {"id": "c", "state": "active", "requestId": "r-new"}
    assert store.load(("jobs", "j1", "tasks", "d")) is None


async def test_records_are_committed_with_the_messages_and_read_back_until_deleted(tmp_path: Path) -> None:
    outbox = OutboxStore(tmp_path / "outbox.sqlite3")
    await outbox.open()
    await outbox.apply([("t/1", b"state", True)], [], [("jobs/j1/tasks/a", b"{}"), ("jobs/j1/tasks/b", b"{}")])
    await outbox.apply([], [], [("jobs/j1/tasks/b", None)])
    await outbox.close()

    again = OutboxStore(tmp_path / "outbox.sqlite3")
    assert [row.topic for row in await again.open()] == ["t/1"]
    assert again.records_left == [("jobs/j1/tasks/a", b"{}")]
    await again.close()
