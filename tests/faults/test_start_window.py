"""kill -9 of the agent around a task's start, where no record says the task is running (ADR 0011): the
supervisor's folder decides. Started: adopted, never run again. Not started: run once after the restart."""

from __future__ import annotations

import asyncio
import json

import psutil

from node_agent.client.pool import BatchClient
from node_agent.testing.nodes import FakeNode, NodePool
from node_agent.wire.specs import Job, TaskSpec
from node_agent.wire.status import Event
from tests.conftest import count_lines
from tests.faults.conftest import TIMEOUT_S, Gate, counted, gated, one_completion_each


def _found(node: FakeNode) -> dict[str, int]:
    """What the last start made of the supervisor folders (its ``recovery.supervisors`` log line)."""
    lines = [json.loads(line) for line in node.log_file.read_text().splitlines() if line.startswith("{")]
    return [line for line in lines if line["event"] == "recovery.supervisors"][-1]


async def test_kill_just_after_the_spawn_adopts_the_task_and_runs_it_once(pool: NodePool, client: BatchClient) -> None:
    [node] = await pool(1)
    events: list[Event] = []
    client.on_event = events.append
    gate = Gate(node, "t1")
    await client.create_job(Job(id="j1"))
    await node.crash_at("task-spawned")  # the shim said "started"; the running state not yet published
    await client.add_task("j1", TaskSpec(id="t1", command_line=gated("t1", 4)), node_id=node.node_id)
    pid = await gate.running()
    await node.crashed()
    await node.start()
    assert psutil.pid_exists(pid), "the task runs on under its supervisor"
    assert _found(node)["adoptable"] == 1
    await gate.open()

    await one_completion_each(client, events, ["t1"])
    assert client.view.tasks[("j1", "t1")].execution_info.exit_code == 4
    assert await count_lines(client, node.node_id, "shared/t1") == 1
    assert not [e for e in events if e.type == "taskHandedBack"]


async def test_kill_before_the_shim_is_asked_for_runs_the_task_once_after_the_restart(
    pool: NodePool, client: BatchClient
) -> None:
    [node] = await pool(1)
    events: list[Event] = []
    client.on_event = events.append
    await client.create_job(Job(id="j1"))
    await node.crash_at("before-spawn")  # spec.json written, no shim forked: the restart fences the folder
    task = TaskSpec(id="t1", command_line=counted("t1", "exit 3"))
    adding = asyncio.create_task(client.add_task("j1", task, node_id=node.node_id))  # answered after the restart
    await node.crashed()
    await node.start()
    await asyncio.wait_for(adding, TIMEOUT_S)
    assert _found(node)["unstarted"] == 1, "the restart fenced the folder no shim had claimed"

    await one_completion_each(client, events, ["t1"])
    assert client.view.tasks[("j1", "t1")].execution_info.exit_code == 3
    assert await count_lines(client, node.node_id, "shared/t1") == 1
    assert not [e for e in events if e.type == "taskHandedBack"]
