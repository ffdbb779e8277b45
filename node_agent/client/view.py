"""PoolView: what the retained topics say about a pool, and the questions a driver asks of it."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pydantic import BaseModel

from node_agent.ids import is_valid_id
from node_agent.wire.base import utcnow
from node_agent.wire.specs import Job, Pool
from node_agent.wire.status import (
    FailureInfo,
    JobPreparationAndReleaseTaskExecutionInformation,
    NodeState,
    NodeStateName,
    SubtaskState,
    Task,
    TaskResult,
    TaskState,
)

M = TypeVar("M", bound=BaseModel)
PLACEABLE = (NodeStateName.IDLE, NodeStateName.RUNNING)


class NoNodeAvailable(Exception):
    """No node can take the task (none idle or running with scheduling enabled)."""


@dataclass(slots=True)
class PoolView:
    """Kept current from the retained topics; an empty retained payload removes an entry.

    ``tasks`` is read freely but written only through ``set_task``, which keeps the indexes that let placement
    and the job-wide questions cost O(nodes) or O(tasks of the job) instead of O(all tasks) per message.
    """

    _by_job: dict[str, dict[str, Task]] = field(default_factory=dict)
    _load: Counter[str] = field(default_factory=Counter)  # node id -> its tasks not completed
    _on_nodes: Counter[str] = field(default_factory=Counter)  # job id -> its tasks held by a node
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
                self.set_task((job_id, task_id), Task.model_validate_json(payload) if payload else None)
            case ["jobs", job_id, "nodes", node_id]:
                _store(self.prep_release, (job_id, node_id), JobPreparationAndReleaseTaskExecutionInformation, payload)

    def set_task(self, key: tuple[str, str], task: Task | None) -> None:
        """Record (or, with None, forget) a task's state."""
        old = self.tasks.pop(key, None)
        if old is not None:
            self._count(key[0], old, -1)
            of_job = self._by_job[key[0]]
            del of_job[key[1]]
            if not of_job:
                del self._by_job[key[0]]
        if task is not None:
            self.tasks[key] = task
            self._by_job.setdefault(key[0], {})[key[1]] = task
            self._count(key[0], task, 1)

    def _count(self, job_id: str, task: Task, delta: int) -> None:
        if task.node_info is None:
            return
        self._on_nodes[job_id] += delta
        if task.state != TaskState.COMPLETED:
            self._load[task.node_info.node_id] += delta

    def tasks_of(self, job_id: str) -> list[Task]:
        return [task for _, task in sorted(self._by_job.get(job_id, {}).items())]

    def prep_release_status(self, job_id: str) -> list[JobPreparationAndReleaseTaskExecutionInformation]:
        """Azure's ListPreparationAndReleaseTaskStatus: one entry per node that ran the job's preparation."""
        return [info for (j, _), info in sorted(self.prep_release.items()) if j == job_id]

    def pick_node(self, skipped: Iterable[str] = (), placing: Mapping[str, int] | None = None) -> str:
        """The placeable node with the most free slots, counting tasks placed and not yet completed, and
        ``placing``: addTasks sent to a node and not answered yet."""
        skip = set(skipped)
        placing = placing or {}
        candidates = [
            (state.task_slots - self._load[node_id] - placing.get(node_id, 0), node_id)
            for node_id, state in sorted(self.nodes.items())
            if node_id not in skip and state.state in PLACEABLE and state.scheduling_state == "enabled"
        ]
        if not candidates:
            raise NoNodeAvailable("no node is idle or running with scheduling enabled")
        best = max(free for free, _ in candidates)
        return next(node_id for free, node_id in candidates if free == best)

    def released(self, job: Job) -> bool:
        """Every task of the job that a node holds has ended, and every node that ran the job's preparation has
        completed its release. The tasks come first: a node's preparation status may not have reached this
        client when the job is terminated (its tasks were seen preparing), and without it no release would be
        waited for; a node publishes that status before it ends the job's tasks, so once their ends are here
        (on a broker that keeps one publisher's order, as Mosquitto does) so is the status."""
        ended = all(t.state == TaskState.COMPLETED or t.node_info is None for t in self.tasks_of(job.id))
        if job.job_release_task is None or not ended:
            return ended
        return all(
            info.job_release_task_execution_info is not None
            and info.job_release_task_execution_info.state == SubtaskState.COMPLETED
            for info in self.prep_release_status(job.id)
            if info.job_preparation_task_execution_info is not None
        )

    def end_unowned(self, job_id: str) -> list[Task]:
        """Complete with TaskEnded the job's tasks that no node holds (handed back, placed nowhere), as Azure
        Batch completes a terminated job's active tasks; return them, for the driver to publish."""
        failure = FailureInfo(category="usererror", code="TaskEnded", message="the job was terminated")
        ended = []
        for task in self.tasks_of(job_id):
            if task.node_info is not None or task.state == TaskState.COMPLETED:
                continue
            now = utcnow()
            info = task.execution_info.model_copy(
                update={"end_time": now, "result": TaskResult.FAILURE, "failure_info": failure}
            )
            update = {"state": TaskState.COMPLETED, "state_transition_time": now, "execution_info": info}
            ended.append(task.model_copy(update=update))
            self.set_task((job_id, task.id), ended[-1])
        return ended

    def cleaned_up(self, job_id: str) -> bool:
        """Every node that ran anything of the job has cleared its status and its tasks' states."""
        return not self._on_nodes[job_id] and not self.prep_release_status(job_id)


def _store(cache: dict[Any, Any], key: Any, model: type[M], payload: bytes) -> None:
    if not payload:
        cache.pop(key, None)
        return
    if isinstance(key, str) and not is_valid_id(key):
        return
    cache[key] = model.model_validate_json(payload)
