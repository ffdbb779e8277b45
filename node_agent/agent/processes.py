"""Finding and killing task processes a killed agent left behind, so no task runs twice.

Task processes run in their own session and outlive an agent killed with SIGKILL. The agent hands such
tasks back on its next start; their processes must not keep running beside the new attempt elsewhere.
Two nets catch them: the pids recorded just after each spawn (with their start time, so a reused pid is
never killed), and every process whose environment names this node root in AZ_BATCH_NODE_ROOT_DIR (which
also covers a kill in the moment between spawn and record).

The pid records are written without an fsync (``RecordStore.put_unsynced``): they guard against an agent
killed while the machine keeps running, and then the page cache that holds them survives too. A power loss
or a reboot ends the task processes with the agent, so a record it loses or leaves empty names nothing
that still runs; an unreadable one is skipped, never fatal. This keeps two fsyncs off the path from a
spawn to the task's process running.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass

import psutil
import structlog

from node_agent.errors import StoreCorrupt
from node_agent.runner.tree import kill_tree
from node_agent.store.records import RecordStore

log = structlog.get_logger(__name__)


def _create_time(pid: int) -> float | None:
    try:
        return float(psutil.Process(pid).create_time())
    except psutil.Error:
        return None


def _below(pid: int, spare: set[int] | frozenset[int]) -> bool:
    """Whether an adopted supervisor is among the process's ancestors (a child it started after the scan)."""
    try:
        return any(parent.pid in spare for parent in psutil.Process(pid).parents())
    except psutil.Error:
        return False


@dataclass(frozen=True, slots=True)
class ProcessTracker:
    """Records one task's process while it runs (store key ("processes", jobId, taskId))."""

    store: RecordStore
    job_id: str
    task_id: str

    async def started(self, pid: int) -> None:
        created = await asyncio.to_thread(_create_time, pid)
        await self.store.put_unsynced(("processes", self.job_id, self.task_id), {"pid": pid, "createTime": created})

    async def ended(self) -> None:
        await self.store.delete(("processes", self.job_id, self.task_id))


class ProcessRegistry:
    def __init__(self, store: RecordStore, node_root: str) -> None:
        self.store = store
        self.node_root = node_root

    def track(self, job_id: str, task_id: str) -> ProcessTracker:
        return ProcessTracker(self.store, job_id, task_id)

    async def kill_orphans(self, spare: set[int] | frozenset[int] = frozenset()) -> int:
        """Kill every recorded process that still runs (same pid and start time), then forget them all;
        ``spare`` are the adopted supervisors and their tasks (ADR 0011)."""
        killed = await asyncio.to_thread(self._kill_orphans, spare)
        await self.store.delete_tree(("processes",))
        if killed:
            log.warning("recovery.orphans_killed", processes=killed)
        return killed

    def _kill_orphans(self, spare: set[int] | frozenset[int]) -> int:
        pids = {pid for pid in (self._recorded() | self._of_this_node()) - spare if not _below(pid, spare)}
        return sum(kill_tree(pid) for pid in pids)

    def _recorded(self) -> set[int]:
        found = set()
        for job_id in self.store.children(("processes",)):
            for task_id in self.store.children(("processes", job_id)):
                try:
                    record = self.store.load(("processes", job_id, task_id)) or {}
                except StoreCorrupt:  # torn by a power loss (not fsynced): its process ended with the machine
                    continue
                pid, created = record.get("pid"), record.get("createTime")
                if isinstance(pid, int) and created is not None and _create_time(pid) == created:
                    found.add(pid)
        return found

    def _of_this_node(self) -> set[int]:
        """Processes started as tasks of this node root (the agent that started them is gone: we just started)."""
        found = set()
        this_agent = {os.getpid(), *(parent.pid for parent in psutil.Process().parents())}
        for proc in psutil.process_iter():
            if proc.pid in this_agent:  # never the agent itself, even when it was started from a task
                continue
            try:
                if proc.environ().get("AZ_BATCH_NODE_ROOT_DIR") == self.node_root:
                    found.add(proc.pid)
            except psutil.Error:
                continue
        return found
