"""No input crashes the agent or changes anything (PROTOCOL.md "Transport"): malformed commands, bad ids,
forged reply topics and malformed retained job documents are refused, and the agent keeps serving."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest

from node_agent.client.pool import BatchClient, CommandError
from node_agent.ids import ID_RULE
from node_agent.testing.nodes import FakeNode
from node_agent.wire.commands import Reply
from node_agent.wire.specs import Job, TaskSpec
from node_agent.wire.status import Event, NodeState, NodeStateName, TaskResult
from tests.raw_mqtt import RawMqtt

TIMEOUT_S = 20.0


def commands_topic(raw: RawMqtt, node: FakeNode) -> str:
    return f"{raw.prefix}/nodes/{node.node_id}/commands"


def collect_rejections(client: BatchClient) -> list[Event]:
    rejected: list[Event] = []

    def on_event(event: Event) -> None:
        if event.type == "commandRejected":
            rejected.append(event)

    client.on_event = on_event
    return rejected


async def assert_still_serving(client: BatchClient, node: FakeNode) -> None:
    """The agent process is alive, answers, runs a task, and no input reached its catch-all error path."""
    assert node.process is not None and node.process.returncode is None
    job_id = f"alive{uuid.uuid4().hex[:8]}"
    await client.create_job(Job(id=job_id))
    await client.add_task(job_id, TaskSpec(id="ping", command_line="/bin/true"), node_id=node.node_id)
    [task] = await client.wait_for_tasks(job_id, ["ping"], timeout_s=TIMEOUT_S)
    assert task.execution_info.result == TaskResult.SUCCESS
    assert node.process.returncode is None
    log = node.log_file.read_text()
    assert '"command.failed"' not in log, "a bad input reached the InternalError boundary"
    assert "Traceback" not in log


# -- payloads that cannot be answered ------------------------------------------------------------------------

UNANSWERABLE = [
    b"{not json",
    b"\xff\xfe\x00garbage",
    b"",
    b"null",
    b"[1, 2, 3]",
    b'"addTask"',
    b"[" * 100_000,  # nested deeper than any JSON parser's recursion limit
    b'{"a":' * 50_000,
]


async def test_malformed_json_is_reported_as_a_command_rejected_event(pool, client: BatchClient, raw: RawMqtt) -> None:
    [node] = await pool(1)
    rejected = collect_rejections(client)
    for payload in UNANSWERABLE:
        await raw.publish(commands_topic(raw, node), payload)
    await client.wait_until(lambda: len(rejected) >= len(UNANSWERABLE), TIMEOUT_S)
    assert len(rejected) == len(UNANSWERABLE)
    for event in rejected:
        assert (event.node_id, event.code, event.request_id) == (node.node_id, "InvalidCommand", None)
        assert event.message is not None and "requestId and replyTo" in event.message
    await assert_still_serving(client, node)


async def test_invalid_command_without_reply_to_is_rejected_as_an_event_with_its_request_id(
    pool, client: BatchClient, raw: RawMqtt
) -> None:
    [node] = await pool(1)
    rejected = collect_rejections(client)
    for number, body in enumerate(
        [
            {"type": "frobnicate", "requestId": "no-reply-0"},
            {"type": "addTask", "requestId": "no-reply-1", "jobId": "a/b", "task": {}},
            # a replyTo the model refuses outright (wildcards)
            {"type": "listFiles", "requestId": "no-reply-2", "replyTo": f"{raw.prefix}/clients/+/replies"},
        ]
    ):
        assert body["requestId"] == f"no-reply-{number}"
        await raw.publish(commands_topic(raw, node), json.dumps(body).encode())
    await client.wait_until(lambda: len(rejected) >= 3, TIMEOUT_S)
    assert sorted(event.request_id or "" for event in rejected) == ["no-reply-0", "no-reply-1", "no-reply-2"]
    codes = {event.request_id: event.code for event in rejected}
    assert codes == {
        "no-reply-0": "InvalidCommand",
        "no-reply-1": "InvalidId",
        "no-reply-2": "InvalidCommand",
    }
    await assert_still_serving(client, node)


# -- answerable but invalid: an error reply that says what to change -----------------------------------------

TASK = {"id": "t", "commandLine": "/bin/true"}
INVALID_COMMANDS = [
    ({"type": "frobnicate"}, "addTask"),  # the message lists the known types
    ({}, "type"),
    ({"type": "addTask"}, "jobId"),
    ({"type": "addTask", "jobId": "j"}, "task"),
    ({"type": "addTask", "jobId": "j", "task": {"id": "t"}}, "commandLine"),
    ({"type": "addTask", "jobId": "j", "task": {"id": "t", "commandLine": ""}}, "commandLine"),
    (
        {"type": "addTask", "jobId": "j", "task": {**TASK, "constraints": {"maxTaskRetryCount": -2}}},
        "maxTaskRetryCount",
    ),
    (
        {"type": "addTask", "jobId": "j", "task": {**TASK, "constraints": {"maxWallClockTime": "soon"}}},
        "maxWallClockTime",
    ),
    ({"type": "addTask", "jobId": "j", "task": {**TASK, "environmentSettings": [{"name": "1X"}]}}, "name"),
    (
        {"type": "addTask", "jobId": "j", "task": {**TASK, "resourceFiles": [{"filePath": "x"}]}},
        "resourceFiles",
    ),
    ({"type": "addTask", "jobId": 5, "task": TASK}, "jobId"),
    ({"type": "terminateTask", "jobId": "j"}, "taskId"),
    ({"type": "getFile"}, "path"),
    ({"type": "getFile", "path": "shared/x", "offset": -1}, "offset"),
    ({"type": "getFile", "path": "shared/x", "length": 512 * 1024 + 1}, "length"),
    ({"type": "listFiles", "recursive": "maybe"}, "recursive"),
]


async def test_invalid_commands_get_an_invalid_command_reply_naming_the_field(pool, client: BatchClient) -> None:
    [node] = await pool(1)
    for body, field in INVALID_COMMANDS:
        with pytest.raises(CommandError) as refused:
            await client.command(node.node_id, body)
        assert refused.value.code == "InvalidCommand", body
        assert field in refused.value.message, (body, refused.value.message)
    assert client.view.tasks == {}
    await assert_still_serving(client, node)


BAD_IDS = ["a/b", "../x", "x" * 65, "+", "#", "", "a b", "ünï", "a.b"]


def id_commands(bad: str) -> list[tuple[dict[str, Any], str]]:
    return [
        ({"type": "addTask", "jobId": bad, "task": TASK}, "jobId"),
        ({"type": "addTask", "jobId": "j", "task": {**TASK, "id": bad}}, "id"),
        ({"type": "terminateTask", "jobId": bad, "taskId": "t"}, "jobId"),
        ({"type": "terminateTask", "jobId": "j", "taskId": bad}, "taskId"),
    ]


async def test_bad_ids_get_an_invalid_id_reply_with_the_rule(pool, client: BatchClient) -> None:
    [node] = await pool(1)
    await client.create_job(Job(id="j"))
    for bad in BAD_IDS:
        for body, field in id_commands(bad):
            with pytest.raises(CommandError) as refused:
                await client.command(node.node_id, body)
            assert refused.value.code == "InvalidId", (body, refused.value.message)
            assert field in refused.value.message
            assert ID_RULE in refused.value.message
    # nothing was recorded, published or created for any of them
    assert client.view.tasks == {}
    assert list((node.root / "workitems").iterdir()) == []
    await assert_still_serving(client, node)


# -- replyTo can never make the agent publish elsewhere ------------------------------------------------------


async def test_reply_to_outside_the_clients_replies_topics_is_refused_and_never_published_to(
    pool, client: BatchClient, raw: RawMqtt
) -> None:
    [node] = await pool(1)
    prefix = raw.prefix
    await raw.subscribe(f"{prefix}/#")
    await raw.subscribe("elsewhere/#")
    await client.create_job(Job(id="j"))
    rejected = collect_rejections(client)
    forged = [
        f"{prefix}/nodes/{node.node_id}/state",
        f"{prefix}/jobs/j",
        f"{prefix}/jobs/j/tasks/victim",
        f"{prefix}/nodes/{node.node_id}/commands",
        f"{prefix}/nodes/{node.node_id}/events",
        f"{prefix}/clients/x/replies/more",
        f"{prefix}/clients/../replies",
        f"{prefix}/clients/x",
        "elsewhere/clients/x/replies",
        f"{prefix}/clients/a+b/replies",
        f"{prefix}/clients/#",
        "",
    ]
    for number, reply_to in enumerate(forged):
        request_id = f"forged{number}"
        body = {
            "type": "addTask",
            "requestId": request_id,
            "replyTo": reply_to,
            "jobId": "j",
            "task": {"id": f"t{number}", "commandLine": "/bin/true"},
        }
        await raw.publish(commands_topic(raw, node), json.dumps(body).encode())
    # Every one is refused, as an event (there is no usable reply topic), and nothing is done.
    await client.wait_until(lambda: len(rejected) >= len(forged), TIMEOUT_S)
    assert sorted(event.request_id or "" for event in rejected) == sorted(f"forged{n}" for n in range(len(forged)))
    assert {event.code for event in rejected} == {"InvalidCommand"}
    assert all(event.message is not None and "replyTo" in event.message for event in rejected)

    replies_elsewhere = [
        (topic, payload) for topic, payload in raw.messages if topic != raw.reply_topic and _is_reply(payload)
    ]
    assert replies_elsewhere == []
    states = [NodeState.model_validate_json(p) for p in raw.on_topic(f"{prefix}/nodes/{node.node_id}/state")]
    assert states and states[-1].state in (NodeStateName.IDLE, NodeStateName.RUNNING)
    assert [Job.model_validate_json(p).id for p in raw.on_topic(f"{prefix}/jobs/j")] == ["j"]
    assert raw.on_topic(f"{prefix}/jobs/j/tasks/victim") == []
    assert [key for key in client.view.tasks if key[0] == "j"] == []
    assert not (node.root / "workitems" / "j").exists()
    await assert_still_serving(client, node)


def _is_reply(payload: bytes) -> bool:
    try:
        Reply.model_validate_json(payload)
    except ValueError:
        return False
    return True


# -- retained job documents that are not jobs ----------------------------------------------------------------


def malformed_jobs(prefix: str) -> list[tuple[str, bytes]]:
    return [
        (f"{prefix}/jobs/broken", b"{not json"),
        (f"{prefix}/jobs/binary", b"\xff\xfe"),
        (f"{prefix}/jobs/array", b"[]"),
        (f"{prefix}/jobs/deep", b"[" * 100_000),
        (f"{prefix}/jobs/mismatch", Job(id="other").to_json()),
        (f"{prefix}/jobs/badstate", b'{"id": "badstate", "state": "exploded"}'),
        (
            f"{prefix}/jobs/releaseonly",
            b'{"id": "releaseonly", "jobReleaseTask": {"commandLine": "/bin/true"}}',
        ),
        (f"{prefix}/jobs/bad.id", b'{"id": "bad.id"}'),
        (f"{prefix}/jobs/x/y/z", b'{"id": "x"}'),
    ]


async def test_malformed_retained_job_documents_are_ignored_at_start_and_later(
    pool, client: BatchClient, raw: RawMqtt
) -> None:
    for topic, payload in malformed_jobs(raw.prefix):
        await raw.publish(topic, payload, retain=True)
    # they are already retained when the agent subscribes, and it still becomes idle
    [node] = await pool(1, env={"NODE_AGENT_JOB_WAIT": "PT1S"})
    # and the same again while it runs, followed (same connection, so in order) by a task for one of them
    for topic, payload in malformed_jobs(raw.prefix):
        await raw.publish(topic, payload, retain=True)
    for job_id in ("broken", "mismatch", "releaseonly", "badstate"):
        body = {
            "type": "addTask",
            "requestId": f"add-{job_id}",
            "replyTo": raw.reply_topic,
            "jobId": job_id,
            "task": TASK,
        }
        await raw.publish(commands_topic(raw, node), json.dumps(body).encode())
    for job_id in ("broken", "mismatch", "releaseonly", "badstate"):
        [reply] = await raw.wait_until(lambda job_id=job_id: raw.replies(f"add-{job_id}"))
        assert reply["error"]["code"] == "JobNotFound", reply
    await assert_still_serving(client, node)


async def test_malformed_update_of_a_job_document_keeps_the_previous_one(
    pool, client: BatchClient, raw: RawMqtt
) -> None:
    [node] = await pool(1)
    topic = f"{raw.prefix}/jobs/kept"
    await raw.publish(topic, Job(id="kept").to_json(), retain=True)
    await raw.publish(topic, b'{"id": "kept", "state": "exploded"}', retain=True)
    body = {
        "type": "addTask",
        "requestId": "add-kept",
        "replyTo": raw.reply_topic,
        "jobId": "kept",
        "task": TASK,
    }
    await raw.publish(commands_topic(raw, node), json.dumps(body).encode())
    [reply] = await raw.wait_until(lambda: raw.replies("add-kept"))
    assert reply["ok"] is True, reply
    [task] = await client.wait_for_tasks("kept", ["t"], timeout_s=TIMEOUT_S)
    assert task.execution_info.result == TaskResult.SUCCESS
    await assert_still_serving(client, node)
