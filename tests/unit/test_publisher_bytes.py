"""The publisher serialises a task once per state change: the bytes it sends are those of the full models."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any, cast

from node_agent.agent.publisher import Publisher
from node_agent.transport.mqtt import MqttTransport
from node_agent.wire.commands import Reply
from node_agent.wire.specs import TaskSpec
from node_agent.wire.status import (
    Event,
    FailureInfo,
    NodeInfo,
    Task,
    TaskExecutionInfo,
    TaskResult,
    TaskState,
)
from node_agent.wire.topics import Topics


class _Sent:
    def __init__(self) -> None:
        self.messages: list[tuple[str, bytes]] = []

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        self.messages.append((topic, payload))


def _tasks() -> list[Task]:
    spec = TaskSpec(id="t1", command_line="echo 'ünïcode' \"quoted\"")
    at = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    node = NodeInfo(node_id="n1", pool_id="p1", task_root_directory="/root/jobs/j1/t1")
    failure = FailureInfo(category="usererror", code="FailureExitCode", message="exit 3", details=[{"name": "x"}])
    done = TaskExecutionInfo(start_time=at, end_time=at, exit_code=3, result=TaskResult.FAILURE, failure_info=failure)
    return [
        Task(**dict(spec), state=TaskState.ACTIVE, state_transition_time=at, node_info=node),
        Task(**dict(spec), state=TaskState.COMPLETED, state_transition_time=at, node_info=node, execution_info=done),
        Task(**dict(spec), state=TaskState.ACTIVE, state_transition_time=at),
    ]


def test_task_and_event_bytes_are_those_of_the_models() -> None:
    sent = _Sent()
    publisher = Publisher(cast(MqttTransport, sent), Topics("P"), "n1", "p1")
    for task in _tasks():
        for code, message in ((None, None), ("NodeAgentStopped", "stopped")):
            sent.messages.clear()
            publisher.task("j1", task, code=code, message=message)
            event = Event(
                type="taskHandedBack" if code else "taskStateChanged",
                time=task.state_transition_time,
                node_id="n1",
                job_id="j1",
                task_id=task.id,
                state=task.state,
                code=code,
                message=message,
                task=task,
            )
            assert sent.messages == [("P/jobs/j1/tasks/t1", task.to_json()), ("P/nodes/n1/events", event.to_json())]


def test_task_json_is_reused_for_one_model_only() -> None:
    publisher = Publisher(cast(MqttTransport, _Sent()), Topics("P"), "n1", "p1")
    first, second, _ = _tasks()
    assert publisher.task_json(first) is publisher.task_json(first)
    assert publisher.task_json(second) == second.to_json()
    document: dict[str, Any] = json.loads(publisher.task_json(first))
    assert document == first.model_dump(mode="json", by_alias=True, exclude_none=True)


def test_reply_with_a_task_is_the_bytes_of_the_reply_model() -> None:
    sent = _Sent()
    publisher = Publisher(cast(MqttTransport, sent), Topics("P"), "n1", "p1")
    for task in _tasks():
        sent.messages.clear()
        publisher.reply("P/clients/c1/replies", "r\u00e9q-1", task)
        result = task.model_dump(mode="json", by_alias=True, exclude_none=True)  # what the reply carried before
        expected = Reply(request_id="r\u00e9q-1", ok=True, result=result).to_json()
        assert sent.messages == [("P/clients/c1/replies", expected)]
