"""``node-agent gc``: what the retention sweep would remove now and why, read from the agent's settings and state."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import datetime

from node_agent.agent.recovery import load_jobs
from node_agent.agent.retained import completed_task_deadlines
from node_agent.agent.runs import NodeJob
from node_agent.agent.sweeper import is_busy, is_job_ended, removal_parts
from node_agent.config import AgentSettings
from node_agent.identity.users import TaskUsers
from node_agent.retention.deadlines import Deadline, DeadlineBook
from node_agent.retention.pressure import Candidate, FreeSpaceProbe, pressure_order, relieve
from node_agent.retention.removal import remove_below, usage_below
from node_agent.store.records import RecordStore
from node_agent.wire.status import RemovalReason


@dataclass(frozen=True, slots=True)
class Planned:
    deadline: Deadline
    reason: RemovalReason
    size_bytes: int
    is_job_ended: bool
    error: str | None = None  # set when a removal (not a dry run) left something behind


@dataclass(slots=True)
class Collection:
    threshold_bytes: int
    dry_run: bool
    items: list[Planned] = field(default_factory=list)
    free_bytes: int | None = None  # measured before anything went
    free_after_bytes: int | None = None  # after the disk-pressure part (simulated in a dry run)
    is_low: bool = False


class _Collector:
    def __init__(self, settings: AgentSettings, book: DeadlineBook, jobs: dict[str, NodeJob], dry_run: bool):
        self.settings = settings
        self.book = book
        self.jobs = jobs
        self.result = Collection(threshold_bytes=settings.disk_free_threshold_bytes, dry_run=dry_run)
        self.probe = FreeSpaceProbe(settings.root, settings.disk_free_probe_file)
        self.simulated_free: int | None = None
        self.users = TaskUsers(settings.node_id, settings.pool_id)

    async def take(self, deadline: Deadline, reason: RemovalReason) -> bool:
        if is_busy(self.jobs, deadline) or any(item.deadline.key == deadline.key for item in self.result.items):
            return False
        root, parts = self.settings.root, removal_parts(deadline)
        error = None
        if self.result.dry_run:
            size = await asyncio.to_thread(usage_below, root, parts)
        else:
            removal = await asyncio.to_thread(remove_below, root, parts)
            size, error = (removal.bytes_freed if removal.existed else None), removal.error
            if removal.complete:
                await self.book.drop(deadline.key)
                await self.users.remove_task_users(deadline.job_id, deadline.task_id)  # as the agent does
        if size is None:
            return False  # already gone: nothing to show
        ended = is_job_ended(self.jobs, deadline.job_id)
        self.result.items.append(Planned(deadline, reason, size, ended, error))
        if self.simulated_free is not None:
            self.simulated_free += size
        return True

    async def free(self) -> int | None:
        if self.result.dry_run:
            return self.simulated_free  # measured once, plus what the planned removals hold
        return await asyncio.to_thread(self.probe.measure)


async def collect(settings: AgentSettings, now: datetime, *, dry_run: bool) -> Collection:
    """Expired directories first, then (with a threshold set) disk pressure, as one sweep of the agent.

    With ``dry_run`` nothing changes and the disk-pressure part is simulated (the free space measured once,
    plus what the directories listed before hold). Without it the directories are removed as the agent
    would; the caller holds the state directory's lock, and no event is published (there is no broker).
    """
    store = RecordStore(settings.resolved_state_dir)
    book = DeadlineBook(store)
    await book.load()
    jobs = await asyncio.to_thread(load_jobs, store)
    for deadline in await asyncio.to_thread(completed_task_deadlines, jobs, settings.root):
        book.hold(deadline)
    collector = _Collector(settings, book, jobs, dry_run)
    collector.result.free_bytes = await asyncio.to_thread(collector.probe.measure)
    if dry_run:
        collector.simulated_free = collector.result.free_bytes
    for deadline in book.due(now):
        await collector.take(deadline, "retention")
    result = collector.result
    if settings.disk_free_threshold_bytes > 0:
        jobs = collector.jobs
        candidates = [Candidate(d, is_job_ended(jobs, d.job_id)) for d in book.entries.values() if not is_busy(jobs, d)]
        relief = await relieve(
            pressure_order(candidates),
            settings.disk_free_threshold_bytes,
            collector.free,
            lambda deadline: collector.take(deadline, "diskPressure"),
        )
        result.free_after_bytes, result.is_low = relief.free_bytes, relief.is_low
    return result
