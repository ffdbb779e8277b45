"""Running one task definition to its end: checks, working directory, attempts and retries, failureInfo."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import structlog

from node_agent import faults
from node_agent.agent.layout import NodeLayout
from node_agent.agent.processes import ProcessTracker
from node_agent.agent.resources import StageFn
from node_agent.errors import TaskFailure
from node_agent.identity.ownership import prepare_task_dir
from node_agent.identity.users import TASK_UMASK, RunAs, TaskUsers, UserKind, UserRequest
from node_agent.runner.environment import task_environment
from node_agent.runner.process import ExitResult, ProcessSpec, run_process
from node_agent.runner.supervised import Supervision, adopt, run_supervised
from node_agent.wire.base import iso_duration, utcnow
from node_agent.wire.specs import (
    EnvironmentSetting,
    Job,
    JobPreparationTask,
    JobReleaseTask,
    ResourceFile,
    TaskSpec,
    UserIdentity,
)
from node_agent.wire.status import FailureInfo, TaskResult

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class AttemptPlan:
    """Everything needed to run one task (preparation, release or ordinary) on this node."""

    command_line: str
    task_dir: Path
    env: dict[str, str]
    max_wall_clock: timedelta | None
    max_task_retry_count: int  # -1: no limit
    job_id: str = ""
    task_id: str = ""
    named_by_settings: frozenset[str] = frozenset()  # variables the job or task set: never overridden
    resource_files: Sequence[ResourceFile] = ()
    user: UserRequest = UserRequest()
    users: TaskUsers | None = None  # None: run as the agent's own user (tests of the runner alone)
    tracker: ProcessTracker | None = None
    stage: StageFn | None = None  # places resource_files in the working directory
    supervision: Supervision | None = None  # run under a shim that outlives the agent (ADR 0011)


Definition = TaskSpec | JobPreparationTask | JobReleaseTask


def plan_for(
    layout: NodeLayout,
    job: Job,
    task: Definition,
    *,
    max_wall_clock: timedelta | None,
    retries: int,
    tracker: ProcessTracker | None = None,
    supervision: Supervision | None = None,
    users: TaskUsers | None = None,
    stage: StageFn | None = None,
) -> AttemptPlan:
    """The plan of one of the job's tasks: its directory, and its environment in Azure Batch's order."""
    prep = job.job_preparation_task
    variables = layout.batch_variables(job.id, task.id, prep.id if prep else None)
    return AttemptPlan(
        command_line=task.command_line,
        task_dir=layout.task_dir(job.id, task.id),
        env=task_environment(variables, _pairs(job.common_environment_settings), _pairs(task.environment_settings)),
        max_wall_clock=max_wall_clock,
        max_task_retry_count=retries,
        job_id=job.id,
        task_id=task.id,
        named_by_settings=frozenset(s.name for s in (*job.common_environment_settings, *task.environment_settings)),
        resource_files=task.resource_files,
        user=user_request(task.user_identity),
        users=users,
        tracker=tracker,
        stage=stage,
        supervision=supervision,
    )


def user_request(identity: UserIdentity | None) -> UserRequest:
    """The wire's userIdentity as the identity module's request (none: Azure's pool-scope nonadmin auto-user)."""
    if identity is None:
        return UserRequest()
    if identity.user_name is not None:
        return UserRequest(UserKind.NAMED, identity.user_name)
    auto = identity.auto_user
    if auto is not None and auto.elevation_level == "admin":
        return UserRequest(UserKind.ADMIN)
    return UserRequest(UserKind.TASK if auto is not None and auto.scope == "task" else UserKind.POOL)


def _pairs(settings: Sequence[EnvironmentSetting]) -> list[tuple[str, str]]:
    return [(setting.name, setting.value) for setting in settings]


@dataclass(slots=True)
class Outcome:
    start_time: datetime = field(default_factory=utcnow)
    end_time: datetime | None = None
    exit_code: int | None = None
    retry_count: int = 0
    last_retry_time: datetime | None = None
    result: TaskResult | None = None
    failure_info: FailureInfo | None = None

    def fields(self) -> dict[str, Any]:
        """The execution information fields a task, a preparation and a start task report alike."""
        return {
            "start_time": self.start_time,
            "end_time": self.end_time,
            "exit_code": self.exit_code,
            "retry_count": self.retry_count,
            "last_retry_time": self.last_retry_time,
            "result": self.result,
            "failure_info": self.failure_info,
        }


def check_supported(plan: AttemptPlan) -> None:
    """Refuse, with a clear failureInfo, what this agent cannot honour yet (never ignore it silently)."""
    if plan.resource_files and plan.stage is None:
        raise TaskFailure(
            "ResourceFilesNotSupported",
            "this agent was started without resource file staging; remove resourceFiles or fix the agent",
            category="servererror",
        )


async def _run_as(plan: AttemptPlan) -> RunAs:
    if plan.users is None:
        return RunAs("", None, None, None)
    return await plan.users.resolve(plan.user, plan.job_id, plan.task_id)


def _user_environment(plan: AttemptPlan, run_as: RunAs, working_dir: Path) -> dict[str, str]:
    """HOME, USER and LOGNAME of the account the task runs as (the agent's own when it does not switch)."""
    if run_as.uid is None:
        return plan.env
    env = dict(plan.env)
    if "TMPDIR" not in plan.named_by_settings:
        env.pop("TMPDIR", None)  # the agent's temporary directory is not the task's
    own = {"USER": run_as.name, "LOGNAME": run_as.name, "HOME": run_as.home or str(working_dir)}
    env.update({name: value for name, value in own.items() if name not in plan.named_by_settings})
    return env


def _failure(exc: TaskFailure) -> FailureInfo:
    return FailureInfo(category=exc.category, code=exc.code, message=exc.message)


def _exit_failure(result: ExitResult, plan: AttemptPlan) -> FailureInfo | None:
    if result.timed_out:
        limit = iso_duration(plan.max_wall_clock or timedelta())
        return FailureInfo(
            category="usererror",
            code="TaskEnded",
            message=f"the task ran longer than its maxWallClockTime ({limit}) and was killed",
        )
    if result.killed:
        return FailureInfo(category="usererror", code="TaskEnded", message="the task was terminated")
    if result.exit_code != 0:
        return FailureInfo(
            category="usererror",
            code="FailureExitCode",
            message=f"the task process exited with an unexpected exit code {result.exit_code}",
            details=[{"name": "ExitCode", "value": str(result.exit_code)}],
        )
    return None


def _may_retry(plan: AttemptPlan, outcome: Outcome, result: ExitResult) -> bool:
    if result.timed_out or result.killed or result.exit_code == 0:
        return False  # Azure Batch retries on a non-zero exit code only
    limit = plan.max_task_retry_count
    return limit == -1 or outcome.retry_count < limit


async def _stage_unless_killed(stage: StageFn, working_dir: Path, run_as: RunAs, kill: asyncio.Event) -> None:
    """Stage once, before the first attempt (a StagingFailed is not retried); a kill cancels the downloads."""

    async def watch() -> None:
        await kill.wait()
        raise TaskFailure("TaskEnded", "the task was terminated while its resource files were being staged")

    try:
        async with asyncio.TaskGroup() as group:
            watcher = group.create_task(watch())
            owner = (run_as.uid, run_as.gid) if run_as.uid is not None and run_as.gid is not None else None
            await stage(working_dir, owner)
            watcher.cancel()
    except* TaskFailure as failures:
        raise failures.exceptions[0] from None


async def _attempt(plan: AttemptPlan, spec: ProcessSpec, kill: asyncio.Event, resume: Resume | None) -> ExitResult:
    # A shim is found again through its folder (ADR 0011): alive, it is adopted and spared; gone, its task is
    # caught by the orphan scan's environment net. Recording its pid in the store as well (a durable write and
    # a delete per attempt) would never kill anything, so only an unsupervised process is tracked.
    tracker = plan.tracker if plan.supervision is None else None

    async def on_spawn(pid: int) -> None:
        if tracker is not None:
            await tracker.started(pid)
        if resume is not None and resume.on_spawned is not None:
            resume.on_spawned()

    try:
        if resume is not None and resume.adopt and plan.supervision is not None:
            if spec.prepare is not None:
                await asyncio.to_thread(spec.prepare)
            return await adopt(plan.supervision, kill, resume.detach)
        if plan.supervision is not None:
            detach = resume.detach if resume else None
            return await run_supervised(spec, kill, plan.supervision, on_spawn, detach)
        return await run_process(spec, kill, on_spawn)
    finally:
        if tracker is not None:
            await asyncio.shield(tracker.ended())


def _task_info(outcome: Outcome) -> dict[str, Any]:
    """What an agent that adopts this attempt needs to report the task as this one would (recovery.py)."""
    last = outcome.last_retry_time
    return {
        "startTime": outcome.start_time.isoformat(),
        "retryCount": outcome.retry_count,
        "lastRetryTime": last.isoformat() if last is not None else None,
    }


@dataclass(slots=True)
class Resume:
    """How run_to_end continues: from a recorded outcome (start time, retries so far), adopting the running
    attempt's supervisor; ``detach`` set means a cancel leaves the supervised process running."""

    outcome: Outcome | None = None
    adopt: bool = False
    detach: asyncio.Event | None = None
    on_spawned: Callable[[], None] | None = None  # each attempt's process has started


async def run_to_end(
    plan: AttemptPlan,
    kill: asyncio.Event,
    on_change: Callable[[Outcome], None] = lambda _: None,
    resume: Resume | None = None,
) -> Outcome:
    """Run attempts until success, a non-retryable failure or the retry limit; the Outcome is final."""
    outcome = resume.outcome if resume is not None and resume.outcome is not None else Outcome()
    try:
        check_supported(plan)
        run_as = await _run_as(plan)
        resumed = resume is not None and (resume.adopt or resume.outcome is not None)
        if plan.stage is not None and not resumed:  # staged once, before the first attempt
            staging_dir = plan.task_dir / "wd"
            await asyncio.to_thread(staging_dir.mkdir, parents=True, exist_ok=True)
            await _stage_unless_killed(plan.stage, staging_dir, run_as, kill)
        while True:
            # Before every attempt: what the last attempt (or staging) left in the directory becomes the user's.
            # The launch does it in its own thread call (ProcessSpec.prepare); the working dir is task_dir/wd.
            working_dir = plan.task_dir / "wd"
            spec = ProcessSpec(
                command_line=plan.command_line,
                cwd=working_dir,
                env=_user_environment(plan, run_as, working_dir),
                stdout=plan.task_dir / "stdout.txt",
                stderr=plan.task_dir / "stderr.txt",
                max_wall_clock=plan.max_wall_clock,
                uid=run_as.uid,
                gid=run_as.gid,
                umask=TASK_UMASK,
                prepare=functools.partial(prepare_task_dir, plan.task_dir, run_as.uid, run_as.gid),
                task_info=_task_info(outcome),
            )
            result = await _attempt(plan, spec, kill, resume)
            faults.reached("task-exited")
            if resume is not None:
                resume.adopt = False  # the next attempt starts afresh
            outcome.exit_code = result.exit_code
            outcome.failure_info = _exit_failure(result, plan)
            if not _may_retry(plan, outcome, result):
                break
            outcome.retry_count += 1
            outcome.last_retry_time = utcnow()
            log.info("task.retrying", retry_count=outcome.retry_count, exit_code=result.exit_code)
            on_change(outcome)
    except TaskFailure as exc:
        outcome.failure_info = _failure(exc)
    outcome.end_time = utcnow()
    outcome.result = TaskResult.FAILURE if outcome.failure_info else TaskResult.SUCCESS
    return outcome
