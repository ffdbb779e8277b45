"""A job's end that the agent missed or was in the middle of: its release runs once when the agent is back."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from node_agent.brokers import free_port, running_broker
from node_agent.client.pool import BatchClient
from node_agent.testing.nodes import NodePool, fresh_prefix
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


async def test_job_whose_document_never_comes_back_is_released_and_cleaned_up(tmp_path: Path) -> None:
    """The agent's session is gone too (a broker that lost its store): a remembered job whose retained document
    does not arrive within job_wait of the first connect is ended as deleted."""
    port = free_port()
    with contextlib.ExitStack() as stack:
        broker = stack.enter_context(running_broker(tmp_path / "b1", kind="mosquitto", port=port))
        async with (
            BatchClient(broker.url, topic_prefix=fresh_prefix(), command_timeout_s=20) as client,
            NodePool(broker, client, tmp_path / "nodes") as pool,
        ):
            [node] = await pool(1, env={"NODE_AGENT_JOB_WAIT": "PT1S"})
            await client.create_job(counted_job("j1"))
            await client.add_task("j1", TaskSpec(id="t1", command_line="/bin/true"), node_id=node.node_id)
            await client.wait_for_tasks("j1", timeout_s=TIMEOUT_S)
            await node.kill()
            stack.close()  # no persistence: sessions and retained messages are gone
            stack.enter_context(running_broker(tmp_path / "b2", kind="mosquitto", port=port))
            await node.start()

            await client.wait_until(lambda: not (node.root / "workitems" / "j1").exists() or None, TIMEOUT_S)
            assert (node.root / "shared" / "release-count").read_text().count("x") == 1
