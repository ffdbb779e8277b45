"""The job preparation and release tasks on this node, and the end of a job (PROTOCOL.md guarantees 1-3).

"Preparation ran in this boot" is the durable pair (prep record, prepBootId) in the job's record: it is
written before the process starts and when it ends, so an agent restart in the same boot never reruns a
finished preparation, and a new boot id reruns it unless rerunOnNodeRebootAfterSuccess is false.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import structlog

from node_agent import faults
from node_agent.agent.attempts import Outcome, Resume, plan_for, run_to_end
from node_agent.retention.deadlines import DirectoryKind
from node_agent.retention.removal import remove_below
from node_agent.wire.base import utcnow
from node_agent.wire.status import (
    JobPreparationTaskExecutionInformation,
    JobReleaseTaskExecutionInformation,
    SubtaskState,
    TaskResult,
    TaskState,
)

if TYPE_CHECKING:
    from node_agent.agent.jobs import JobManager
    from node_agent.agent.runs import NodeJob

log = structlog.get_logger(__name__)
SubtaskInfo = JobPreparationTaskExecutionInformation | JobReleaseTaskExecutionInformation


class Subtasks:
    def __init__(self, manager: JobManager) -> None:
        self.manager = manager
        self.ctx = manager.ctx

    # -- preparation -------------------------------------------------------------------------------------

    def _needs_run(self, job: NodeJob) -> bool:
        """Guarantee 1: run if it never completed here, or completed in an earlier boot (unless opted out)."""
        prep, spec = job.prep, job.doc.job_preparation_task if job.doc else None
        if prep is None or prep.state != SubtaskState.COMPLETED:
            return True
        if job.prep_boot_id == self.ctx.boot_id:
            return False
        rerun = spec is None or spec.rerun_on_node_reboot_after_success
        return prep.result != TaskResult.SUCCESS or rerun

    def prep_pending(self, job: NodeJob) -> bool:
        """Whether a task must still wait for the preparation (it is running or has to run)."""
        running = job.prep_run is not None and not job.prep_run.done()
        return running or self._needs_run(job)

    def start_preparation(self, job: NodeJob) -> asyncio.Task[bool] | None:
        """Start the preparation unless it runs or has run; returns the run to wait on, if any."""
        if job.prep_run is not None and not job.prep_run.done():
            return job.prep_run
        if not self._needs_run(job):
            return None
        job.prep_kill = asyncio.Event()
        job.prep_run = self.ctx.group.create_task(self._prepare(job), name=f"prep-{job.id}")
        return job.prep_run

    async def ensure_prepared(self, job: NodeJob) -> bool:
        """Wait for the preparation (running it if needed); True when the job's tasks may run here."""
        run = self.start_preparation(job)
        if run is not None:
            return await asyncio.shield(run)
        return job.prep is not None and job.prep.result == TaskResult.SUCCESS

    def adopt_preparation(self, job: NodeJob) -> None:
        """Recovery: the preparation a previous agent of this boot left running under its supervisor."""
        job.prep_kill = asyncio.Event()
        job.prep_run = self.ctx.group.create_task(self._prepare(job, adopt=True), name=f"prep-{job.id}")

    def _resume(self, info: SubtaskInfo | None, adopt: bool) -> Resume:
        detach = self.ctx.supervisors.detach
        if not adopt or info is None:
            return Resume(detach=detach)
        retries = info.retry_count if isinstance(info, JobPreparationTaskExecutionInformation) else 0
        return Resume(outcome=Outcome(start_time=info.start_time, retry_count=retries), adopt=True, detach=detach)

    async def _prepare(self, job: NodeJob, adopt: bool = False) -> bool:
        assert job.doc is not None and job.doc.job_preparation_task is not None
        structlog.contextvars.bind_contextvars(job_id=job.id, task_id=job.doc.job_preparation_task.id)  # this task's
        try:
            return await self._run_preparation(job, adopt)
        except Exception:  # a node fault fails the preparation (its tasks are handed back), not the agent
            log.exception("prep.agent_error")
            return False

    async def _run_preparation(self, job: NodeJob, adopt: bool) -> bool:
        assert job.doc is not None and job.doc.job_preparation_task is not None
        spec = job.doc.job_preparation_task
        task_dir = self.ctx.layout.task_dir(job.id, spec.id)
        if not adopt:
            job.prep = JobPreparationTaskExecutionInformation(
                start_time=utcnow(), state=SubtaskState.RUNNING, task_root_directory=str(task_dir)
            )
            job.prep_boot_id = self.ctx.boot_id
            job.prep_blocked = False
            await self._record(job, job.prep)
            faults.reached("prep-started")
        log.info("prep.started", adopted=adopt)
        plan = plan_for(
            self.ctx.layout,
            job.doc,
            spec,
            max_wall_clock=spec.constraints.max_wall_clock_time,
            retries=spec.constraints.max_task_retry_count,
            tracker=self.ctx.processes.track(job.id, spec.id),
            supervision=self.ctx.supervisors.supervision(job.id, spec.id),
            users=self.ctx.users,
            stage=self.ctx.stage_for(job.id, spec.id, spec.resource_files),
        )
        resume = self._resume(job.prep, adopt)
        outcome = await run_to_end(plan, job.prep_kill, lambda o: self._prep_progress(job, o), resume)
        job.prep = JobPreparationTaskExecutionInformation(
            **outcome.fields(), state=SubtaskState.COMPLETED, task_root_directory=str(task_dir)
        )
        succeeded = outcome.result == TaskResult.SUCCESS
        job.prep_blocked = not succeeded and spec.wait_for_success
        await self._record(job, job.prep)
        await self.ctx.supervisors.forget(job.id, spec.id)
        log.info("prep.succeeded" if succeeded else "prep.failed", exit_code=outcome.exit_code, code=_code(outcome))
        if job.prep_blocked:
            await self._hand_back_waiting(job)
        return succeeded

    def _prep_progress(self, job: NodeJob, outcome: Outcome) -> None:
        if job.prep is not None:
            job.prep = job.prep.model_copy(
                update={"retry_count": outcome.retry_count, "last_retry_time": outcome.last_retry_time}
            )
            self._publish_status(job)

    async def _hand_back_waiting(self, job: NodeJob) -> None:
        """Guarantee 2: every task of the job waiting here goes back to the scheduler."""
        for run in list(job.tasks.values()):
            if not run.is_finished and not run.is_running and run.worker is not None:  # active or preparing
                run.worker.cancel()
                await asyncio.wait({run.worker})
                await self.manager.hand_back(run, "JobPreparationTaskFailed", "the job preparation task failed")

    def _publish_status(self, job: NodeJob) -> None:
        publisher = self.ctx.publisher
        publisher.job_node(job.id, job.info(publisher.node_id, publisher.pool_id))

    async def _record(self, job: NodeJob, changed: SubtaskInfo | None) -> None:
        """Store, then publish the node's status for the job and an event for the task that changed."""
        await self.manager.save_job(job)
        self._publish_status(job)
        if changed is not None and job.doc is not None:
            is_prep = isinstance(changed, JobPreparationTaskExecutionInformation)
            spec = job.doc.job_preparation_task if is_prep else job.doc.job_release_task
            self.ctx.publisher.subtask(
                job.id,
                spec.id if spec else "",
                "jobPreparationTaskStateChanged" if is_prep else "jobReleaseTaskStateChanged",
                TaskState(changed.state.value),
            )

    # -- end of a job --------------------------------------------------------------------------------------

    def end_job(self, job: NodeJob, *, deleting: bool) -> None:
        """Start (once) ending the job: tasks ended, release run once, and on delete its files removed."""
        first_delete = deleting and not job.delete_requested
        job.delete_requested = job.delete_requested or deleting
        if job.ending is None or (job.ending.done() and first_delete):
            # _finish is idempotent: after a terminate it only removes the job's files on delete
            job.ending = self.ctx.group.create_task(self._finish(job), name=f"end-{job.id}")

    async def _finish(self, job: NodeJob) -> None:
        structlog.contextvars.bind_contextvars(job_id=job.id)  # bound in this asyncio task's context only
        try:
            await self._end_tasks_and_release(job)
        except Exception:  # a node fault must not stop the agent; the job's end is retried on restart
            log.exception("job.end_failed")

    async def _end_tasks_and_release(self, job: NodeJob) -> None:
        for run in list(job.tasks.values()):
            await self.manager.end_task(run, "the job was terminated")
        if job.prep_run is not None and not job.prep_run.done():
            job.prep_kill.set()
            await asyncio.wait({job.prep_run})
        release = job.doc.job_release_task if job.doc else None
        ran_release = job.release is not None and job.release.state == SubtaskState.COMPLETED
        if job.prep is not None and release is not None and not ran_release:
            await self._release(job)
        if not job.delete_requested:
            await self._retain_subtasks(job)
        if job.delete_requested:  # checked again: a delete may have arrived while the deadlines were written
            await self._delete(job)

    async def _retain_subtasks(self, job: NodeJob) -> None:
        """Guarantee 6 for the job's preparation and release once the job has ended here. The preparation's
        working dir served the job's tasks and release, so its retentionTime counts only from now (the
        release's end). Idempotent: an agent restart that ends the job again keeps the first deadlines."""
        prep = job.doc.job_preparation_task if job.doc else None
        release = job.doc.job_release_task if job.doc else None
        ended_at = utcnow()
        if release is not None and job.release is not None and job.release.state == SubtaskState.COMPLETED:
            ended_at = job.release.end_time or ended_at
            await self.manager.retain(
                job.id,
                release.id,
                DirectoryKind.RELEASE,
                completed_at=ended_at,
                retention=release.retention_time,
                keep_existing=True,
            )
        if prep is not None and job.prep is not None:
            await self.manager.retain(
                job.id,
                prep.id,
                DirectoryKind.PREPARATION,
                completed_at=job.prep.end_time or job.prep.start_time,
                retention=prep.constraints.retention_time,
                counting_from=ended_at,
                keep_existing=True,
            )

    async def _release(self, job: NodeJob) -> None:
        assert job.doc is not None and job.doc.job_release_task is not None
        spec = job.doc.job_release_task
        task_dir = self.ctx.layout.task_dir(job.id, spec.id)
        # A release a previous agent of this boot left running is waited for, not run a second time.
        adopt = job.release is not None and self.ctx.supervisors.take(job.id, spec.id)
        if not adopt:
            job.release = JobReleaseTaskExecutionInformation(
                start_time=utcnow(), state=SubtaskState.RUNNING, task_root_directory=str(task_dir)
            )
            await self._record(job, job.release)
            faults.reached("release-started")
        log.info("release.started", task_id=spec.id, adopted=adopt)
        plan = plan_for(
            self.ctx.layout,
            job.doc,
            spec,
            max_wall_clock=spec.max_wall_clock_time,
            retries=0,
            tracker=self.ctx.processes.track(job.id, spec.id),
            supervision=self.ctx.supervisors.supervision(job.id, spec.id),
            users=self.ctx.users,
            stage=self.ctx.stage_for(job.id, spec.id, spec.resource_files),
        )
        outcome = await run_to_end(plan, asyncio.Event(), resume=self._resume(job.release, adopt))
        job.release = JobReleaseTaskExecutionInformation(
            start_time=outcome.start_time,
            end_time=outcome.end_time,
            state=SubtaskState.COMPLETED,
            task_root_directory=str(task_dir),
            exit_code=outcome.exit_code,
            result=outcome.result,
            failure_info=outcome.failure_info,
        )
        await self._record(job, job.release)
        await self.ctx.supervisors.forget(job.id, spec.id)
        event = "release.succeeded" if outcome.result == TaskResult.SUCCESS else "release.failed"
        log.info(event, task_id=spec.id, exit_code=outcome.exit_code, code=_code(outcome))

    async def _delete(self, job: NodeJob) -> None:
        """Deleting a job removes all its directories and records here, whatever their retention."""
        layout = self.ctx.layout
        removal = await asyncio.to_thread(
            remove_below, layout.root, layout.job_dir(job.id).relative_to(layout.root).parts
        )
        if not removal.complete:
            log.warning("job.removal_incomplete", job_id=job.id, error=removal.error)
        else:
            await self.ctx.users.remove_task_users(job.id)  # the task-scope users go with the job's files
        await asyncio.shield(self.ctx.deadlines.drop_job(job.id))
        await asyncio.shield(self.ctx.supervisors.forget_job(job.id))
        await asyncio.shield(self.ctx.store.delete_tree(("jobs", job.id)))
        self.manager.jobs.pop(job.id, None)
        if job.successor is not None:
            self.manager.on_job_document(job.id, job.successor)
        # Published last: once the driver sees them cleared it may create the job again with this id,
        # and that job must not meet this node's record of the deleted one (JobNotActive).
        for task_id in list(job.tasks):
            self.ctx.publisher.clear_task(job.id, task_id)
        self.ctx.publisher.job_node(job.id, None)
        log.info("job.deleted", job_id=job.id)

    async def stop(self) -> None:
        """Agent shutdown: a running preparation or release is stopped and stays recorded as running,
        so the next start runs it again (never recorded as done when it was not)."""
        pending = [
            task
            for job in self.manager.jobs.values()
            for task in (job.prep_run, job.ending)
            if task is not None and not task.done()
        ]
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending)


def _code(outcome: Outcome) -> str | None:
    return outcome.failure_info.code if outcome.failure_info is not None else None
