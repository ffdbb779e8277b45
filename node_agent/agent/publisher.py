"""Everything the agent publishes, in one place: task state and events, per-node job info, node state, replies."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from node_agent.ops import metrics
from node_agent.transport.mqtt import MqttTransport
from node_agent.wire.base import utcnow
from node_agent.wire.commands import ErrorInfo, Reply
from node_agent.wire.status import (
    Event,
    EventType,
    JobPreparationAndReleaseTaskExecutionInformation,
    NodeState,
    RemovalReason,
    StagingStats,
    Task,
    TaskState,
)
from node_agent.wire.topics import Topics

_RECENT_TASKS = 256  # serialised tasks kept for reuse (a task's state is saved and published from one model)


class Publisher:
    def __init__(self, transport: MqttTransport, topics: Topics, node_id: str, pool_id: str) -> None:
        self._transport = transport
        self._topics = topics
        self.node_id = node_id
        self.pool_id = pool_id
        self._recent: dict[int, tuple[Task, bytes]] = {}  # id(task) -> (task, its JSON); the task pins its id

    def task_json(self, task: Task) -> bytes:
        """``task.to_json()``, made once per state change: the retained state, its event and the store record
        of one Task model share the bytes (a model is frozen, so its bytes never change)."""
        if (hit := self._recent.get(id(task))) is not None and hit[0] is task:
            return hit[1]
        data = task.to_json()
        if len(self._recent) >= _RECENT_TASKS:
            del self._recent[next(iter(self._recent))]
        self._recent[id(task)] = (task, data)
        return data

    async def persisted(self) -> None:
        """Wait until everything published so far is in the durable outbox."""
        await self._transport.persisted()

    def record(self, key: tuple[str, ...], data: bytes | None) -> None:
        """Put (``None``: delete) a store record in the durable outbox, committed with what was published just
        before: a completed task's record with its result (``JobManager.complete``, ADR 0010)."""
        self._transport.record("/".join(key), data)

    def task(self, job_id: str, task: Task, *, code: str | None = None, message: str | None = None) -> None:
        """Retained task state plus an event; a ``code`` marks a hand-back (the task left this node)."""
        data = self.task_json(task)
        self._transport.publish(self._topics.task(job_id, task.id), data, retain=True)
        info = task.execution_info
        ran = (info.end_time - info.start_time).total_seconds() if info.end_time and info.start_time else None
        metrics.task_book.task(job_id, task.id, None if code else task.state, info.result, ran)
        # The event's last field is its task: the task's bytes are spliced in, not serialised again.
        head = Event.model_construct(
            type="taskHandedBack" if code else "taskStateChanged",
            time=task.state_transition_time,  # a copy published again after a crash is byte-identical
            node_id=self.node_id,
            job_id=job_id,
            task_id=task.id,
            state=task.state,
            code=code,
            message=message,
        ).to_json()
        self._transport.publish(self._topics.node_events(self.node_id), head[:-1] + b',"task":' + data + b"}")

    def subtask(self, job_id: str, task_id: str, kind: EventType, state: TaskState) -> None:
        """An event for the job's preparation or release task on this node (its status is on job_node)."""
        self._event(kind, job_id=job_id, task_id=task_id, state=state)

    def directory_removed(self, job_id: str, task_id: str, reason: RemovalReason, bytes_freed: int) -> None:
        """A task directory this node removed (retention or disk pressure)."""
        self._event("taskDirectoryRemoved", job_id=job_id, task_id=task_id, reason=reason, bytes_freed=bytes_freed)

    def node_event(self, kind: EventType, message: str) -> None:
        """An event about the node itself (nodeRebooted, nodeReimaged)."""
        self._event(kind, message=message)

    def staged(self, job_id: str, task_id: str, stats: StagingStats) -> None:
        """A task's resource files are in place: how many, and what the node's download cache saved."""
        self._event("resourceFilesStaged", job_id=job_id, task_id=task_id, staging=stats)

    def _event(self, kind: EventType, at: datetime | None = None, **fields: Any) -> None:
        event = Event(type=kind, time=at or utcnow(), node_id=self.node_id, **fields)
        self._transport.publish(self._topics.node_events(self.node_id), event.to_json())

    def clear_task(self, job_id: str, task_id: str) -> None:
        metrics.task_book.task(job_id, task_id, None)
        self._transport.publish(self._topics.task(job_id, task_id), b"", retain=True)

    def job_node(self, job_id: str, info: JobPreparationAndReleaseTaskExecutionInformation | None) -> None:
        payload = info.to_json() if info is not None else b""
        _count_subtasks(job_id, info)
        self._transport.publish(self._topics.job_node(job_id, self.node_id), payload, retain=True)

    def node_state(self, state: NodeState) -> None:
        self._transport.publish(self._topics.node_state(self.node_id), state.to_json(), retain=True)

    def rejected(self, code: str, message: str, request_id: str | None = None) -> None:
        """A command that cannot be answered (no usable replyTo) is reported as an event instead."""
        self._event("commandRejected", code=code, message=message, request_id=request_id)

    def reply(self, reply_to: str, request_id: str, result: object = None) -> None:
        """A command's result; a Task is spliced in as the bytes it was published with, not serialised again."""
        if isinstance(result, Task):
            head = Reply(request_id=request_id, ok=True).to_json()  # result is the last field set
            self._transport.publish(reply_to, head[:-1] + b',"result":' + self.task_json(result) + b"}")
            return
        reply = Reply(request_id=request_id, ok=True, result=result)
        self._transport.publish(reply_to, reply.to_json())

    def error(self, reply_to: str, request_id: str, code: str, message: str) -> None:
        reply = Reply(request_id=request_id, ok=False, error=ErrorInfo(code=code, message=message))
        self._transport.publish(reply_to, reply.to_json())


def _count_subtasks(job_id: str, info: JobPreparationAndReleaseTaskExecutionInformation | None) -> None:
    if info is None:
        metrics.task_book.forget_job(job_id)
        return
    prep, release = info.job_preparation_task_execution_info, info.job_release_task_execution_info
    for kind, sub in (("preparation", prep), ("release", release)):
        if sub is not None and sub.end_time is not None:
            metrics.task_book.subtask_ended(kind, job_id, sub.start_time, sub.end_time, sub.result)
