"""The retained NodeState of this agent: published on connect, on every load change, and as a heartbeat."""

from __future__ import annotations

import asyncio
import os
import shutil
from datetime import datetime

import psutil

from node_agent import __version__
from node_agent.agent.publisher import Publisher
from node_agent.wire.base import utcnow
from node_agent.wire.status import NodeState, NodeStateName


class NodeStateReporter:
    def __init__(self, publisher: Publisher, root: str, task_slots: int, boot_id: str) -> None:
        self.publisher = publisher
        self.root = root
        self.task_slots = task_slots
        self.boot_id = boot_id
        self._last: tuple[NodeStateName, int, str] | None = None
        self._since: datetime = utcnow()
        self.running = 0
        self.scheduling = "enabled"
        self.free_disk: int | None = None
        self.free_memory: int | None = None

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
        )

    def update(self, running: int, scheduling: str) -> None:
        """Publish when what a scheduler sees (state, running count, scheduling) changed."""
        previous = self._last
        self.running, self.scheduling = running, scheduling
        name = NodeStateName.RUNNING if running else NodeStateName.IDLE
        if previous != (name, running, scheduling):
            self.publisher.node_state(self.build())

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
        try:
            disk = shutil.disk_usage(self.root).free
        except OSError:
            disk = None
        return disk, psutil.virtual_memory().available
