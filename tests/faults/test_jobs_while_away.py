"""A job's end that the agent missed or was in the middle of: its release runs once when the agent is back."""

from __future__ import annotations

import asyncio

from node_agent.client.pool import BatchClient
from node_agent.testing.nodes import NodePool
from node_agent.wire.specs import Job, JobPreparationTask, JobReleaseTask, TaskSpec
from node_agent.wire.status import SubtaskState, TaskResult
from tests.conftest import count_lines

TIMEOUT_S = 30.0
SHARED = '"$AZ_BATCH_NODE_SHARED_DIR"'


def counted_job(job_id: str) -> Job:
    """Preparation and release each append a line to a counter file in the shared dir."""
    return Job(
        id=job_id,
        job_preparation_task=JobPreparationTask(command_line=f"/bin/sh -c 'echo x >> {SHARED}/prep-count'"),
        job_release_task=JobReleaseTask(command_line=f"/bin/sh -c 'echo x >> {SHARED}/release-count'"),
    )


async def test_release_interrupted_by_a_crash_runs_again_and_completes_once(
    pool: NodePool, client: BatchClient
) -> None:
    [node] = await pool(1)
    await client.create_job(counted_job("j1"))
    await client.add_task("j1", TaskSpec(id="t1", command_line="/bin/true"), node_id=node.node_id)
    await client.wait_for_tasks("j1", timeout_s=TIMEOUT_S)
    await node.crash_at("release-started")
    terminating = asyncio.create_task(client.terminate_job("j1", timeout_s=TIMEOUT_S * 2))
    await node.crashed()
    await node.start()

    await asyncio.wait_for(terminating, TIMEOUT_S * 2)
    [status] = client.prep_release_status("j1")
    release = status.job_release_task_execution_info
    assert release is not None and release.state == SubtaskState.COMPLETED and release.result == TaskResult.SUCCESS
    assert await count_lines(client, node.node_id, "shared/release-count") == 1
    assert await count_lines(client, node.node_id, "shared/prep-count") == 1


async def test_job_deleted_while_the_agent_was_down_is_released_and_cleaned_up_on_return(
    pool: NodePool, client: BatchClient
) -> None:
    [node] = await pool(1)
    await client.create_job(counted_job("j1"))
    await client.add_task("j1", TaskSpec(id="t1", command_line="/bin/true"), node_id=node.node_id)
    await client.wait_for_tasks("j1", timeout_s=TIMEOUT_S)
    await node.kill()
    client._transport.publish(client.topics.job("j1"), b"", retain=True)  # the job is gone, as a deleted one
    await client._transport.flush(TIMEOUT_S)
    await node.start()

    await client.wait_until(lambda: client.view.cleaned_up("j1"), TIMEOUT_S)
    assert await count_lines(client, node.node_id, "shared/release-count") == 1
    assert not (node.root / "workitems" / "j1").exists()
