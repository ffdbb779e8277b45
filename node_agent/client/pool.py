"""BatchClient: drives a pool of agents over MQTT the way the Azure Batch service drives its nodes."""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from collections import Counter, deque
from collections.abc import Callable, Iterable
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

import structlog
from pydantic import BaseModel, ValidationError

from node_agent.client.connection import client_transport
from node_agent.client.nodes import NodeOperations
from node_agent.client.view import NoNodeAvailable, PoolView
from node_agent.transport.mqtt import Ack
from node_agent.wire.base import utcnow
from node_agent.wire.commands import GET_FILE_MAX_LENGTH, Reply
from node_agent.wire.specs import Job, JobState, TaskSpec
from node_agent.wire.status import (
    Event,
    JobPreparationAndReleaseTaskExecutionInformation,
    NodeState,
    NodeStateName,
    Task,
    TaskState,
)
from node_agent.wire.topics import Topics

log = structlog.get_logger(__name__)
T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)

# Refusals after which the task is tried on another node instead of failing the add.
RETRY_ELSEWHERE = {
    "NodeSchedulingDisabled",
    "JobPreparationTaskFailed",
    "NodeShuttingDown",
    "StartTaskNotCompleted",
    "StartTaskFailed",
    "NodeRebooting",
    "NodeReimaging",
}


class CommandError(Exception):
    """An agent answered a command with an error reply."""

    def __init__(self, node_id: str, code: str, message: str) -> None:
        super().__init__(f"{node_id}: {code}: {message}")
        self.node_id = node_id
        self.code = code
        self.message = message


class BatchClient:
    """``async with BatchClient(url) as client:`` then create jobs, add tasks, wait, read files."""

    def __init__(
        self,
        broker_url: str,
        *,
        topic_prefix: str = "batch",
        command_timeout_s: float = 30,
        tls_ca_file: str | Path | None = None,
        tls_cert_file: str | Path | None = None,
        tls_key_file: str | Path | None = None,
        username: str | None = None,
        password: str | None = None,
    ) -> None:
        """``tls_ca_file``: for an ``mqtts://`` URL, the CA certificate(s) to trust instead of the system's;
        ``tls_cert_file`` and ``tls_key_file``: a client certificate and its key to present. ``username`` and
        ``password``: the login for every broker URL that does not carry one (keeps the password out of URLs)."""
        self.topics = Topics(topic_prefix)
        self.client_id = "c" + uuid.uuid4().hex[:20]
        self.command_timeout_s = command_timeout_s
        self.view = PoolView()
        self.nodes = NodeOperations(self)
        self.on_event: Callable[[Event], None] | None = None
        self._changed = asyncio.Condition()
        self._replies: dict[str, asyncio.Future[Reply]] = {}
        self._placed: dict[tuple[str, str], TaskSpec] = {}
        self._excluded: dict[str, set[str]] = {}  # job id -> nodes whose preparation failed
        self._placing: Counter[str] = Counter()  # node id -> addTasks sent, not answered yet
        self._stopping = asyncio.Event()
        self._background: set[asyncio.Task[Any]] = set()
        self._transport = client_transport(
            broker_url,
            self.topics,
            self.client_id,
            self._on_message,
            tls_ca_file=tls_ca_file,
            tls_cert_file=tls_cert_file,
            tls_key_file=tls_key_file,
            username=username,
            password=password,
        )
        self._runner: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Self:
        self._runner = asyncio.create_task(self._transport.run(self._stopping), name="batch-client-mqtt")
        connected = asyncio.create_task(self._transport.connected.wait())
        await asyncio.wait(
            {connected, self._runner}, timeout=self.command_timeout_s, return_when=asyncio.FIRST_COMPLETED
        )
        if not connected.done():
            connected.cancel()
            await self.__aexit__(None, None, None)
            raise ConnectionError("cannot reach the MQTT broker")
        await self.sync()
        return self

    async def sync(self) -> None:
        """Round trip through the broker: every retained message of our subscriptions has arrived after it."""
        request_id = uuid.uuid4().hex
        future: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self._replies[request_id] = future
        probe = Reply(request_id=request_id, ok=True).to_json()
        self._transport.publish(self.topics.replies(self.client_id), probe)
        try:
            async with asyncio.timeout(self.command_timeout_s):
                await future
        finally:
            self._replies.pop(request_id, None)

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._transport.flush(timeout_s=5)
        for task in list(self._background):
            task.cancel()
        self._stopping.set()
        if self._runner is not None:
            await asyncio.wait({self._runner}, timeout=10)

    # -- incoming ----------------------------------------------------------------------------------------

    async def _on_message(self, topic: str, payload: bytes, retained: bool, ack: Ack) -> None:
        levels = self.topics.levels(topic) or []
        try:
            self._apply(levels, payload)
        except ValidationError as exc:
            log.warning("client.invalid_payload", topic=topic, error=str(exc)[:200])
        async with self._changed:
            self._changed.notify_all()

    def _apply(self, levels: list[str], payload: bytes) -> None:
        match levels:
            case ["clients", _, "replies"]:
                reply = Reply.model_validate_json(payload)
                future = self._replies.pop(reply.request_id, None)
                if future is not None and not future.done():
                    future.set_result(reply)
            case ["nodes", _, "events"]:
                # Each event carries a whole task; only a hand-back (or an on_event reader) needs it parsed.
                if self.on_event is not None or b'"taskHandedBack"' in payload:
                    self._on_event(Event.model_validate_json(payload))
            case _:
                self.view.apply(levels, payload)

    def _on_event(self, event: Event) -> None:
        if self.on_event is not None:
            self.on_event(event)
        if event.type != "taskHandedBack" or event.job_id is None or event.task_id is None:
            return
        spec = self._placed.get((event.job_id, event.task_id))
        job = self.view.jobs.get(event.job_id)
        if spec is None or job is None or job.state != JobState.ACTIVE:
            return
        if event.code == "JobPreparationTaskFailed":
            self._excluded.setdefault(event.job_id, set()).add(event.node_id)
        task = asyncio.create_task(self._replace(event.job_id, spec, event.node_id))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _replace(self, job_id: str, spec: TaskSpec, from_node: str) -> None:
        try:
            task = await self.add_task(job_id, spec, exclude={from_node})
            log.info(
                "client.task_replaced",
                job_id=job_id,
                task_id=spec.id,
                node_id=task.node_info and task.node_info.node_id,
            )
        except (NoNodeAvailable, CommandError, TimeoutError) as exc:
            log.warning("client.task_not_replaced", job_id=job_id, task_id=spec.id, error=str(exc))

    async def wait_until(self, predicate: Callable[[], T | None], timeout_s: float) -> T:
        """Wait until ``predicate()`` returns something truthy, re-checking on every message."""
        async with asyncio.timeout(timeout_s), self._changed:
            while not (result := predicate()):
                await self._changed.wait()
            return result

    # -- commands ----------------------------------------------------------------------------------------

    async def command(self, node_id: str, body: dict[str, Any], *, timeout_s: float | None = None) -> Any:
        """Send one command to a node and return the result of its reply (CommandError on an error reply);
        ``timeout_s`` defaults to the client's ``command_timeout_s``."""
        request_id = uuid.uuid4().hex
        future: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self._replies[request_id] = future
        message = {**body, "requestId": request_id, "replyTo": self.topics.replies(self.client_id)}
        self._transport.publish(self.topics.node_commands(node_id), json.dumps(message).encode())
        try:
            async with asyncio.timeout(timeout_s or self.command_timeout_s):
                reply = await future
        finally:
            self._replies.pop(request_id, None)
        if not reply.ok:
            assert reply.error is not None
            raise CommandError(node_id, reply.error.code, reply.error.message)
        return reply.result

    # -- jobs ----------------------------------------------------------------------------------------------

    async def create_job(self, job: Job) -> Job:
        job = job.model_copy(update={"state": JobState.ACTIVE, "state_transition_time": utcnow()})
        await self._publish_job(job)
        return job

    async def _publish_job(self, job: Job) -> None:
        self.view.jobs[job.id] = job
        await self.publish_retained(self.topics.job(job.id), job.to_json())

    async def publish_retained(self, topic: str, payload: bytes) -> None:
        """Publish a retained document (a job's, a pool's) and wait until the broker has it."""
        self._transport.publish(topic, payload, retain=True)
        await self._transport.flush(timeout_s=self.command_timeout_s)

    async def terminate_job(self, job_id: str, reason: str = "UserTerminate", *, timeout_s: float = 120) -> Job:
        """Set the job terminating; once every node that ran preparation released, mark it completed."""
        job = self._job(job_id)
        await self._publish_job(
            job.model_copy(
                update={
                    "state": JobState.TERMINATING,
                    "terminate_reason": reason,
                    "state_transition_time": utcnow(),
                }
            )
        )
        for ended in self.view.end_unowned(job_id):  # no agent holds these to end them
            self._transport.publish(self.topics.task(job_id, ended.id), ended.to_json(), retain=True)
        await self.wait_until(lambda: self.view.released(self._job(job_id)), timeout_s)
        completed = self._job(job_id).model_copy(
            update={"state": JobState.COMPLETED, "state_transition_time": utcnow()}
        )
        await self._publish_job(completed)
        return completed

    async def delete_job(self, job_id: str, *, timeout_s: float = 120) -> None:
        """Set the job deleting; once every node cleaned up, remove its retained document."""
        job = self._job(job_id)
        await self._publish_job(job.model_copy(update={"state": JobState.DELETING, "state_transition_time": utcnow()}))
        await self.wait_until(lambda: self.view.cleaned_up(job_id), timeout_s)
        self.view.jobs.pop(job_id, None)
        for task in self.list_tasks(job_id):  # handed back and never placed again: no node clears these
            self._transport.publish(self.topics.task(job_id, task.id), b"", retain=True)
        # A job created again with this id starts afresh: no tasks to wait for, no node excluded.
        self._placed = {key: spec for key, spec in self._placed.items() if key[0] != job_id}
        self._excluded.pop(job_id, None)
        self._transport.publish(self.topics.job(job_id), b"", retain=True)
        await self._transport.flush(timeout_s=self.command_timeout_s)

    def _job(self, job_id: str) -> Job:
        job = self.view.jobs.get(job_id)
        if job is None:
            raise KeyError(f"job {job_id!r} is unknown to this client")
        return job

    def get_job(self, job_id: str) -> Job | None:
        return self.view.jobs.get(job_id)

    def prep_release_status(self, job_id: str) -> list[JobPreparationAndReleaseTaskExecutionInformation]:
        """Azure's ListPreparationAndReleaseTaskStatus: one entry per node that ran the job's preparation."""
        return self.view.prep_release_status(job_id)

    # -- tasks ---------------------------------------------------------------------------------------------

    async def add_task(
        self, job_id: str, task: TaskSpec, *, node_id: str | None = None, exclude: Iterable[str] = ()
    ) -> Task:
        """Add a task to ``node_id``, or to the least-loaded node; refused nodes are skipped in turn."""
        if node_id is not None:
            return await self._add_on(node_id, job_id, task)
        skipped = set(exclude) | self._excluded.get(job_id, set())
        while True:
            target = self.view.pick_node(skipped, self._placing)
            try:
                return await self._add_on(target, job_id, task)
            except CommandError as exc:
                if exc.code not in RETRY_ELSEWHERE:
                    raise
                skipped.add(target)

    async def _add_on(self, node_id: str, job_id: str, task: TaskSpec) -> Task:
        self._placed[(job_id, task.id)] = task  # before the command: a hand-back may come before the reply
        self._placing[node_id] += 1  # placement counts it before the reply says where it is
        try:
            return await self._send_add(node_id, job_id, task)
        except BaseException:
            self._placed.pop((job_id, task.id), None)
            raise
        finally:
            self._placing[node_id] -= 1

    async def _send_add(self, node_id: str, job_id: str, task: TaskSpec) -> Task:
        body = {
            "type": "addTask",
            "jobId": job_id,
            "task": task.model_dump(mode="json", by_alias=True, exclude_none=True),
        }
        added = Task.model_validate(await self.command(node_id, body))
        known = self.view.tasks.get((job_id, task.id))
        # The task's later states (running, completed) may have arrived while this reply waited its turn.
        if known is None or known.state_transition_time <= added.state_transition_time:
            self.view.set_task((job_id, task.id), added)
        return added

    async def terminate_task(self, job_id: str, task_id: str) -> Task:
        task = self.view.tasks.get((job_id, task_id))
        if task is None or task.node_info is None:
            raise KeyError(f"task {task_id!r} of job {job_id!r} is not on any node")
        body = {"type": "terminateTask", "jobId": job_id, "taskId": task_id}
        return Task.model_validate(await self.command(task.node_info.node_id, body))

    def list_tasks(self, job_id: str) -> list[Task]:
        return self.view.tasks_of(job_id)

    async def wait_for_tasks(
        self, job_id: str, task_ids: Iterable[str] | None = None, *, timeout_s: float = 300
    ) -> list[Task]:
        """Wait until the tasks (default: every task this client added to the job) are completed."""
        ids = list(task_ids) if task_ids is not None else [t for (j, t) in self._placed if j == job_id]
        pending = deque(ids)  # checked from the front, so each message costs O(1) amortised, not O(len(ids))

        def completed(task_id: str) -> bool:
            task = self.view.tasks.get((job_id, task_id))
            return task is not None and task.state == TaskState.COMPLETED

        def all_completed() -> list[Task] | None:
            while pending and completed(pending[0]):
                pending.popleft()
            if pending:
                return None
            pending.extend(task_id for task_id in ids if not completed(task_id))  # one that left meanwhile
            return None if pending else [self.view.tasks[(job_id, task_id)] for task_id in ids]

        return await self.wait_until(all_completed, timeout_s)

    # -- nodes and files -----------------------------------------------------------------------------------

    def list_nodes(self) -> list[NodeState]:
        return [state for _, state in sorted(self.view.nodes.items())]

    async def wait_for_nodes(
        self, node_ids: Iterable[str], *, timeout_s: float = 30, since: Any = None
    ) -> list[NodeState]:
        """Wait until each node says idle (and, with ``since``, has a heartbeat at or after that time)."""
        ids = list(node_ids)

        def ready() -> list[NodeState] | None:
            states = [self.view.nodes.get(node_id) for node_id in ids]
            ok = all(
                s is not None and s.state == NodeStateName.IDLE and (since is None or s.last_heartbeat >= since)
                for s in states
            )
            return states if ok else None  # type: ignore[return-value]

        return await self.wait_until(ready, timeout_s)

    async def list_files(self, node_id: str, path: str = "", *, recursive: bool = False) -> list[dict[str, Any]]:
        result = await self.command(node_id, {"type": "listFiles", "path": path, "recursive": recursive})
        return list(result["value"])

    async def get_file(self, node_id: str, path: str) -> bytes:
        """Read a whole file through getFile, in chunks of at most 512 KiB."""
        chunks: list[bytes] = []
        offset = 0
        while True:
            body = {"type": "getFile", "path": path, "offset": offset, "length": GET_FILE_MAX_LENGTH}
            result = await self.command(node_id, body)
            chunk = base64.b64decode(result["content"])
            chunks.append(chunk)
            offset += len(chunk)
            if result["eof"] or not chunk:
                return b"".join(chunks)
