"""The shortest path through the wire: one node, one job, one task."""

import pytest

from node_agent.client.pool import BatchClient
from node_agent.wire.specs import Job, TaskSpec
from node_agent.wire.status import TaskResult

pytestmark = pytest.mark.every_broker


async def test_task_runs_and_reports_exit_code(pool, client: BatchClient) -> None:
    [node] = await pool(1)
    await client.create_job(Job(id="j1"))
    await client.add_task("j1", TaskSpec(id="t1", command_line="/bin/sh -c 'exit 3'"))
    [task] = await client.wait_for_tasks("j1", timeout_s=20)
    assert task.execution_info.exit_code == 3
    assert task.execution_info.result == TaskResult.FAILURE
    assert task.execution_info.failure_info.code == "FailureExitCode"
    assert task.node_info.node_id == node.node_id
