"""Tasks this node handed back, remembered by the addTask that brought them (store key
("jobs", jobId, "handedback", taskId)), so that the same command delivered again by the broker after a crash
does not bring back a task the driver has placed elsewhere meanwhile."""

from __future__ import annotations

import asyncio

from node_agent.store.records import RecordStore


async def remember(store: RecordStore, job_id: str, task_id: str, request_id: str | None) -> None:
    if request_id is not None:
        await store.put(("jobs", job_id, "handedback", task_id), {"requestId": request_id})


async def is_redelivery(store: RecordStore, job_id: str, task_id: str, request_id: str | None) -> bool:
    """Whether this addTask is the one whose task this node already handed back (a new one places it anew)."""
    if request_id is None:
        return False
    record = await asyncio.to_thread(store.load, ("jobs", job_id, "handedback", task_id))
    return record is not None and record.get("requestId") == request_id
