"""The pool's start task on this node (Azure Batch StartTask): at most once per boot, in ``<root>/startup``.

Which start task: the node's own ``start_task`` setting if set, else the ``startTask`` of the pool document on
``P/pools/{poolId}`` (kept in the store, so a reboot finds it before the agent connects). It runs when the agent
starts in a boot in which it has not completed yet (first join, every boot id change, or an agent restart that
interrupted it), and, on a node that has run none in this boot, when a pool document with one arrives. With
``waitForSuccess`` the node takes no task until it succeeded (``waitingforstarttask``), and none at all in this boot
if it failed after its retries (``starttaskfailed``). Its ``startTaskInfo`` is recorded with the boot id
(store key ("node", "starttask")) and shown in NodeState.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import structlog
from pydantic import ValidationError

from node_agent.agent.attempts import AttemptPlan, Outcome, run_to_end, user_request
from node_agent.errors import ConfigError, StoreCorrupt
from node_agent.runner.environment import task_environment
from node_agent.wire.base import utcnow
from node_agent.wire.specs import Pool, StartTask
from node_agent.wire.status import NodeStateName, StartTaskInformation, SubtaskState, TaskResult

if TYPE_CHECKING:
    from node_agent.agent.jobs import JobManager
    from node_agent.agent.node_state import NodeStateReporter

log = structlog.get_logger(__name__)
RECORD = ("node", "starttask")
POOL_RECORD = ("node", "pool")
PROCESS_KEY = ("@node", "starttask")  # "@" is no id character: no job's task can share the process record


def configured_start_task(value: dict[str, Any] | None) -> StartTask | None:
    """The ``start_task`` setting as a StartTask (ConfigError, exit 2, when it is not one)."""
    if value is None:
        return None
    try:
        return StartTask.model_validate(value)
    except ValidationError as exc:
        error = exc.errors(include_url=False)[0]
        where = ".".join(str(part) for part in error["loc"])
        raise ConfigError(f"invalid setting start_task (NODE_AGENT_START_TASK): {where}: {error['msg']}") from None


class StartTaskRunner:
    def __init__(self, manager: JobManager, reporter: NodeStateReporter, configured: StartTask | None) -> None:
        self.manager = manager
        self.ctx = manager.ctx
        self.reporter = reporter
        self.configured = configured
        self.from_pool: StartTask | None = None
        self.info: StartTaskInformation | None = None
        self.info_boot_id: str | None = None
        self.wait_for_success = False
        self._run: asyncio.Task[None] | None = None
        self._kill = asyncio.Event()
        self._pool_lock = asyncio.Lock()

    @property
    def spec(self) -> StartTask | None:
        return self.configured or self.from_pool

    async def load(self) -> None:
        """Start-up: the last run's info and the last pool document, as recorded."""
        store = self.ctx.store
        record, pool = await asyncio.gather(
            asyncio.to_thread(store.load, RECORD), asyncio.to_thread(store.load, POOL_RECORD)
        )
        try:
            if record is not None:
                self.info = StartTaskInformation.model_validate(record["info"])
                self.info_boot_id = str(record["bootId"])
                self.wait_for_success = bool(record["waitForSuccess"])
            if pool is not None:
                self.from_pool = Pool.model_validate(pool).start_task
        except (ValidationError, KeyError) as exc:
            raise StoreCorrupt(f"the start task's records do not match their schema: {exc}") from exc
        if self.info_boot_id == self.ctx.boot_id:
            self._show()  # this boot's result (a failure keeps the node starttaskfailed)

    def start(self) -> None:
        """Run the start task unless it already completed in this boot (or there is none)."""
        if self._has_run_this_boot() or self.spec is None or self._run is not None:
            return
        spec = self.spec
        # Shown at once, before anything is published: a waitForSuccess start task keeps the node from idle.
        self.wait_for_success = spec.wait_for_success
        self.info = StartTaskInformation(state=SubtaskState.RUNNING, start_time=utcnow())
        self.info_boot_id = self.ctx.boot_id
        self._show()
        self._run = self.ctx.group.create_task(self._execute(spec), name="starttask")

    def _has_run_this_boot(self) -> bool:
        return self.info_boot_id == self.ctx.boot_id and self.info is not None and self.info.state == "completed"

    async def on_pool_document(self, doc: Pool | None) -> None:
        """A retained pool document arrived (None: it was removed): keep it for the next boot; run its start task
        now if this node has run none in this boot."""
        async with self._pool_lock:
            try:
                if doc is None:
                    await self.ctx.store.delete(POOL_RECORD)
                else:
                    document = doc.model_dump(mode="json", by_alias=True, exclude_none=True)
                    await self.ctx.store.put(POOL_RECORD, document)
            except OSError:  # a disk fault: the document still applies to this boot, never fails the agent
                log.exception("pool.record_failed")
            self.from_pool = doc.start_task if doc is not None else None
            if self.info_boot_id != self.ctx.boot_id:
                self.start()

    async def stop(self) -> None:
        """Agent shutdown: a running start task is killed and stays recorded running, so it runs again at the
        next start (in this boot or the next)."""
        if self._run is not None and not self._run.done():
            self._kill.set()
            await asyncio.wait({self._run})

    async def _execute(self, spec: StartTask) -> None:
        try:
            await self._run_start_task(spec)
        except Exception:  # a node fault fails the start task, never the agent
            log.exception("starttask.agent_error")

    async def _run_start_task(self, spec: StartTask) -> None:
        await self._save()
        log.info("starttask.started", wait_for_success=spec.wait_for_success)
        outcome = await run_to_end(self._plan(spec), self._kill, self._progress)
        if self._kill.is_set():
            return  # the agent is stopping: recorded running, run again at the next start
        self.info = StartTaskInformation(**outcome.fields(), state=SubtaskState.COMPLETED)
        await self._save()
        log.info("starttask.completed", exit_code=outcome.exit_code, result=str(outcome.result))

    def _plan(self, spec: StartTask) -> AttemptPlan:
        layout = self.ctx.layout
        settings = [(setting.name, setting.value) for setting in spec.environment_settings]
        return AttemptPlan(
            command_line=spec.command_line,
            task_dir=layout.startup,
            env=task_environment(layout.startup_variables(), [], settings),
            max_wall_clock=None,  # Azure Batch's start task has no wall-clock limit
            max_task_retry_count=spec.max_task_retry_count,
            resource_files=spec.resource_files,
            job_id=PROCESS_KEY[0],
            task_id=PROCESS_KEY[1],
            named_by_settings=frozenset(name for name, _ in settings),
            user=user_request(spec.user_identity),
            users=self.ctx.users,
            tracker=self.ctx.processes.track(*PROCESS_KEY),
            stage=self.ctx.stage_for(*PROCESS_KEY, spec.resource_files),
        )

    def _progress(self, outcome: Outcome) -> None:
        if self.info is not None:
            update = {"retry_count": outcome.retry_count, "last_retry_time": outcome.last_retry_time}
            self.info = self.info.model_copy(update=update)
            self._show()

    async def _save(self) -> None:
        assert self.info is not None
        record = {
            "version": 1,
            "bootId": self.info_boot_id,
            "waitForSuccess": self.wait_for_success,
            "info": self.info.model_dump(mode="json", by_alias=True, exclude_none=True),
        }
        await asyncio.shield(self.ctx.store.put(RECORD, record))
        self._show()

    def _show(self) -> None:
        """NodeState and admission follow the start task: with waitForSuccess, no task before it succeeded."""
        info, admission = self.info, self.manager.admission
        failed = info is not None and info.state == SubtaskState.COMPLETED and info.result != TaskResult.SUCCESS
        running = info is not None and info.state == SubtaskState.RUNNING
        if self.wait_for_success and running:
            self.reporter.start_task = NodeStateName.WAITING_FOR_START_TASK
            admission.block(
                "starttask",
                "StartTaskNotCompleted",
                "the node's start task is still running; wait or place the task on another node",
            )
        elif self.wait_for_success and failed:
            self.reporter.start_task = NodeStateName.START_TASK_FAILED
            admission.block(
                "starttask",
                "StartTaskFailed",
                "the node's start task failed (see startTaskInfo in its "
                "state); fix it and reboot the node, or place the task on another node",
            )
        else:
            self.reporter.start_task = None
            admission.lift("starttask")
        self.reporter.start_task_info = info
        self.reporter.update()
