"""RecordStore: per-key write order, and no memory kept per key once its writes are done."""

from __future__ import annotations

import asyncio
from pathlib import Path

from node_agent.store.records import RecordStore


async def test_writes_to_one_key_apply_in_call_order_and_leave_no_lock_behind(tmp_path: Path) -> None:
    store = RecordStore(tmp_path)
    key = ("jobs", "j", "tasks", "t")
    await asyncio.gather(*(store.put(key, {"n": n}) for n in range(20)))
    assert store.load(key) == {"n": 19}
    await asyncio.gather(*(store.put(("jobs", "j", "tasks", f"t{n}"), {"n": n}) for n in range(50)))
    await store.delete(key)
    assert store.load(key) is None
    assert store._locks == {}  # one lock per key ever written was a leak of about 1 KB per task
