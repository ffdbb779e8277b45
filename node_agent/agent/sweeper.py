"""The retention sweep: task directories past their retentionTime go, and under disk pressure the oldest completed."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import structlog

from node_agent.agent.runs import NodeJob
from node_agent.retention.deadlines import Deadline, DeadlineBook, DirectoryKind
from node_agent.retention.pressure import Candidate, FreeSpaceProbe, pressure_order, relieve
from node_agent.retention.removal import remove_below
from node_agent.wire.base import utcnow
from node_agent.wire.specs import JobState
from node_agent.wire.status import RemovalReason, SubtaskState

if TYPE_CHECKING:
    from node_agent.agent.jobs import JobManager
    from node_agent.agent.node_state import NodeStateReporter

log = structlog.get_logger(__name__)


def is_job_ended(jobs: Mapping[str, NodeJob], job_id: str) -> bool:
    """Whether the job can run no more tasks on this node (a job this node no longer knows counts as ended)."""
    job = jobs.get(job_id)
    if job is None:
        return True
    return job.ending is not None or (job.doc is not None and job.doc.state != JobState.ACTIVE)


def is_busy(jobs: Mapping[str, NodeJob], deadline: Deadline) -> bool:
    """Whether a task of this node may still use the directory: never removed then, whatever its deadline."""
    job = jobs.get(deadline.job_id)
    if job is None:
        return False
    match deadline.kind:
        case DirectoryKind.TASK:
            run = job.tasks.get(deadline.task_id)
            return run is not None and not run.is_finished
        case DirectoryKind.PREPARATION:  # its working dir serves the job's tasks and release until the job ends
            running = job.prep_run is not None and not job.prep_run.done()
            return running or not is_job_ended(jobs, deadline.job_id)
        case DirectoryKind.RELEASE:
            return job.release is not None and job.release.state == SubtaskState.RUNNING


def removal_parts(deadline: Deadline) -> tuple[str, ...]:
    """The directory below the node root (PROTOCOL.md "Files on a node"), built from validated ids."""
    return ("workitems", deadline.job_id, "job-1", deadline.task_id)


@dataclass(frozen=True, slots=True)
class DiskPolicy:
    probe: FreeSpaceProbe
    threshold_bytes: int  # 0: no disk-pressure cleanup


class Sweeper:
    """Owned by the supervisor's TaskGroup; one pass at start (cleaning what fell due while the agent was
    away), then one every ``retention_sweep_interval`` until ``stopping`` is set."""

    def __init__(self, manager: JobManager, book: DeadlineBook, disk: DiskPolicy, reporter: NodeStateReporter) -> None:
        self.manager = manager
        self.book = book
        self.disk = disk
        self.reporter = reporter
        self.root: Path = manager.ctx.layout.root
        self._stopping = asyncio.Event()

    async def run(self, interval_s: float, stopping: asyncio.Event) -> None:
        self._stopping = stopping
        while not stopping.is_set():
            try:
                await self.sweep()
            except Exception:  # a node fault (disk, permissions) skips this pass; the next one tries again
                log.exception("retention.sweep_failed")
            try:
                async with asyncio.timeout(interval_s):
                    await stopping.wait()
            except TimeoutError:
                pass

    async def sweep(self) -> None:
        """One pass: every deadline that has passed, then disk pressure."""
        for deadline in self.book.due(utcnow()):
            await self._remove(deadline, "retention")
        if self.disk.threshold_bytes > 0 and not self._stopping.is_set():
            await self._relieve_pressure()

    async def _relieve_pressure(self) -> None:
        jobs = self.manager.jobs
        candidates = [
            Candidate(deadline, is_job_ended(jobs, deadline.job_id))
            for deadline in self.book.entries.values()
            if not is_busy(jobs, deadline)
        ]
        relief = await relieve(
            pressure_order(candidates),
            self.disk.threshold_bytes,
            lambda: asyncio.to_thread(self.disk.probe.measure),
            lambda deadline: self._remove(deadline, "diskPressure"),
        )
        if self._stopping.is_set():
            return
        if relief.free_bytes is None:
            log.warning("disk.free_unknown", probe_file=str(self.disk.probe.probe_file or ""))
        elif relief.is_low != self.reporter.is_low_on_disk:
            level = log.warning if relief.is_low else log.info
            level("disk.low" if relief.is_low else "disk.recovered", free_bytes=relief.free_bytes)
        if relief.free_bytes is not None:
            self.reporter.set_disk(relief.free_bytes, is_low=relief.is_low)

    async def _remove(self, deadline: Deadline, reason: RemovalReason) -> bool:
        """Remove one directory unless the agent is stopping, it is in use again or its record changed."""
        if self._stopping.is_set() or self.book.entries.get(deadline.key) != deadline:
            return False
        if is_busy(self.manager.jobs, deadline):
            return False
        async with self.book.removing(deadline.key):
            removal = await asyncio.to_thread(remove_below, self.root, removal_parts(deadline))
        fields = {"job_id": deadline.job_id, "task_id": deadline.task_id, "reason": reason}
        if not removal.complete:
            log.warning("retention.removal_incomplete", **fields, bytes_freed=removal.bytes_freed, error=removal.error)
            return removal.bytes_freed > 0
        await asyncio.shield(self.book.drop(deadline.key))
        await self.manager.ctx.users.remove_task_users(deadline.job_id, deadline.task_id)  # a task-scope user
        if not removal.existed:
            log.debug("retention.already_gone", **fields)
            return False
        log.info("retention.removed", **fields, directory=deadline.directory, bytes_freed=removal.bytes_freed)
        self.manager.ctx.publisher.directory_removed(deadline.job_id, deadline.task_id, reason, removal.bytes_freed)
        return True
