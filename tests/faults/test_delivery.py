"""Commands survive an agent killed before it applied them: the broker delivers them again (manual PUBACK)."""

from __future__ import annotations

import asyncio

from node_agent.client.pool import BatchClient
from node_agent.testing.nodes import NodePool
from node_agent.wire.specs import Job, TaskSpec
from node_agent.wire.status import TaskResult, TaskState
from tests.conftest import count_lines

TIMEOUT_S = 30.0
APPEND = "/bin/sh -c 'echo ran >> $AZ_BATCH_NODE_SHARED_DIR/{name}'"


async def test_add_task_lost_in_a_crash_before_it_was_stored_is_redelivered_and_runs_once(
    pool: NodePool, client: BatchClient
) -> None:
    [node] = await pool(1)
    await client.create_job(Job(id="j1"))
    await node.crash_at("after-receive")
    adding = asyncio.create_task(
        client.add_task("j1", TaskSpec(id="t1", command_line=APPEND.format(name="t1")), node_id=node.node_id)
    )
    await node.crashed()
    assert not adding.done(), "the agent died before it could answer"
    await node.start()  # the persistent session hands the unacknowledged addTask to the new run

    added = await asyncio.wait_for(adding, TIMEOUT_S)
    assert added.id == "t1"
    [task] = await client.wait_for_tasks("j1", timeout_s=TIMEOUT_S)
    assert task.state == TaskState.COMPLETED and task.execution_info.result == TaskResult.SUCCESS
    assert await count_lines(client, node.node_id, "shared/t1") == 1


async def test_add_task_stored_but_not_acknowledged_is_redelivered_and_answered_not_rerun(
    pool: NodePool, client: BatchClient
) -> None:
    [node] = await pool(1)
    await client.create_job(Job(id="j1"))
    await node.crash_at("after-store")
    adding = asyncio.create_task(
        client.add_task("j1", TaskSpec(id="t1", command_line=APPEND.format(name="t1")), node_id=node.node_id)
    )
    await node.crashed()
    await node.start()

    await asyncio.wait_for(adding, TIMEOUT_S)  # the repeated addTask is answered with the task's state
    [task] = await client.wait_for_tasks("j1", timeout_s=TIMEOUT_S)
    assert task.state == TaskState.COMPLETED
    assert await count_lines(client, node.node_id, "shared/t1") <= 1
