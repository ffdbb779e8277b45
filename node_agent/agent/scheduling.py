"""The node's scheduling state (disableScheduling, enableScheduling, drain): durable across agent restarts, and
what Azure Batch's nodeDisableSchedulingOption does to the tasks the node holds.

    requeue         running tasks are killed, waiting ones stopped; all handed back active (taskHandedBack)
    terminate       running and waiting tasks end now: completed with TaskEnded
    taskcompletion  they run on to completion; only new tasks are refused
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import structlog

from node_agent.errors import StoreCorrupt

if TYPE_CHECKING:
    from node_agent.agent.jobs import JobManager
    from node_agent.agent.node_state import NodeStateReporter

log = structlog.get_logger(__name__)
RECORD = ("node", "scheduling")
OPTIONS = ("requeue", "terminate", "taskcompletion", "retaineddata")


async def end_tasks(manager: JobManager, option: str, *, requeue_code: str, message: str) -> None:
    """Apply ``option`` to every task the node holds, and return once each is handed back or completed
    (``taskcompletion`` and ``retaineddata`` leave them running)."""
    runs = manager.unfinished()
    if option not in ("requeue", "terminate") or not runs:
        return
    async with asyncio.TaskGroup() as group:
        for run in runs:
            if option == "requeue":
                group.create_task(manager.requeue(run, requeue_code))
            else:
                group.create_task(manager.end_task(run, message))


class Scheduling:
    """Owns ``schedulingState``: the admission block "scheduling", its record, and NodeState's field."""

    def __init__(self, manager: JobManager, reporter: NodeStateReporter) -> None:
        self.manager = manager
        self.reporter = reporter
        self._load_changed = asyncio.Event()

    async def load(self) -> None:
        """Start-up: a node disabled before the agent stopped stays disabled."""
        record = await asyncio.to_thread(self.manager.ctx.store.load, RECORD)
        if record is None:
            return
        state = record.get("schedulingState")
        if state not in ("enabled", "disabled"):
            raise StoreCorrupt(f"record {RECORD} has schedulingState {state!r}: expected enabled or disabled")
        self._apply(enabled=state == "enabled")

    def on_load_change(self) -> None:
        """A task started, completed or was handed back (wakes ``wait_idle``)."""
        self._load_changed.set()

    async def disable(self, option: str) -> dict[str, Any]:
        """Refuse new tasks from now on, then apply the option to those the node holds."""
        await self._save("disabled", option)
        self._apply(enabled=False)  # published before any hand-back: a client re-places those elsewhere
        log.info("scheduling.disabled", option=option)
        message = "the task was terminated: scheduling was disabled on its node with option terminate"
        await end_tasks(self.manager, option, requeue_code="NodeSchedulingDisabled", message=message)
        return {"schedulingState": "disabled"}

    async def enable(self) -> dict[str, Any]:
        await self._save("enabled", None)
        self._apply(enabled=True)
        log.info("scheduling.enabled")
        return {"schedulingState": "enabled"}

    async def drain(self) -> dict[str, Any]:
        """Stop taking work (disabled, taskcompletion) and return once the node holds no unfinished task."""
        await self.disable("taskcompletion")
        await self.wait_idle()
        log.info("scheduling.drained")
        return {"schedulingState": "disabled", "runningTaskSlotsCount": 0}

    async def wait_idle(self) -> None:
        while self.manager.unfinished():
            self._load_changed.clear()
            await self._load_changed.wait()

    async def _save(self, state: str, option: str | None) -> None:
        record = {"version": 1, "schedulingState": state, "option": option}
        await asyncio.shield(self.manager.ctx.store.put(RECORD, record))

    def _apply(self, *, enabled: bool) -> None:
        admission = self.manager.admission
        if enabled:
            admission.lift("scheduling")
        else:
            admission.block(
                "scheduling",
                "NodeSchedulingDisabled",
                "scheduling is disabled on this node; place the task on another node or send enableScheduling",
            )
        self.reporter.scheduling = "enabled" if enabled else "disabled"
        self.reporter.update()
