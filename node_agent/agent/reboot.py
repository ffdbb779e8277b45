"""reboot and reimage on request (Azure Batch's nodeRebootOption): refused unless ``allow_reboot``; the node takes
no more tasks, deals with those it holds as the option says, records the operation (store key ("node", "reboot")),
then runs ``reboot_command``. At the next start in a new boot the recorded operation is completed: a reimage wipes
the node root and the agent's memory of jobs (so every job's preparation runs again), and an event reports it.
A start in the same boot (the command failed, or the agent was restarted while draining) resumes the operation.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import shutil
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from node_agent.agent.scheduling import end_tasks
from node_agent.agent.starttask import POOL_RECORD
from node_agent.errors import InputError, StoreCorrupt
from node_agent.retention.removal import remove_below
from node_agent.store.records import RecordStore
from node_agent.transport.outbox import OUTBOX_FILE
from node_agent.wire.base import utcnow
from node_agent.wire.status import EventType, NodeStateName

if TYPE_CHECKING:
    from node_agent.agent.jobs import JobManager
    from node_agent.agent.node_state import NodeStateReporter
    from node_agent.agent.publisher import Publisher
    from node_agent.agent.scheduling import Scheduling

log = structlog.get_logger(__name__)
RECORD = ("node", "reboot")
# The lock, and the durable outbox: what the agent published before the reimage still reaches the broker.
KEEP_IN_STATE_DIR = {"agent.lock", OUTBOX_FILE, f"{OUTBOX_FILE}-wal", f"{OUTBOX_FILE}-shm"}


@dataclass(frozen=True, slots=True)
class Operation:
    kind: str  # "reboot" or "reimage"
    option: str
    boot_id: str  # the boot in which it was asked for
    requested_at: str

    @property
    def state(self) -> NodeStateName:
        return NodeStateName.REIMAGING if self.kind == "reimage" else NodeStateName.REBOOTING

    @property
    def code(self) -> str:
        return "NodeReimaging" if self.kind == "reimage" else "NodeRebooting"

    def record(self) -> dict[str, Any]:
        return {
            "version": 1,
            "operation": self.kind,
            "option": self.option,
            "bootId": self.boot_id,
            "requestedAt": self.requested_at,
        }


@dataclass(frozen=True, slots=True)
class Completed:
    """A recorded operation that a new boot completed, reported once the agent is up."""

    operation: Operation
    forgotten_jobs: list[str]  # after a reimage: jobs whose per-node status this node must clear


def _read(store: RecordStore) -> Operation | None:
    record = store.load(RECORD)
    if record is None:
        return None
    try:
        operation = Operation(
            str(record["operation"]), str(record["option"]), str(record["bootId"]), str(record["requestedAt"])
        )
    except KeyError as exc:
        raise StoreCorrupt(f"record {RECORD} lacks {exc}") from exc
    if operation.kind not in ("reboot", "reimage"):
        raise StoreCorrupt(f"record {RECORD} has operation {operation.kind!r}: expected reboot or reimage")
    return operation


def _completed_tasks(store: RecordStore) -> dict[str, tuple[dict[str, Any] | None, list[dict[str, Any]]]]:
    """Each job's document and its completed tasks' records: what a reimage keeps, so the tasks' retained states
    are still cleared when the job is deleted (their results were published already; their files go)."""
    kept: dict[str, tuple[dict[str, Any] | None, list[dict[str, Any]]]] = {}
    for job_id in store.children(("jobs",)):
        record = store.load(("jobs", job_id, "job")) or {}
        tasks = [
            store.load(("jobs", job_id, "tasks", task_id)) for task_id in store.children(("jobs", job_id, "tasks"))
        ]
        kept[job_id] = (record.get("doc"), [task for task in tasks if task and task.get("state") == "completed"])
    return kept


def _wipe(root: Path, state_dir: Path) -> None:
    """Reimage: the node root emptied (no link followed) and every record of the agent but its lock removed."""
    for entry in sorted(root.iterdir()):
        removal = remove_below(root, [entry.name])
        if not removal.complete:
            log.error("reimage.removal_incomplete", path=entry.name, error=removal.error)
    for entry in sorted(state_dir.iterdir()):
        if entry.name in KEEP_IN_STATE_DIR:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


async def settle(store: RecordStore, root: Path, boot_id: str) -> tuple[Completed | None, Operation | None]:
    """Start-up, before anything else is read back: complete a recorded operation if the boot changed (returned
    first), else return it as still pending (second)."""
    operation = await asyncio.to_thread(_read, store)
    if operation is None:
        return None, None
    if operation.boot_id == boot_id:
        return None, operation
    jobs: list[str] = []
    if operation.kind == "reimage":
        kept = await asyncio.to_thread(_completed_tasks, store)
        pool = await asyncio.to_thread(store.load, POOL_RECORD)  # the node is still in its pool
        await asyncio.to_thread(_wipe, root, store.root)
        if pool is not None:
            await store.put(POOL_RECORD, pool)
        for job_id, (doc, tasks) in kept.items():
            if tasks:  # no preparation record: it runs again before the job's next task here
                await store.put(("jobs", job_id, "job"), {"version": 1, "doc": doc, "prepBlocked": False})
            for task in tasks:
                await store.put(("jobs", job_id, "tasks", str(task["id"])), task)
        jobs = sorted(kept)
    await store.delete(RECORD)
    return Completed(operation, jobs), None


class Rebooter:
    def __init__(
        self,
        manager: JobManager,
        scheduling: Scheduling,
        reporter: NodeStateReporter,
        *,
        allowed: bool,
        command: str,
        flush: Callable[[], Awaitable[bool]],
        stopping: asyncio.Event,
    ) -> None:
        self.manager = manager
        self.scheduling = scheduling
        self.reporter = reporter
        self.allowed = allowed
        self.command = command
        self.flush = flush
        self.stopping = stopping
        self.pending: Operation | None = None

    async def request(self, kind: str, option: str) -> dict[str, Any]:
        """The reboot or reimage command: recorded and under way when this returns."""
        if not self.allowed:
            raise InputError(
                "NodeRebootNotAllowed",
                f"this node does not allow {kind}: set allow_reboot (NODE_AGENT_ALLOW_REBOOT=true) in its agent",
            )
        if self.pending is not None:
            if self.pending.kind != kind:
                raise InputError("NodeOperationInProgress", f"the node is already doing a {self.pending.kind}")
            return {"state": str(self.pending.state)}  # a repeated command: the same operation
        operation = Operation(kind, option, self.manager.ctx.boot_id, utcnow().isoformat())
        await asyncio.shield(self.manager.ctx.store.put(RECORD, operation.record()))
        self.resume(operation)
        return {"state": str(operation.state)}

    def resume(self, operation: Operation) -> None:
        """Take no more tasks, say rebooting/reimaging, and carry the operation out in the background."""
        self.pending = operation
        message = f"the node is about to {operation.kind}; place the task on another node"
        self.manager.admission.block("reboot", operation.code, message)
        self.reporter.operation = operation.state
        self.reporter.update()
        log.info("reboot.requested", operation=operation.kind, option=operation.option)
        self.manager.ctx.group.create_task(self._carry_out(operation), name="reboot")

    async def _carry_out(self, operation: Operation) -> None:
        try:
            message = f"the task was terminated: its node was asked to {operation.kind} with option terminate"
            await end_tasks(self.manager, operation.option, requeue_code=operation.code, message=message)
            # taskcompletion, retaineddata: until the tasks completed. An agent stop ends the wait: its running
            # tasks may stay with their supervisors (ADR 0011), and the next start resumes the operation.
            if not await self._idle_or_stopping():
                return
            await self.flush()  # the reply and the last states reach the broker before the machine goes down
            if await self._run_command():
                await self.stopping.wait()  # the system stops the agent on its way down
                return
        except Exception:  # a node fault fails the operation, never the agent
            log.exception("reboot.failed", operation=operation.kind)
        await self._abandon(operation)

    async def _idle_or_stopping(self) -> bool:
        """Wait until the node is idle (True) or the agent stops (False)."""
        idle = asyncio.ensure_future(self.scheduling.wait_idle())
        stopped = asyncio.ensure_future(self.stopping.wait())
        try:
            await asyncio.wait({idle, stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in (idle, stopped):
                waiter.cancel()
        return not self.stopping.is_set()

    async def _run_command(self) -> bool:
        argv = shlex.split(self.command)
        log.info("reboot.command_started", argv=argv)
        try:
            process = await asyncio.create_subprocess_exec(*argv, stdin=asyncio.subprocess.DEVNULL, env=os.environ)
        except OSError as exc:
            log.error("reboot.command_failed", argv=argv, error=str(exc))
            return False
        status = await process.wait()
        if status != 0:
            log.error("reboot.command_failed", argv=argv, exit_code=status)
        return status == 0

    async def _abandon(self, operation: Operation) -> None:
        """The reboot command failed: forget the operation and serve again."""
        try:
            await asyncio.shield(self.manager.ctx.store.delete(RECORD))
        except OSError:  # the record stays: the next start in this boot tries again
            log.exception("reboot.record_failed")
        self.pending = None
        self.manager.admission.lift("reboot")
        self.reporter.operation = None
        self.reporter.update()
        log.warning("reboot.abandoned", operation=operation.kind)


def report_completed(publisher: Publisher, completed: Completed) -> None:
    """After the new boot: clear the per-node job status a reimage forgot, and say the operation is done."""
    for job_id in completed.forgotten_jobs:
        publisher.job_node(job_id, None)
    operation = completed.operation
    kind: EventType = "nodeReimaged" if operation.kind == "reimage" else "nodeRebooted"
    message = f"{operation.kind} (option {operation.option}) requested at {operation.requested_at} completed"
    publisher.node_event(kind, message)
    log.info("reboot.completed", operation=operation.kind, option=operation.option)
