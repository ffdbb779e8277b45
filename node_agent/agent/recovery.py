"""Start-up: read back what this node remembers, and hand back tasks a previous run left unfinished."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime
from typing import TYPE_CHECKING, Any

import structlog
from pydantic import ValidationError

from node_agent.agent.attempts import Outcome, Resume
from node_agent.agent.retained import completed_task_deadlines
from node_agent.agent.runs import NodeJob, TaskRun
from node_agent.errors import StoreCorrupt
from node_agent.ids import is_valid_id
from node_agent.store.records import RecordStore
from node_agent.wire.base import utcnow
from node_agent.wire.status import SubtaskState, Task, TaskState

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


def jobs_from(found: list[tuple[str, dict[str, Any] | None, list[dict[str, Any]]]]) -> dict[str, NodeJob]:
    """The jobs and tasks of the store as in-memory records (StoreCorrupt for one that is not its schema)."""
    jobs: dict[str, NodeJob] = {}
    for job_id, record, tasks in found:
        try:
            job = NodeJob.from_record(job_id, record) if record else NodeJob(id=job_id)
            runs = [
                TaskRun(
                    job_id=job_id,
                    task=Task.model_validate(document),
                    request_id=document.get("requestId"),
                    published=document.get("published", True),
                    boot_id=document.get("bootId"),
                )
                for document in tasks
            ]
        except ValidationError as exc:
            error = exc.errors(include_url=False)[0]
            where = ".".join(str(part) for part in error["loc"])
            raise StoreCorrupt(
                f"a record of job {job_id!r} does not match its schema: {where}: {error['msg']}"
            ) from exc
        for run in runs:
            run.recorded.set()
            job.tasks[run.task.id] = run
        jobs[job_id] = job
    return jobs


async def apply_committed(store: RecordStore, rows: list[tuple[str, bytes]]) -> None:
    """Write the task records a previous run committed to the outbox with their results (ADR 0010) and had not
    yet written to their own files; called before anything reads the records. A row applies only to the record
    it completes: that task's record, still unfinished, from the same addTask (requestId); anything else (a
    record already completed, a task handed back, a job deleted or reimaged away since) keeps its file."""
    applied = 0
    for key, data in rows:
        parts = tuple(key.split("/"))
        if len(parts) != 4 or parts[0::2] != ("jobs", "tasks") or not all(map(is_valid_id, parts[1::2])):
            log.warning("recovery.committed_record_ignored", key=key)
            continue
        if await asyncio.to_thread(_completes, store, parts, data):
            await store.put_json(parts, data)
            applied += 1
    if rows:
        log.info("recovery.committed_records", records=len(rows), applied=applied)


def _completes(store: RecordStore, key: tuple[str, ...], data: bytes) -> bool:
    current = store.load(key)
    if current is None or current.get("state") == TaskState.COMPLETED:
        return False
    try:
        committed = json.loads(data)
    except ValueError:
        return False
    return isinstance(committed, dict) and committed.get("requestId") == current.get("requestId")


def load_jobs(store: RecordStore) -> dict[str, NodeJob]:
    """Read the jobs back without an agent (``node-agent gc``; blocking)."""
    return jobs_from(_read(store))


async def recover(manager: JobManager) -> None:
    ctx = manager.ctx
    spare = await asyncio.to_thread(ctx.supervisors.scan)  # supervisors of this boot are adopted, not killed
    await ctx.processes.kill_orphans(spare)
    await ctx.supervisors.forget_unstarted()  # before any task starts (it makes its folder again)
    unfinished: list[TaskRun] = []
    for job_id, job in jobs_from(await asyncio.to_thread(_read, ctx.store)).items():
        if job.prep_boot_id != ctx.boot_id:
            job.prep_blocked = False  # a reboot lifts the block: the preparation will run again
        unfinished.extend(run for run in job.tasks.values() if not run.is_finished)
        manager.jobs[job_id] = job
        prep = job.doc.job_preparation_task if job.doc else None
        if prep is not None and job.prep is not None and job.prep.state == SubtaskState.RUNNING:
            if ctx.supervisors.take(job_id, prep.id):
                manager.subtasks.adopt_preparation(job)
    for deadline in await asyncio.to_thread(completed_task_deadlines, manager.jobs, ctx.layout.root):
        ctx.deadlines.hold(deadline)
    adopted, waiting, lost = _sort_unfinished(manager, unfinished)
    for run in adopted:
        info = ctx.supervisors.task_info(run.job_id, run.task.id)
        manager.start_recovered(manager.jobs[run.job_id], run, _resume_of(run, info, ctx.supervisors.detach))
    for run in waiting:  # accepted, never started: it runs here as if the agent had not stopped
        run.update(state=TaskState.ACTIVE)
        manager.start_recovered(manager.jobs[run.job_id], run, None)
    for run in lost:
        await manager.hand_back(
            run, "NodeAgentRestarted", "the task was lost: the node rebooted or its supervisor died"
        )
    unpublished = [run for job in manager.jobs.values() for run in job.tasks.values() if not run.published]
    for run in unpublished:  # completed and recorded, maybe never in the outbox: published (again) once it runs
        manager.ctx.group.create_task(manager.publish_result(run), name=f"republish-{run.job_id}-{run.task.id}")
    releases = {
        (job.id, job.doc.job_release_task.id) for job in manager.jobs.values() if job.doc and job.doc.job_release_task
    }
    for job_id, task_id in list(ctx.supervisors.adoptable - releases):  # kept only for a release to adopt
        ctx.supervisors.take(job_id, task_id)
        await ctx.supervisors.forget(job_id, task_id)
    log.info(
        "recovery.done",
        jobs=len(manager.jobs),
        adopted=len(adopted),
        requeued=len(waiting),
        handed_back=len(lost),
        republished=len(unpublished),
    )


def _sort_unfinished(
    manager: JobManager, unfinished: list[TaskRun]
) -> tuple[list[TaskRun], list[TaskRun], list[TaskRun]]:
    """Adopted (its supervisor of this boot found), waiting (never started), lost (the rest).

    A task is recorded ``active`` when accepted and not again until it completes (a retry records
    ``running``): whether it started is what its supervisor folder says (ADR 0011). ``Supervisors.scan``
    fenced every folder no shim had claimed, so a task without an adoptable or lost folder never started and
    never will by the hand of the previous agent: it is queued again. After a reboot the folder may have gone
    with the page cache (it is not fsynced), so a task accepted in an earlier boot is lost rather than waiting.
    A task recorded without a boot id was recorded ``running`` before its start (the agents before this rule):
    ``active`` then means never started."""
    adopted, waiting, lost = [], [], []
    supervisors, boot_id = manager.ctx.supervisors, manager.ctx.boot_id
    for run in unfinished:
        key = (run.job_id, run.task.id)
        if manager.jobs[run.job_id].doc is None:
            lost.append(run)  # recorded by an agent that kept no job document: nothing to run it with
        elif supervisors.take(*key):
            adopted.append(run)
        elif run.is_running or key in supervisors.lost or run.boot_id not in (None, boot_id):
            if (started := _time(supervisors.lost.get(key, {}), "startTime")) is not None:
                _mark_started(run, started)  # its directory is left to retention, as a task that ran
            lost.append(run)
        else:
            waiting.append(run)
    return adopted, waiting, lost


def _time(info: dict[str, Any], name: str) -> datetime | None:
    value = info.get(name)
    try:
        return datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        return None


def _mark_started(run: TaskRun, started: datetime) -> None:
    if run.task.execution_info.start_time is None:
        info = run.task.execution_info.model_copy(update={"start_time": started})
        run.update(execution_info=info)


def _resume_of(run: TaskRun, folder: dict[str, Any], detach: asyncio.Event) -> Resume:
    """Carry on from the record and from what the adopted attempt's spec.json says, the newer of the two (the
    record of a retry is written while its attempt starts, so it may lag behind)."""
    info = run.task.execution_info
    start = info.start_time or _time(folder, "startTime") or utcnow()
    retries = folder.get("retryCount")
    if isinstance(retries, int) and retries > info.retry_count:
        outcome = Outcome(start_time=start, retry_count=retries, last_retry_time=_time(folder, "lastRetryTime"))
    else:
        outcome = Outcome(start_time=start, retry_count=info.retry_count, last_retry_time=info.last_retry_time)
    if not run.is_running:  # recorded active: it runs, as far as this agent knows from now on
        execution = info.model_copy(update={"start_time": start})
        run.update(state=TaskState.RUNNING, state_transition_time=start, execution_info=execution)
    return Resume(outcome=outcome, adopt=True, detach=detach)


async def end_vanished_jobs(manager: JobManager, wait_s: float) -> None:
    """After the first connect: a job this node remembers whose retained document does not come back within
    ``wait_s`` was deleted while the agent was away, so it is ended here as a delete would have ended it
    (release run if preparation ran, directories and records removed). Jobs that are terminating or deleting
    need nothing here: their retained document arrives and ends them (PROTOCOL.md guarantee 3)."""
    remembered = [job for job in manager.jobs.values() if job.has_presence]
    waiting = [asyncio.ensure_future(job.doc_seen.wait()) for job in remembered]
    if waiting:
        await asyncio.wait(waiting, timeout=wait_s)
    for waiter in waiting:
        waiter.cancel()
    vanished = [job for job in remembered if not job.doc_seen.is_set() and manager.jobs.get(job.id) is job]
    for job in vanished:
        log.warning("recovery.job_vanished", job_id=job.id)
        manager.on_job_document(job.id, None)
