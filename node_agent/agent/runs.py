"""In-memory records of what this node runs: one TaskRun per task, one NodeJob per job it has seen."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from node_agent.wire.specs import Job, TaskSpec
from node_agent.wire.status import (
    JobPreparationAndReleaseTaskExecutionInformation,
    JobPreparationTaskExecutionInformation,
    JobReleaseTaskExecutionInformation,
    Task,
    TaskState,
)

_SETTLED = asyncio.Event()  # shared by compacted runs: nothing waits to kill or record a published task any more
_SETTLED.set()  # an Event binds to a loop only when something waits on it unset, so sharing it across loops is safe


class TaskRun:
    """One task this node holds, with what its worker needs while it runs.

    Once completed and published, ``compact()`` keeps only the task's final JSON: about 1 KB instead of 7 while its
    job exists (thousands of such tasks are normal). ``task`` then parses it again, which only a repeated addTask,
    a terminateTask or recovery ask for; ``is_finished`` and ``is_running`` do not."""

    __slots__ = (
        "_final",
        "_task",
        "boot_id",
        "job_id",
        "kill",
        "published",
        "recorded",
        "request_id",
        "requeue_code",
        "worker",
    )

    def __init__(
        self,
        job_id: str,
        task: Task,
        request_id: str | None = None,
        published: bool = True,
        boot_id: str | None = None,
    ) -> None:
        self.job_id = job_id
        self._task: Task | None = task  # the last published state; replaced (models are frozen) on every change
        self._final: bytes | None = None  # instead of _task once compacted
        self.kill = asyncio.Event()
        self.recorded = asyncio.Event()
        self.worker: asyncio.Task[None] | None = None
        self.requeue_code: str | None = None  # set when the run is to be handed back instead of completed
        self.request_id = request_id  # the addTask that brought it
        self.published = published  # a completed task's result is in the durable outbox (recorded with the task)
        self.boot_id = boot_id  # the boot in which it was accepted (recovery: agent/recovery.py _sort_unfinished)

    @property
    def task(self) -> Task:
        if self._task is not None:
            return self._task
        assert self._final is not None
        return Task.model_validate_json(self._final)

    @property
    def spec(self) -> TaskSpec:
        return self.task

    @property
    def is_finished(self) -> bool:
        return self._task is None or self._task.state == TaskState.COMPLETED

    @property
    def is_running(self) -> bool:
        return self._task is not None and self._task.state == TaskState.RUNNING

    def update(self, **changes: Any) -> Task:
        self._task = self.task.model_copy(update=changes)
        self._final = None
        return self._task

    def compact(self) -> None:
        """A completed, published task: keep its JSON, drop the model, the events and the finished worker."""
        if self._task is None or self._task.state != TaskState.COMPLETED or not self.published:
            return
        self._final = self._task.to_json()
        self._task = None
        self.kill = self.recorded = _SETTLED
        self.worker = None


@dataclass(eq=False, slots=True)
class NodeJob:
    id: str
    doc: Job | None = None
    doc_seen: asyncio.Event = field(default_factory=asyncio.Event)
    prep: JobPreparationTaskExecutionInformation | None = None
    prep_boot_id: str | None = None
    release: JobReleaseTaskExecutionInformation | None = None
    prep_blocked: bool = False
    tasks: dict[str, TaskRun] = field(default_factory=dict)
    prep_run: asyncio.Task[bool] | None = None
    prep_kill: asyncio.Event = field(default_factory=asyncio.Event)
    ending: asyncio.Task[None] | None = None
    delete_requested: bool = False
    successor: Job | None = None  # the document of a job created again with this id while this one was deleted
    has_record: bool = False  # the job record (with its document) is in the store

    @property
    def has_presence(self) -> bool:
        """Whether anything of this job ever ran or waits here (else the node ignores its end)."""
        return self.prep is not None or bool(self.tasks)

    def info(self, node_id: str, pool_id: str) -> JobPreparationAndReleaseTaskExecutionInformation:
        return JobPreparationAndReleaseTaskExecutionInformation(
            pool_id=pool_id,
            node_id=node_id,
            job_preparation_task_execution_info=self.prep,
            job_release_task_execution_info=self.release,
        )

    def record(self) -> dict[str, Any]:
        """The durable form (store key ("jobs", id, "job"))."""

        def dump(model: BaseModel | None) -> dict[str, Any] | None:
            return model.model_dump(mode="json", by_alias=True) if model is not None else None

        return {
            "version": 1,
            "doc": dump(self.doc),
            "prep": dump(self.prep),
            "prepBootId": self.prep_boot_id,
            "release": dump(self.release),
            "prepBlocked": self.prep_blocked,
        }

    @classmethod
    def from_record(cls, job_id: str, record: dict[str, Any]) -> NodeJob:
        job = cls(id=job_id, has_record=True)
        if record.get("doc"):
            job.doc = Job.model_validate(record["doc"])
        if record.get("prep"):
            job.prep = JobPreparationTaskExecutionInformation.model_validate(record["prep"])
        if record.get("release"):
            job.release = JobReleaseTaskExecutionInformation.model_validate(record["release"])
        job.prep_boot_id = record.get("prepBootId")
        job.prep_blocked = bool(record.get("prepBlocked"))
        return job
