"""The faults FakeNode injects, each checked by what a scheduler sees: partition/heal, reboot, kill."""

from __future__ import annotations

import asyncio
from datetime import datetime
from pathlib import Path

import psutil

from node_agent.client.pool import BatchClient
from node_agent.testing.nodes import FakeNode, NodePool
from node_agent.wire.base import utcnow
from node_agent.wire.specs import Job, JobPreparationTask, TaskSpec
from node_agent.wire.status import NodeStateName, TaskResult, TaskState
from tests.conftest import count_lines
from tests.processes import Fifo, has_exited, open_pidfd

TIMEOUT_S = 20.0


def is_state(client: BatchClient, node: FakeNode, state: NodeStateName, since: datetime | None = None) -> bool:
    """The node's retained state is ``state`` (and, with ``since``, was published at or after it)."""
    current = client.view.nodes.get(node.node_id)
    return current is not None and current.state == state and (since is None or current.last_heartbeat >= since)


async def start_task(client: BatchClient, node: FakeNode, task_id: str, script: str, pid_file: Path) -> int:
    """Run ``script`` as task ``task_id`` on ``node``; return the pid of its shell once it runs (from a FIFO)."""
    pids = Fifo(pid_file)
    try:
        command_line = f"/bin/sh -c 'echo $$ > {pid_file}; {script}'"
        await client.add_task("j1", TaskSpec(id=task_id, command_line=command_line), node_id=node.node_id)
        return int(await pids.read_line())
    finally:
        pids.close()


async def test_partition_publishes_the_last_will_and_heal_brings_the_node_back_idle(
    node_pool: NodePool, batch_client: BatchClient
) -> None:
    node1, node2 = await node_pool(n=2)

    await node1.partition()
    await batch_client.wait_until(lambda: is_state(batch_client, node1, NodeStateName.OFFLINE), TIMEOUT_S)
    assert node1.process is not None and node1.process.returncode is None, "the agent itself keeps running"
    assert is_state(batch_client, node2, NodeStateName.IDLE)

    await batch_client.create_job(Job(id="j1"))
    add = asyncio.ensure_future(
        batch_client.add_task("j1", TaskSpec(id="t1", command_line="true"), node_id=node1.node_id)
    )
    await batch_client.sync()  # a round trip after the command: the broker holds it for node1's session now
    assert not add.done()

    healed_at = utcnow()
    await node1.heal()
    await batch_client.wait_until(lambda: is_state(batch_client, node1, NodeStateName.IDLE, healed_at), TIMEOUT_S)
    task = await add  # the command sent during the partition is answered after heal
    assert task.node_info is not None and task.node_info.node_id == node1.node_id


async def test_a_task_that_ends_during_a_partition_is_reported_after_heal(
    node_pool: NodePool, batch_client: BatchClient, tmp_path: Path
) -> None:
    [node] = await node_pool(n=1)
    await batch_client.create_job(Job(id="j1"))
    go = tmp_path / "go"
    pid = await start_task(batch_client, node, "t1", f"while [ ! -e {go} ]; do sleep 0.05; done", tmp_path / "pid")
    task_process = open_pidfd(pid)
    await batch_client.wait_until(lambda: is_state(batch_client, node, NodeStateName.RUNNING), TIMEOUT_S)

    await node.partition()
    await batch_client.wait_until(lambda: is_state(batch_client, node, NodeStateName.OFFLINE), TIMEOUT_S)
    go.touch()
    assert await asyncio.to_thread(has_exited, task_process), "the task ends while its node is cut off"
    assert batch_client.view.tasks[("j1", "t1")].state == TaskState.RUNNING  # nothing got through

    healed_at = utcnow()
    await node.heal()
    [task] = await batch_client.wait_for_tasks("j1", ["t1"], timeout_s=TIMEOUT_S)
    assert task.execution_info.result == TaskResult.SUCCESS
    await batch_client.wait_until(lambda: is_state(batch_client, node, NodeStateName.IDLE, healed_at), TIMEOUT_S)


async def test_reboot_takes_a_new_boot_id_and_runs_the_preparation_again(
    node_pool: NodePool, batch_client: BatchClient
) -> None:
    [node] = await node_pool(n=1)
    prep = JobPreparationTask(command_line="/bin/sh -c 'echo x >> \"$AZ_BATCH_NODE_SHARED_DIR\"/prep-count'")
    await batch_client.create_job(Job(id="j1", job_preparation_task=prep))
    await batch_client.add_task("j1", TaskSpec(id="t1", command_line="true"), node_id=node.node_id)
    await batch_client.wait_for_tasks("j1", timeout_s=TIMEOUT_S)
    first_boot = batch_client.view.nodes[node.node_id].boot_id

    await node.reboot()
    await batch_client.add_task("j1", TaskSpec(id="t2", command_line="true"), node_id=node.node_id)
    [_, t2] = await batch_client.wait_for_tasks("j1", timeout_s=TIMEOUT_S)

    assert t2.execution_info.result == TaskResult.SUCCESS
    assert first_boot != batch_client.view.nodes[node.node_id].boot_id == node.boot_id
    assert await count_lines(batch_client, node.node_id, "shared/prep-count") == 2


async def test_kill_publishes_the_last_will_and_the_pool_ends_the_task_it_left(
    node_pool: NodePool, batch_client: BatchClient, tmp_path: Path
) -> None:
    [node] = await node_pool(n=1)
    await batch_client.create_job(Job(id="j1"))
    pid = await start_task(batch_client, node, "t1", "exec sleep 300", tmp_path / "pid")
    task_process = open_pidfd(pid)

    assert await node.kill() == -9
    await batch_client.wait_until(lambda: is_state(batch_client, node, NodeStateName.OFFLINE), TIMEOUT_S)
    assert psutil.pid_exists(pid), "the task outlives its SIGKILLed agent"

    await node_pool.close()  # what the fixture's teardown does
    assert await asyncio.to_thread(has_exited, task_process), "the pool ended the task the agent left behind"


async def test_disk_full_removes_completed_task_directories_and_reports_low_disk_until_disk_ok(
    node_pool: NodePool, batch_client: BatchClient
) -> None:
    [node] = await node_pool(1, env={"NODE_AGENT_RETENTION_SWEEP_INTERVAL": "PT0.2S"})
    removed: list[str] = []
    batch_client.on_event = lambda e: removed.append(e.task_id or "") if e.type == "taskDirectoryRemoved" else None
    await batch_client.create_job(Job(id="j1"))
    await batch_client.add_task("j1", TaskSpec(id="done", command_line="/bin/true"), node_id=node.node_id)
    await batch_client.wait_for_tasks("j1", ["done"], timeout_s=TIMEOUT_S)
    assert (node.root / "workitems/j1/job-1/done").is_dir()

    node.disk_full()
    low = await batch_client.wait_until(
        lambda: (s := batch_client.view.nodes.get(node.node_id)) is not None and s.is_low_on_disk and s, TIMEOUT_S
    )
    assert low.free_disk_bytes == 0
    assert removed == ["done"], "the completed task's directory went first, and only it"
    assert not (node.root / "workitems/j1/job-1/done").exists()
    assert (node.root / "shared").is_dir()

    node.disk_ok()
    await batch_client.wait_until(
        lambda: (s := batch_client.view.nodes.get(node.node_id)) is not None and not s.is_low_on_disk, TIMEOUT_S
    )
