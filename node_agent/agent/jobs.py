"""The job lifecycle on this node: accepting tasks, running them in slots after preparation, ending jobs.

Task states (PROTOCOL.md "Semantics", Azure Batch CloudTask; what a stop or restart does: ADR 0001, 0011):

    addTask --> active --slot--> preparing --prep ok--> running --exit--> completed
                  |                  +-- prep failed (waitForSuccess) --> handed back (JobPreparationTaskFailed)
                  +-- terminateTask / job end --> completed (TaskEnded)
                  +-- requeue (disableScheduling, reboot, reimage) --> handed back (agent/scheduling.py)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import structlog

from node_agent import faults
from node_agent.agent.admission import HAND_BACK_MESSAGES, Admission
from node_agent.agent.attempts import AttemptPlan, Outcome, Resume, plan_for, run_to_end
from node_agent.agent.handedback import HandedBack
from node_agent.agent.layout import NodeLayout
from node_agent.agent.processes import ProcessRegistry
from node_agent.agent.publisher import Publisher
from node_agent.agent.resources import ResourceStaging, StageFn
from node_agent.agent.retained import task_deadline
from node_agent.agent.runs import NodeJob, TaskRun
from node_agent.agent.supervisors import Supervisors
from node_agent.errors import InputError
from node_agent.identity.users import TaskUsers
from node_agent.retention.deadlines import Deadline, DeadlineBook, DirectoryKind
from node_agent.store.records import RecordStore
from node_agent.wire.base import add_capped, utcnow
from node_agent.wire.specs import DEFAULT_RETENTION, Job, JobState, ResourceFile, TaskSpec
from node_agent.wire.status import FailureInfo, NodeInfo, Task, TaskExecutionInfo, TaskResult, TaskState

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class NodeContext:
    layout: NodeLayout
    store: RecordStore
    publisher: Publisher
    boot_id: str
    group: asyncio.TaskGroup
    on_load_change: Callable[[], None]
    processes: ProcessRegistry
    deadlines: DeadlineBook
    supervisors: Supervisors
    users: TaskUsers
    resources: ResourceStaging | None = None

    def stage_for(self, job_id: str, task_id: str, files: Sequence[ResourceFile]) -> StageFn | None:
        return self.resources.for_task(job_id, task_id, files) if self.resources is not None else None


class JobManager:
    """Owns every NodeJob and TaskRun of this agent; the only writer of their state."""

    def __init__(self, ctx: NodeContext, task_slots: int, job_wait_s: float) -> None:
        from node_agent.agent.subtasks import Subtasks  # preparation and release share this manager's state

        self.ctx = ctx
        self.jobs: dict[str, NodeJob] = {}
        self.slots = asyncio.Semaphore(task_slots)
        self.job_wait_s = job_wait_s
        self.accepting = True
        self.admission = Admission()  # scheduling state, start task, reboot: see agent/admission.py
        self.subtasks = Subtasks(self)
        self.handed_back = HandedBack(ctx.store)
        self._set_running: set[TaskRun] = set()  # every run set running since the last count; some may have ended

    @property
    def running_count(self) -> int:
        """Tasks now running; O(slots), as it is asked on every state change (bench/throughput.py)."""
        self._set_running = {run for run in self._set_running if run.is_running}
        return len(self._set_running)

    def unfinished(self) -> list[TaskRun]:
        """Every task this node holds that has not completed (waiting, preparing or running)."""
        return [run for job in self.jobs.values() for run in job.tasks.values() if not run.is_finished]

    def job(self, job_id: str) -> NodeJob:
        return self.jobs.setdefault(job_id, NodeJob(id=job_id))

    # -- accepting ---------------------------------------------------------------------------------------

    async def add_task(self, job_id: str, spec: TaskSpec, request_id: str | None = None) -> Task:
        """Record the task durably, start it, and return its state (the same state for a repeated add)."""
        job = self.job(job_id)
        if (known := await self._known(job, spec.id)) is not None:
            return known
        if await self.handed_back.is_redelivery(job_id, spec.id, request_id):
            raise InputError("TaskHandedBack", f"task {spec.id!r} was handed back by this node; nothing was done")
        self._check_accepting()
        doc = await self._job_document(job)
        if (known := await self._known(job, spec.id)) is not None:  # a duplicate arrived while we waited
            return known
        self._check_accepting()  # the agent may have begun stopping while we waited
        self._check_acceptable(job, doc, spec)
        run = TaskRun(job_id=job_id, task=self._new_task(job_id, spec), request_id=request_id, boot_id=self.ctx.boot_id)
        job.tasks[spec.id] = run
        try:
            if not job.has_record:  # the job document first: a recovered task needs it (environment, limits)
                await self.save_job(job)
                job.has_record = True
            await asyncio.shield(self._save_task(run))
        except BaseException:
            job.tasks.pop(spec.id, None)
            raise
        finally:
            run.recorded.set()  # wakes duplicates; _known tells them whether the record was made
        self.ctx.publisher.task(job_id, run.task)
        run.worker = self.ctx.group.create_task(self._work(job, run), name=f"task-{job_id}-{spec.id}")
        log.info("task.accepted", job_id=job_id, task_id=spec.id)
        return run.task

    async def _known(self, job: NodeJob, task_id: str) -> Task | None:
        """The state of a task this node already holds (a repeated addTask is acknowledged, never run again)."""
        if (known := job.tasks.get(task_id)) is None:
            return None
        await known.recorded.wait()
        if job.tasks.get(task_id) is not known:
            raise InputError("TaskNotRecorded", f"task {task_id!r} could not be recorded on this node; send it again")
        return known.task

    def _check_accepting(self) -> None:
        if not self.accepting:
            raise InputError("NodeShuttingDown", "the agent is stopping; place the task on another node")
        self.admission.check()

    async def _job_document(self, job: NodeJob) -> Job:
        try:
            async with asyncio.timeout(self.job_wait_s):
                await job.doc_seen.wait()
        except TimeoutError:
            if not job.has_presence:
                self.jobs.pop(job.id, None)
            raise InputError(
                "JobNotFound",
                f"job {job.id!r} is unknown: publish the job (retained) on its jobs topic before adding tasks",
            ) from None
        assert job.doc is not None
        return job.doc

    def _check_acceptable(self, job: NodeJob, doc: Job, spec: TaskSpec) -> None:
        if doc.state != JobState.ACTIVE or job.ending is not None:
            raise InputError("JobNotActive", f"job {job.id!r} is {doc.state}; tasks can be added to active jobs only")
        for kind, reserved in (("Preparation", doc.job_preparation_task), ("Release", doc.job_release_task)):
            if reserved is not None and spec.id == reserved.id:  # Azure Batch: TaskIdSameAsJob{kind}Task
                raise InputError(
                    f"TaskIdSameAsJob{kind}Task",
                    f"task id {spec.id!r} is the id of the job's {kind.lower()} task; choose another id",
                )
        if job.prep_blocked:
            raise InputError(
                "JobPreparationTaskFailed",
                f"the job preparation task of {job.id!r} failed on this node; place the task on another node",
            )

    def _new_task(self, job_id: str, spec: TaskSpec) -> Task:
        node = NodeInfo(
            node_id=self.ctx.publisher.node_id,
            pool_id=self.ctx.publisher.pool_id,
            task_root_directory=str(self.ctx.layout.task_dir(job_id, spec.id)),
        )
        return Task(**dict(spec), state=TaskState.ACTIVE, state_transition_time=utcnow(), node_info=node)

    def _task_record(self, run: TaskRun) -> bytes:
        """The task as published, plus requestId (the addTask that brought it: agent/handedback.py), the boot it
        was accepted in (agent/recovery.py) and, once completed, whether its result was published (False: recovery
        publishes it again)."""
        extra: dict[str, object] = {"requestId": run.request_id, "bootId": run.boot_id}
        if run.is_finished:
            extra["published"] = run.published
        tail = json.dumps(extra, separators=(",", ":"))[1:].encode()
        return self.ctx.publisher.task_json(run.task)[:-1] + b"," + tail

    async def _save_task(self, run: TaskRun) -> None:
        await self.ctx.store.put_json(task_key(run.job_id, run.task.id), self._task_record(run))

    async def save_job(self, job: NodeJob) -> None:
        await asyncio.shield(self.ctx.store.put(("jobs", job.id, "job"), job.record()))

    async def retain(
        self,
        job_id: str,
        task_id: str,
        kind: DirectoryKind,
        *,
        completed_at: datetime,
        retention: timedelta | None,
        counting_from: datetime | None = None,
        keep_existing: bool = False,
    ) -> None:
        """Record when the directory is due for removal (guarantee 6), from the completion or ``counting_from``."""
        layout = self.ctx.layout
        deadline = Deadline(
            job_id=job_id,
            task_id=task_id,
            kind=kind,
            completed_at=completed_at,
            deadline=add_capped(counting_from or completed_at, DEFAULT_RETENTION if retention is None else retention),
            directory=str(layout.task_dir(job_id, task_id).relative_to(layout.root)),
        )
        await self.ctx.deadlines.schedule(deadline, keep_existing=keep_existing)

    # -- running -----------------------------------------------------------------------------------------

    def _set_state(self, run: TaskRun, state: TaskState, **changes: object) -> None:
        run.update(**{"state": state, "state_transition_time": utcnow(), **changes})
        if state == TaskState.RUNNING:
            self._set_running.add(run)
        self.ctx.publisher.task(run.job_id, run.task)
        self.ctx.on_load_change()

    async def _work(self, job: NodeJob, run: TaskRun, resume: Resume | None = None) -> None:
        structlog.contextvars.bind_contextvars(job_id=run.job_id, task_id=run.task.id)  # this asyncio task's only
        try:
            await self._run_in_slot(job, run, resume)
        except Exception as exc:  # a node fault (disk, permissions) fails this task, never the agent
            log.exception("task.agent_error")
            if not run.is_finished:
                failure = FailureInfo(category="servererror", code="AgentError", message=f"the agent failed: {exc}")
                outcome = Outcome(end_time=utcnow(), result=TaskResult.FAILURE, failure_info=failure)
                with contextlib.suppress(Exception):
                    await asyncio.shield(self._complete(run, outcome))

    async def _run_in_slot(self, job: NodeJob, run: TaskRun, resume: Resume | None = None) -> None:
        async with self.slots:
            if resume is None and not await self._start(job, run):
                return
            resume = resume or Resume(detach=self.ctx.supervisors.detach, on_spawned=lambda: self._publish_running(run))
            outcome = await run_to_end(self._plan(job, run), run.kill, self._retry_reporter(run), resume)
            # Still holding the slot: the next task must not be seen running before this one completed.
            if run.requeue_code is not None:
                message = HAND_BACK_MESSAGES.get(run.requeue_code, "the task was stopped on this node")
                await self.hand_back(run, run.requeue_code, message)
                return
            await asyncio.shield(self._commit(run, outcome))
        await asyncio.shield(self._settle(run))  # the slot is free: the next task need not wait for this

    async def _start(self, job: NodeJob, run: TaskRun) -> bool:
        """Preparation first if the job waits for it, then the task running (in memory); False: not started."""
        if job.ending is not None:  # a slot freed while the job ends: end_task records it TaskEnded
            return False
        assert job.doc is not None
        prep = job.doc.job_preparation_task
        if prep is not None and prep.wait_for_success:
            if self.subtasks.prep_pending(job):
                self._set_state(run, TaskState.PREPARING)
            if not await self.subtasks.ensure_prepared(job):
                await self.hand_back(run, "JobPreparationTaskFailed", "the job preparation task failed")
                return False
            faults.reached("prepared")
        elif prep is not None:
            self.subtasks.start_preparation(job)
        await self.ctx.deadlines.claim(job.id, run.task.id)  # handed back, then added here again
        # Running from here, published once the process runs. Not recorded: the record stays "active" until the
        # task completes, and the supervisor's folder tells a restarted agent whether it started (ADR 0011).
        now = utcnow()
        run.update(state=TaskState.RUNNING, state_transition_time=now, execution_info=TaskExecutionInfo(start_time=now))
        log.info("task.started")
        return True

    def _publish_running(self, run: TaskRun) -> None:  # a retry is published by the retry reporter instead
        if run.task.execution_info.retry_count == 0:  # the model _start made
            self._set_running.add(run)
            self.ctx.publisher.task(run.job_id, run.task)
            self.ctx.on_load_change()

    def start_recovered(self, job: NodeJob, run: TaskRun, resume: Resume | None) -> None:
        """Recovery: queue an accepted task again, or (``resume``) adopt its running supervisor."""
        if resume is not None:
            self._set_running.add(run)
        run.worker = self.ctx.group.create_task(self._work(job, run, resume))

    def _plan(self, job: NodeJob, run: TaskRun) -> AttemptPlan:
        assert job.doc is not None
        constraints = run.spec.constraints
        return plan_for(
            self.ctx.layout,
            job.doc,
            run.spec,
            max_wall_clock=constraints.max_wall_clock_time,
            retries=constraints.max_task_retry_count,
            tracker=self.ctx.processes.track(job.id, run.task.id),
            supervision=self.ctx.supervisors.supervision(job.id, run.task.id),
            users=self.ctx.users,
            stage=self.ctx.stage_for(job.id, run.task.id, run.spec.resource_files),
        )

    def _retry_reporter(self, run: TaskRun) -> Callable[[Outcome], None]:
        def report(outcome: Outcome) -> None:
            info = run.task.execution_info.model_copy(
                update={"retry_count": outcome.retry_count, "last_retry_time": outcome.last_retry_time}
            )
            self._set_state(run, TaskState.RUNNING, execution_info=info)
            self.ctx.group.create_task(self._save_task(run))  # the retry count survives an agent restart

        return report

    async def _complete(self, run: TaskRun, outcome: Outcome) -> None:
        await self._commit(run, outcome)
        await self._settle(run)

    async def _commit(self, run: TaskRun, outcome: Outcome) -> None:
        """Completed: the task's state, its event and its completed record go into the durable outbox in one
        transaction, one sync (ADR 0010). Once it returns the result is recorded and as good as published: a
        restart applies the record left in the outbox before it reads the records (``apply_committed``)."""
        info = TaskExecutionInfo(**outcome.fields(), requeue_count=run.task.execution_info.requeue_count)
        task = run.update(state=TaskState.COMPLETED, state_transition_time=utcnow(), execution_info=info)
        run.published = True  # the record says so: it is committed with the messages
        self.ctx.deadlines.hold(task_deadline(run.job_id, task))  # derived from the record committed here
        self.ctx.publisher.task(run.job_id, task)
        self.ctx.publisher.record(task_key(run.job_id, task.id), self._task_record(run))
        self.ctx.on_load_change()
        await self.ctx.publisher.persisted()
        faults.reached("task-recorded")
        event = "task.succeeded" if outcome.result == TaskResult.SUCCESS else "task.failed"
        code = outcome.failure_info.code if outcome.failure_info is not None else None
        log.info(event, job_id=run.job_id, task_id=task.id, exit_code=outcome.exit_code, code=code)

    async def _settle(self, run: TaskRun) -> None:
        """After the commit, off the task's path: its record file written (fsynced), then its supervisor folder
        and the outbox's copy of the record removed, in that order, so a crash anywhere leaves one of them."""
        key = task_key(run.job_id, run.task.id)
        await self.ctx.store.put_json(key, self._task_record(run))
        faults.reached("task-published")
        await self.ctx.supervisors.forget(run.job_id, run.task.id)
        self.ctx.publisher.record(key, None)
        run.compact()  # kept as its JSON until the job is deleted

    async def publish_result(self, run: TaskRun) -> None:
        """Publish a completed task, then mark its record published (else recovery publishes it again)."""
        self.ctx.publisher.task(run.job_id, run.task)
        self.ctx.on_load_change()
        await self.ctx.publisher.persisted()
        run.published = True
        await self._save_task(run)
        faults.reached("task-published")
        run.compact()  # kept as its JSON until the job is deleted

    async def hand_back(self, run: TaskRun, code: str, message: str) -> None:
        """Give the task back to the scheduler: active, no node, and forgotten by this node."""
        job = self.jobs.get(run.job_id)
        if job is not None and job.tasks.get(run.task.id) is run:
            del job.tasks[run.task.id]
        info = run.task.execution_info.model_copy(update={"requeue_count": run.task.execution_info.requeue_count + 1})
        run.update(state=TaskState.ACTIVE, state_transition_time=utcnow(), node_info=None, execution_info=info)
        await asyncio.shield(self.ctx.store.delete(("jobs", run.job_id, "tasks", run.task.id)))
        await asyncio.shield(self.ctx.supervisors.forget(run.job_id, run.task.id))
        await asyncio.shield(self.handed_back.remember(run.job_id, run.task.id, run.request_id))
        if info.start_time is not None:  # it ran here: its directory is left to retention, as a completed task's
            retention = run.spec.constraints.retention_time
            kind = DirectoryKind.TASK
            await asyncio.shield(self.retain(run.job_id, run.task.id, kind, completed_at=utcnow(), retention=retention))
        self.ctx.publisher.task(run.job_id, run.task, code=code, message=message)
        self.ctx.on_load_change()
        log.info("task.handed_back", job_id=run.job_id, task_id=run.task.id, code=code)

    # -- ending ------------------------------------------------------------------------------------------

    async def requeue(self, run: TaskRun, code: str) -> None:
        """Hand a waiting or running task back now (a running one is killed first) and wait until it is."""
        if run.is_finished or run.worker is None:
            return
        if not run.is_running:
            await _cancel(run.worker)
            if not run.is_finished and not run.is_running:
                await self.hand_back(run, code, HAND_BACK_MESSAGES.get(code, "the task was stopped on this node"))
            return
        run.requeue_code = code
        run.kill.set()
        await asyncio.wait({run.worker})

    async def terminate_task(self, job_id: str, task_id: str) -> Task:
        job = self.jobs.get(job_id)
        run = job.tasks.get(task_id) if job is not None else None
        if run is None:
            raise InputError("TaskNotFound", f"task {task_id!r} of job {job_id!r} is not on this node")
        await self.end_task(run, "the task was terminated")
        return run.task

    async def end_task(self, run: TaskRun, message: str) -> None:
        """End a waiting or running task with TaskEnded and wait until it is recorded completed."""
        if run.is_finished or run.worker is None:
            if run.worker is not None and not run.worker.done():
                await asyncio.wait({run.worker})  # completed, its record file still being written (_settle)
            return
        if run.is_running:
            run.kill.set()
            await asyncio.wait({run.worker})
            return
        await _cancel(run.worker)
        if run.is_finished or run.is_running:
            return  # it finished or started before the cancel reached it
        failure = FailureInfo(category="usererror", code="TaskEnded", message=message)
        outcome = Outcome(end_time=utcnow(), result=TaskResult.FAILURE, failure_info=failure)
        await asyncio.shield(self._complete(run, outcome))

    def on_job_document(self, job_id: str, doc: Job | None) -> None:
        """A retained job document arrived (None: the job was deleted)."""
        job = self.jobs.get(job_id)
        if doc is None:
            if job is not None:
                job.successor = None  # a job created again and deleted again before this node got to it
            if job is not None and job.has_presence:
                self.subtasks.end_job(job, deleting=True)
            elif job is not None:
                self.jobs.pop(job_id, None)
            return
        job = self.job(job_id)
        if job.delete_requested and doc.state == JobState.ACTIVE:
            # A driver that saw this node's statuses cleared (or, on a broker that orders per topic only, never
            # saw them) created the job again while the deletion still runs here: it starts once that is done.
            job.successor = doc
            return
        job.doc = doc
        job.doc_seen.set()
        if doc.state != JobState.ACTIVE and job.has_presence:
            self.subtasks.end_job(job, deleting=doc.state == JobState.DELETING)

    async def shutdown(self, grace_s: float, *, keep_running: bool = False) -> None:
        """SIGTERM: nothing new, waiting tasks handed back, running ones kept (ADR 0011) or handed back."""
        self.accepting = False
        runs = self.unfinished()
        for run in runs:
            if not run.is_running and run.worker is not None:
                await _cancel(run.worker)
                if not run.is_finished and not run.is_running:
                    await self.hand_back(run, "NodeAgentStopped", "the agent stopped before the task started")
        workers = [run.worker for run in runs if run.worker is not None and not run.worker.done()]
        if keep_running:
            self.ctx.supervisors.detach.set()  # a cancelled worker leaves its supervisor running
            for worker in workers:
                worker.cancel()
        elif workers:
            await asyncio.wait(workers, timeout=grace_s)
        for run in runs:
            if not keep_running and run.worker is not None and not run.worker.done():
                run.requeue_code = "NodeAgentStopped"
                run.kill.set()
        if workers:
            await asyncio.wait(workers)
        await self.subtasks.stop()


def task_key(job_id: str, task_id: str) -> tuple[str, ...]:
    return ("jobs", job_id, "tasks", task_id)


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    await asyncio.wait({task})
