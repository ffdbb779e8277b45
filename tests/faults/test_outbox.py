"""What the agent published while the broker was out of reach survives a crash of the agent (durable outbox)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from node_agent.client.pool import BatchClient
from node_agent.testing.nodes import NodePool
from node_agent.wire.specs import Job, TaskSpec
from node_agent.wire.status import Event, TaskResult, TaskState
from tests.conftest import count_lines
from tests.faults.conftest import completions, counted

TIMEOUT_S = 30.0
GATED = "/bin/sh -c 'read line < $AZ_BATCH_NODE_SHARED_DIR/{gate}; exit 7'"


def open_gate(path: Path) -> None:
    """Let a task blocked on reading the FIFO go on (blocks until the task has opened it)."""
    with open(path, "w") as gate:
        gate.write("go\n")


async def test_result_published_while_partitioned_reaches_the_client_after_a_crash(
    pool: NodePool, client: BatchClient
) -> None:
    [node] = await pool(1)
    events: list[Event] = []
    client.on_event = events.append
    await client.create_job(Job(id="j1"))
    await node.crash_at("task-published")  # the result is in the outbox, the broker out of reach
    gate = node.root / "shared" / "gate"
    os.mkfifo(gate)
    await client.add_task("j1", TaskSpec(id="t1", command_line=GATED.format(gate="gate")), node_id=node.node_id)
    await node.partition()
    await asyncio.to_thread(open_gate, gate)
    await node.crashed()
    await node.heal()
    await node.start()

    task = await client.wait_until(
        lambda: (t := client.view.tasks.get(("j1", "t1"))) is not None and t.state == TaskState.COMPLETED and t, 20
    )
    assert task.execution_info.exit_code == 7 and task.execution_info.result == TaskResult.FAILURE
    await client.wait_until(lambda: completions(events, "t1"), TIMEOUT_S)
    await client.sync()
    assert len(completions(events, "t1")) == 1


async def test_result_committed_before_its_record_file_is_written_is_published_once(
    pool: NodePool, client: BatchClient
) -> None:
    [node] = await pool(1)
    events: list[Event] = []
    client.on_event = events.append
    await client.create_job(Job(id="j1"))
    await node.crash_at("task-recorded")  # the result and its record in the outbox, the record file not written
    await client.add_task("j1", TaskSpec(id="t1", command_line=counted("t1")), node_id=node.node_id)
    await node.crashed()
    await node.start()

    [task] = await client.wait_for_tasks("j1", timeout_s=TIMEOUT_S)
    assert task.execution_info.exit_code == 0
    await client.wait_until(lambda: completions(events, "t1"), TIMEOUT_S)
    await client.sync()
    assert len(completions(events, "t1")) == 1
    await node.stop()  # the record the restart applied stays: another start neither reruns nor republishes it
    await node.start()
    await client.sync()
    assert len(completions(events, "t1")) == 1
    assert await count_lines(client, node.node_id, "shared/t1") == 1
