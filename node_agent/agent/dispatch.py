"""Incoming messages to handlers: the one place JSON becomes domain calls and errors become replies."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import structlog
from pydantic import ValidationError

from node_agent import faults
from node_agent.agent import files
from node_agent.agent.jobs import JobManager
from node_agent.agent.publisher import Publisher
from node_agent.agent.reboot import Rebooter
from node_agent.agent.scheduling import Scheduling
from node_agent.agent.starttask import StartTaskRunner
from node_agent.errors import InputError
from node_agent.ids import ID_RULE, is_valid_id
from node_agent.ops import metrics
from node_agent.transport.mqtt import Ack
from node_agent.wire.commands import (
    COMMANDS,
    AddTask,
    Command,
    DisableScheduling,
    DrainNode,
    EnableScheduling,
    GetFile,
    ListFiles,
    RebootNode,
    ReimageNode,
    TerminateTask,
)
from node_agent.wire.specs import Job, Pool
from node_agent.wire.topics import Topics

log = structlog.get_logger(__name__)
COMMAND_TYPES = frozenset(
    ("addTask", "terminateTask", "listFiles", "getFile", "disableScheduling", "enableScheduling")
)  # the metric's label values: anything else is counted as "invalid"


class Dispatcher:
    def __init__(
        self,
        manager: JobManager,
        publisher: Publisher,
        topics: Topics,
        *,
        scheduling: Scheduling,
        rebooter: Rebooter,
        start_task: StartTaskRunner,
    ) -> None:
        self.manager = manager
        self.publisher = publisher
        self.topics = topics
        self.node_id = publisher.node_id
        self.pool_id = publisher.pool_id
        self.scheduling = scheduling
        self.rebooter = rebooter
        self.start_task = start_task
        self.root = manager.ctx.layout.root
        self._inflight: set[asyncio.Task[None]] = set()

    async def close(self) -> None:
        """Shutdown: commands still waiting (an addTask waiting for its job document) are answered with
        NodeShuttingDown, so their clients place the task elsewhere at once."""
        for task in list(self._inflight):
            task.cancel()
        if self._inflight:
            await asyncio.wait(self._inflight)

    async def on_message(self, topic: str, payload: bytes, retained: bool, ack: Ack) -> None:
        """Commands are acknowledged to the broker once answered (an addTask once stored): a crash before
        that makes the broker deliver the command again, and a repeated command is never run twice."""
        levels = self.topics.levels(topic)
        if levels == ["nodes", self.node_id, "commands"]:
            faults.reached("after-receive")
            task = self.manager.ctx.group.create_task(self._acked(payload, ack))
            self._inflight.add(task)
            task.add_done_callback(self._inflight.discard)
            return
        if levels is not None and len(levels) == 2 and levels[0] == "jobs":
            self._job_document(levels[1], payload)
        elif levels == ["pools", self.pool_id]:
            self._pool_document(payload)
        ack()  # documents are retained: a new session receives them again anyway

    async def _acked(self, payload: bytes, ack: Ack) -> None:
        try:
            await self._command(payload)
            await self.publisher.persisted()  # the reply is in the durable outbox before the broker forgets
        finally:
            ack()

    def _pool_document(self, payload: bytes) -> None:
        doc = None
        if payload:
            try:
                doc = Pool.model_validate_json(payload)
            except ValidationError as exc:
                log.warning("pool.invalid_document", pool_id=self.pool_id, error=_first_error(exc))
                return
            if doc.id != self.pool_id:
                log.warning("pool.id_mismatch", pool_id=self.pool_id, document_id=doc.id)
                return
        self.manager.ctx.group.create_task(self.start_task.on_pool_document(doc), name="pool-document")

    def _job_document(self, job_id: str, payload: bytes) -> None:
        if not is_valid_id(job_id):
            log.warning("job.invalid_topic", job_id=job_id[:80])
            return
        if not payload:
            self.manager.on_job_document(job_id, None)
            return
        try:
            job = Job.model_validate_json(payload)
        except ValidationError as exc:
            log.warning("job.invalid_document", job_id=job_id, error=_first_error(exc))
            return
        if job.id != job_id:
            log.warning("job.id_mismatch", job_id=job_id, document_id=job.id)
            return
        self.manager.on_job_document(job_id, job)

    async def _command(self, payload: bytes) -> None:
        started = time.monotonic()
        envelope = _envelope(payload)
        is_ok = False
        try:
            is_ok = await self._answer(payload, envelope)
        finally:
            kind = envelope.get("type")
            kind = kind if isinstance(kind, str) and kind in COMMAND_TYPES else "invalid"  # any JSON may be here
            outcome = "ok" if is_ok else "error"
            metrics.command_duration.labels(kind, outcome).observe(time.monotonic() - started)

    async def _answer(self, payload: bytes, envelope: dict[str, Any]) -> bool:
        """Execute one command and reply; True when it succeeded."""
        request_id = envelope.get("requestId") if isinstance(envelope.get("requestId"), str) else None
        reply_to = self._reply_topic(envelope.get("replyTo"))
        if envelope.get("replyTo") is not None and reply_to is None:
            message = f"replyTo must be {self.topics.replies('{clientId}')} with a valid clientId; nothing was done"
            self._refuse(None, request_id, "InvalidCommand", message)
            return False
        try:
            command = COMMANDS.validate_json(payload)
            result = await self._execute(command, request_id)
        except ValidationError as exc:
            self._refuse(reply_to, request_id, *_validation_error(exc))
        except InputError as exc:
            self._refuse(reply_to, request_id, exc.code, exc.message)
        except asyncio.CancelledError:
            self._refuse(reply_to, request_id, "NodeShuttingDown", "the agent is stopping; use another node")
            raise
        except Exception as exc:  # the per-command boundary: log, reply, keep serving
            log.exception("command.failed", request_id=request_id)
            self._refuse(reply_to, request_id, "InternalError", f"the agent failed to handle the command: {exc}")
        else:
            if reply_to is not None and request_id is not None:
                self.publisher.reply(reply_to, request_id, result)
            return True
        return False

    def _reply_topic(self, reply_to: Any) -> str | None:
        """Replies go only to a client's replies topic under our prefix, so no command can make the agent
        publish elsewhere (a forged node state, a job document)."""
        if not isinstance(reply_to, str):
            return None
        levels = self.topics.levels(reply_to)
        if levels is None or len(levels) != 3 or levels[0] != "clients" or levels[2] != "replies":
            return None
        return reply_to if is_valid_id(levels[1]) else None

    def _refuse(self, reply_to: str | None, request_id: str | None, code: str, message: str) -> None:
        log.info("command.refused", request_id=request_id, code=code, reason=message)
        if reply_to is not None and request_id is not None:
            self.publisher.error(reply_to, request_id, code, message)
        else:
            self.publisher.rejected(code, message + _no_reply_hint(request_id), request_id)

    async def _execute(self, command: Command, request_id: str | None) -> Any:
        match command:
            case AddTask(job_id=job_id, task=task):
                added = await self.manager.add_task(job_id, task, request_id)
                faults.reached("after-store")
                return added  # the reply reuses the JSON its state was published with (Publisher.reply)
            case TerminateTask(job_id=job_id, task_id=task_id):
                return await self.manager.terminate_task(job_id, task_id)
            case ListFiles(path=path, recursive=recursive):
                return await files.list_files(self.root, path, recursive)
            case GetFile(path=path, offset=offset, length=length):
                return await files.get_file(self.root, path, offset, length)
        return await self._execute_node_command(command)

    async def _execute_node_command(self, command: Command) -> Any:
        match command:
            case DisableScheduling(node_disable_scheduling_option=option):
                return await self.scheduling.disable(option)
            case EnableScheduling():
                return await self.scheduling.enable()
            case DrainNode():
                return await self.scheduling.drain()
            case RebootNode(node_reboot_option=option):
                return await self.rebooter.request("reboot", option)
            case ReimageNode(node_reimage_option=option):
                return await self.rebooter.request("reimage", option)
        raise InputError("InvalidCommand", f"unknown command type {command.type!r}")


def _envelope(payload: bytes) -> dict[str, Any]:
    try:
        value = json.loads(payload)
    except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: '[[[[...' nested too deep
        return {}
    return value if isinstance(value, dict) else {}


def _first_error(exc: ValidationError) -> str:
    error = exc.errors(include_url=False)[0]
    where = ".".join(str(part) for part in error["loc"])
    return f"{where}: {error['msg']}" if where else error["msg"]


def _validation_error(exc: ValidationError) -> tuple[str, str]:
    for error in exc.errors(include_url=False):
        where = ".".join(str(part) for part in error["loc"])
        if error["type"] == "string_pattern_mismatch" and where.split(".")[-1] in ("jobId", "taskId", "id"):
            return "InvalidId", f"{where} {str(error['input'])[:80]!r} is invalid: {ID_RULE}"
    return "InvalidCommand", f"invalid command: {_first_error(exc)}"


def _no_reply_hint(request_id: str | None) -> str:
    if request_id is None:
        return " (no requestId/replyTo: send JSON with requestId and replyTo P/clients/{clientId}/replies)"
    return " (replyTo missing or not P/clients/{clientId}/replies)"
