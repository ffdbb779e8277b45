"""The retained NodeState of this agent: published on connect, on every change a scheduler sees, and as a heartbeat.

A change of ``state``, ``schedulingState`` or the start task is published at once. A change of the running count
alone (a task started or ended while others run) is published at most once per ``LOAD_INTERVAL_S``, with the
count of that moment: a burst of tasks costs a few NodeStates, not two per task, and the last one is right.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from datetime import datetime
from typing import Literal

import psutil

from node_agent import __version__
from node_agent.agent.publisher import Publisher
from node_agent.ops.figures import NodeFigures
from node_agent.wire.base import utcnow
from node_agent.wire.status import NodeState, NodeStateName, StartTaskInformation, TaskUserMode

# How long a change of the running count alone may wait to be published, merged with the changes after it.
LOAD_INTERVAL_S = 0.1


class NodeStateReporter:
    def __init__(
        self,
        publisher: Publisher,
        free_disk: Callable[[], int | None],
        task_slots: int,
        boot_id: str,
        broker: Callable[[], str | None] = lambda: None,
        figures: Callable[[], NodeFigures] | None = None,
        task_user_mode: TaskUserMode = "agentUser",
    ) -> None:
        self.task_user_mode: TaskUserMode = task_user_mode
        self.publisher = publisher
        self._broker = broker  # host:port of the broker the transport is connected to
        self._free_disk = free_disk  # blocking: FreeSpaceProbe.measure
        self._figures = figures  # blocking: ops.figures.measure_node (CPU, memory and disk totals)
        self.figures: NodeFigures | None = None
        self.task_slots = task_slots
        self.boot_id = boot_id
        self._last: tuple[object, ...] | None = None
        self._since: datetime = utcnow()
        self.running = 0
        self.scheduling: Literal["enabled", "disabled"] = "enabled"
        self.operation: NodeStateName | None = None  # rebooting or reimaging (agent/reboot.py)
        self.start_task: NodeStateName | None = None  # waitingforstarttask or starttaskfailed (agent/starttask.py)
        self.start_task_info: StartTaskInformation | None = None
        self.free_disk: int | None = None
        self.free_memory: int | None = None
        self.is_low_on_disk = False
        self._published_at = float("-inf")  # event loop time of the last publication
        self._later: asyncio.TimerHandle | None = None  # a coalesced load change waiting to be published

    def build(self, name: NodeStateName | None = None) -> NodeState:
        now = utcnow()
        name = name or self._name()
        key = self._key(name)
        if key[0] != (self._last or key)[0]:
            self._since = now
        self._last = key
        return NodeState(
            node_id=self.publisher.node_id,
            pool_id=self.publisher.pool_id,
            state=name,
            scheduling_state=self.scheduling,
            task_slots=self.task_slots,
            running_task_slots_count=self.running,
            agent_version=__version__,
            boot_id=self.boot_id,
            is_privileged=os.geteuid() == 0,
            task_user_mode=self.task_user_mode,
            state_transition_time=self._since,
            last_heartbeat=now,
            free_disk_bytes=self.free_disk,
            free_memory_bytes=self.free_memory,
            total_memory_bytes=self.figures.memory_total_bytes if self.figures else None,
            total_disk_bytes=self.figures.disk_total_bytes if self.figures else None,
            cpu_percent=self.figures.cpu_percent if self.figures else None,
            is_low_on_disk=self.is_low_on_disk,
            broker=self._broker() if name != NodeStateName.OFFLINE else None,
            start_task_info=self.start_task_info,
        )

    def _name(self) -> NodeStateName:
        if self.operation is not None:
            return self.operation
        if self.start_task is not None:
            return self.start_task
        return NodeStateName.RUNNING if self.running else NodeStateName.IDLE

    def _key(self, name: NodeStateName) -> tuple[object, ...]:
        return (name, self.running, self.scheduling, self.start_task_info)

    def update(self, running: int | None = None) -> None:
        """Publish when what a scheduler sees (state, running count, scheduling, start task) changed: at once,
        unless only the running count did and the last publication is less than LOAD_INTERVAL_S old."""
        if running is not None:
            self.running = running
        key = self._key(self._name())
        if self._last == key:
            return
        now = asyncio.get_running_loop().time()
        load_only = self._last is not None and key[0] == self._last[0] and key[2:] == self._last[2:]
        if not load_only or now >= self._published_at + LOAD_INTERVAL_S:
            self.publish()
        elif self._later is None:
            self._later = asyncio.get_running_loop().call_at(self._published_at + LOAD_INTERVAL_S, self._load_due)

    def _load_due(self) -> None:
        self._later = None
        if self._last != self._key(self._name()):
            self.publish()

    def set_disk(self, free: int | None, *, is_low: bool) -> None:
        """The retention sweep's view of free space; a change of ``is_low`` is published at once."""
        if free is not None:
            self.free_disk = free
        if is_low != self.is_low_on_disk:
            self.is_low_on_disk = is_low
            self.publish()

    def publish(self, name: NodeStateName | None = None) -> None:
        """Publish the current state (or ``name``) now; a coalesced load change still waiting is part of it."""
        if self._later is not None:
            self._later.cancel()
            self._later = None
        self._published_at = asyncio.get_running_loop().time()
        self.publisher.node_state(self.build(name))

    async def heartbeat(self, interval_s: float, stopping: asyncio.Event) -> None:
        while not stopping.is_set():
            self.free_disk, self.free_memory = await asyncio.to_thread(self._measure)
            self.publish()
            try:
                async with asyncio.timeout(interval_s):
                    await stopping.wait()
            except TimeoutError:
                pass

    def _measure(self) -> tuple[int | None, int | None]:
        if self._figures is not None:
            self.figures = self._figures()
            return self._free_disk(), self.figures.memory_available_bytes
        return self._free_disk(), psutil.virtual_memory().available
