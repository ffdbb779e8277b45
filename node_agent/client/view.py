"""PoolView: what the retained topics say about a pool, and the questions a driver asks of it."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pydantic import BaseModel

from node_agent.ids import is_valid_id
from node_agent.wire.specs import Job, Pool
from node_agent.wire.status import (
    JobPreparationAndReleaseTaskExecutionInformation,
    NodeState,
    NodeStateName,
    SubtaskState,
    Task,
    TaskState,
)

M = TypeVar("M", bound=BaseModel)
PLACEABLE = (NodeStateName.IDLE, NodeStateName.RUNNING)


class NoNodeAvailable(Exception):
    """No node can take the task (none idle or running with scheduling enabled)."""


@dataclass(slots=True)
class PoolView:
    """Kept current from the retained topics; an empty retained payload removes an entry."""

    nodes: dict[str, NodeState] = field(default_factory=dict)
    jobs: dict[str, Job] = field(default_factory=dict)
    tasks: dict[tuple[str, str], Task] = field(default_factory=dict)
    prep_release: dict[tuple[str, str], JobPreparationAndReleaseTaskExecutionInformation] = field(default_factory=dict)
    pools: dict[str, Pool] = field(default_factory=dict)

    def apply(self, levels: list[str], payload: bytes) -> None:
        """Take one retained message (levels below the prefix); raises pydantic's ValidationError."""
        match levels:
            case ["nodes", node_id, "state"]:
                _store(self.nodes, node_id, NodeState, payload)
            case ["jobs", job_id]:
                _store(self.jobs, job_id, Job, payload)
            case ["pools", pool_id]:
                _store(self.pools, pool_id, Pool, payload)
            case ["jobs", job_id, "tasks", task_id]:
                _store(self.tasks, (job_id, task_id), Task, payload)
            case ["jobs", job_id, "nodes", node_id]:
                _store(self.prep_release, (job_id, node_id), JobPreparationAndReleaseTaskExecutionInformation, payload)

    def tasks_of(self, job_id: str) -> list[Task]:
        return [task for (j, _), task in sorted(self.tasks.items()) if j == job_id]

    def prep_release_status(self, job_id: str) -> list[JobPreparationAndReleaseTaskExecutionInformation]:
        """Azure's ListPreparationAndReleaseTaskStatus: one entry per node that ran the job's preparation."""
        return [info for (j, _), info in sorted(self.prep_release.items()) if j == job_id]

    def pick_node(self, skipped: Iterable[str] = ()) -> str:
        """The placeable node with the most free slots, counting tasks placed and not yet completed."""
        skip = set(skipped)
        load: dict[str, int] = {}
        for task in self.tasks.values():
            if task.node_info is not None and task.state != TaskState.COMPLETED:
                load[task.node_info.node_id] = load.get(task.node_info.node_id, 0) + 1
        candidates = [
            (state.task_slots - load.get(node_id, 0), node_id)
            for node_id, state in sorted(self.nodes.items())
            if node_id not in skip and state.state in PLACEABLE and state.scheduling_state == "enabled"
        ]
        if not candidates:
            raise NoNodeAvailable("no node is idle or running with scheduling enabled")
        best = max(free for free, _ in candidates)
        return next(node_id for free, node_id in candidates if free == best)

    def released(self, job: Job) -> bool:
        """Every node that ran the job's preparation has completed its release (or, without a release
        task, every node holding a task of the job has ended it)."""
        if job.job_release_task is None:
            return all(t.state == TaskState.COMPLETED or t.node_info is None for t in self.tasks_of(job.id))
        return all(
            info.job_release_task_execution_info is not None
            and info.job_release_task_execution_info.state == SubtaskState.COMPLETED
            for info in self.prep_release_status(job.id)
            if info.job_preparation_task_execution_info is not None
        )

    def cleaned_up(self, job_id: str) -> bool:
        """Every node that ran anything of the job has cleared its status and its tasks' states."""
        on_nodes = any(t.node_info is not None for t in self.tasks_of(job_id))
        return not self.prep_release_status(job_id) and not on_nodes


def _store(cache: dict[Any, Any], key: Any, model: type[M], payload: bytes) -> None:
    if not payload:
        cache.pop(key, None)
        return
    if isinstance(key, str) and not is_valid_id(key):
        return
    cache[key] = model.model_validate_json(payload)
