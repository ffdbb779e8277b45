"""Start-up: read back what this node remembers, and hand back tasks a previous run left unfinished."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import structlog
from pydantic import ValidationError

from node_agent.agent.runs import NodeJob, TaskRun
from node_agent.errors import StoreCorrupt
from node_agent.store.records import RecordStore
from node_agent.wire.status import Task

if TYPE_CHECKING:
    from node_agent.agent.jobs import JobManager

log = structlog.get_logger(__name__)


def _read(store: RecordStore) -> list[tuple[str, dict[str, Any] | None, list[dict[str, Any]]]]:
    found = []
    for job_id in store.children(("jobs",)):
        record = store.load(("jobs", job_id, "job"))
        tasks = [
            store.load(("jobs", job_id, "tasks", task_id)) for task_id in store.children(("jobs", job_id, "tasks"))
        ]
        found.append((job_id, record, [task for task in tasks if task is not None]))
    return found


async def recover(manager: JobManager) -> None:
    await manager.ctx.processes.kill_orphans()
    unfinished: list[TaskRun] = []
    for job_id, record, tasks in await asyncio.to_thread(_read, manager.ctx.store):
        try:
            job = NodeJob.from_record(job_id, record) if record else NodeJob(id=job_id)
            runs = [TaskRun(job_id=job_id, task=Task.model_validate(document)) for document in tasks]
        except ValidationError as exc:
            error = exc.errors(include_url=False)[0]
            where = ".".join(str(part) for part in error["loc"])
            raise StoreCorrupt(
                f"a record of job {job_id!r} does not match its schema: {where}: {error['msg']}"
            ) from exc
        if job.prep_boot_id != manager.ctx.boot_id:
            job.prep_blocked = False  # a reboot lifts the block: the preparation will run again
        for run in runs:
            run.recorded.set()
            job.tasks[run.task.id] = run
            if not run.is_finished:
                unfinished.append(run)
        manager.jobs[job_id] = job
    for run in unfinished:
        await manager.hand_back(run, "NodeAgentRestarted", "the agent restarted while the task was on this node")
    log.info("recovery.done", jobs=len(manager.jobs), handed_back=len(unfinished))
