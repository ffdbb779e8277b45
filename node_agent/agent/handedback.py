"""Tasks this node handed back, remembered by the addTask that brought them (store key
("jobs", jobId, "handedback", taskId)), so that the same command delivered again by the broker after a crash
does not bring back a task the driver has placed elsewhere meanwhile.

Most jobs never hand a task back: once a job is seen to have no such record, its addTasks skip the lookup (a
thread hop each) until this node hands one of its tasks back.
"""

from __future__ import annotations

import asyncio

from node_agent.store.records import Key, RecordStore

_KNOWN_CLEAN_MAX = 4096  # job ids remembered as having no record (a cache: forgetting only costs a lookup)


class HandedBack:
    def __init__(self, store: RecordStore) -> None:
        self.store = store
        self._clean: set[str] = set()  # jobs with no handed-back record on this node
        self._remembered = 0  # how many were remembered: a lookup that raced one does not mark its job clean

    async def remember(self, job_id: str, task_id: str, request_id: str | None) -> None:
        if request_id is not None:
            self._clean.discard(job_id)
            self._remembered += 1
            await self.store.put(_key(job_id, task_id), {"requestId": request_id})

    async def is_redelivery(self, job_id: str, task_id: str, request_id: str | None) -> bool:
        """Whether this addTask is the one whose task this node already handed back (a new one places it anew)."""
        if request_id is None or job_id in self._clean:
            return False
        remembered = self._remembered
        folder_exists, record = await asyncio.to_thread(self._lookup, job_id, task_id)
        if not folder_exists and remembered == self._remembered:
            if len(self._clean) >= _KNOWN_CLEAN_MAX:
                self._clean.clear()
            self._clean.add(job_id)
        return record is not None and record.get("requestId") == request_id

    def _lookup(self, job_id: str, task_id: str) -> tuple[bool, dict[str, object] | None]:
        if not self.store.root.joinpath("jobs", job_id, "handedback").is_dir():
            return False, None
        return True, self.store.load(_key(job_id, task_id))


def _key(job_id: str, task_id: str) -> Key:
    return ("jobs", job_id, "handedback", task_id)
