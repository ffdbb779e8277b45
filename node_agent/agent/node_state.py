"""The retained NodeState of this agent: published on connect, on every load change, and as a heartbeat."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from datetime import datetime

import psutil

from node_agent import __version__
from node_agent.agent.publisher import Publisher
from node_agent.wire.base import utcnow
from node_agent.wire.status import NodeState, NodeStateName


class NodeStateReporter:
    def __init__(
        self,
        publisher: Publisher,
        free_disk: Callable[[], int | None],
        task_slots: int,
        boot_id: str,
        broker: Callable[[], str | None] = lambda: None,
    ) -> None:
        self.publisher = publisher
        self._broker = broker  # host:port of the broker the transport is connected to
        self._free_disk = free_disk  # blocking: FreeSpaceProbe.measure
        self.task_slots = task_slots
        self.boot_id = boot_id
        self._last: tuple[NodeStateName, int, str] | None = None
        self._since: datetime = utcnow()
        self.running = 0
        self.scheduling = "enabled"
        self.free_disk: int | None = None
        self.free_memory: int | None = None
        self.is_low_on_disk = False

    def build(self, name: NodeStateName | None = None) -> NodeState:
        now = utcnow()
        name = name or (NodeStateName.RUNNING if self.running else NodeStateName.IDLE)
        key = (name, self.running, self.scheduling)
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
            state_transition_time=self._since,
            last_heartbeat=now,
            free_disk_bytes=self.free_disk,
            free_memory_bytes=self.free_memory,
            is_low_on_disk=self.is_low_on_disk,
            broker=self._broker() if name != NodeStateName.OFFLINE else None,
        )

    def update(self, running: int, scheduling: str) -> None:
        """Publish when what a scheduler sees (state, running count, scheduling) changed."""
        previous = self._last
        self.running, self.scheduling = running, scheduling
        name = NodeStateName.RUNNING if running else NodeStateName.IDLE
        if previous != (name, running, scheduling):
            self.publisher.node_state(self.build())

    def set_disk(self, free: int | None, *, is_low: bool) -> None:
        """The retention sweep's view of free space; a change of ``is_low`` is published at once."""
        if free is not None:
            self.free_disk = free
        if is_low != self.is_low_on_disk:
            self.is_low_on_disk = is_low
            self.publish()

    def publish(self, name: NodeStateName | None = None) -> None:
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
        return self._free_disk(), psutil.virtual_memory().available
