"""kill -9 of the agent at many points, then a restart: one result per task, preparation and release once,
long tasks adopted with their real exit codes (issue 6)."""

from __future__ import annotations

import asyncio

import psutil

from node_agent.client.pool import BatchClient
from node_agent.testing.nodes import NodePool
from node_agent.wire.specs import TaskSpec
from node_agent.wire.status import Event, SubtaskState
from tests.conftest import count_lines
from tests.faults.conftest import TIMEOUT_S, Gate, counted, counted_job, gated, one_completion_each


async def test_kill_during_preparation_adopts_it_and_runs_it_once(pool: NodePool, client: BatchClient) -> None:
    [node] = await pool(1)
    events: list[Event] = []
    client.on_event = events.append
    prep = Gate(node, "prep")
    await client.create_job(counted_job("j1", prep=gated("prep")))
    await client.add_task("j1", TaskSpec(id="t1", command_line=counted("task-count")), node_id=node.node_id)
    await prep.running()
    await node.kill()
    await node.start()
    await prep.open()

    await one_completion_each(client, events, ["t1"])
    assert await count_lines(client, node.node_id, "shared/prep") == 1
    assert await count_lines(client, node.node_id, "shared/task-count") == 1


async def test_kill_between_preparation_and_first_task_runs_neither_twice(pool: NodePool, client: BatchClient) -> None:
    [node] = await pool(1)
    events: list[Event] = []
    client.on_event = events.append
    await client.create_job(counted_job("j1"))
    await node.crash_at("prepared")
    await client.add_task("j1", TaskSpec(id="t1", command_line=counted("task-count")), node_id=node.node_id)
    await node.crashed()
    await node.start()

    await one_completion_each(client, events, ["t1"])
    assert await count_lines(client, node.node_id, "shared/prep-count") == 1
    assert await count_lines(client, node.node_id, "shared/task-count") == 1


async def test_kill_mid_task_adopts_long_tasks_and_reports_their_real_exit_codes(
    pool: NodePool, client: BatchClient
) -> None:
    [node] = await pool(1, task_slots=2)
    events: list[Event] = []
    client.on_event = events.append
    gates = [Gate(node, "a"), Gate(node, "b")]
    await client.create_job(counted_job("j1"))
    await client.add_task("j1", TaskSpec(id="a", command_line=gated("a", 3)), node_id=node.node_id)
    await client.add_task("j1", TaskSpec(id="b", command_line=gated("b", 0)), node_id=node.node_id)
    pids = [await gate.running() for gate in gates]
    await node.kill()
    await node.start()
    assert all(psutil.pid_exists(pid) for pid in pids), "tasks run on while no agent watches them"
    for gate in gates:
        await gate.open()

    await one_completion_each(client, events, ["a", "b"])
    codes = {t: client.view.tasks[("j1", t)].execution_info.exit_code for t in ("a", "b")}
    assert codes == {"a": 3, "b": 0}
    assert await count_lines(client, node.node_id, "shared/a") == 1
    assert await count_lines(client, node.node_id, "shared/prep-count") == 1


async def test_kill_after_task_exit_before_its_result_is_published(pool: NodePool, client: BatchClient) -> None:
    [node] = await pool(1)
    events: list[Event] = []
    client.on_event = events.append
    await client.create_job(counted_job("j1"))
    await node.crash_at("task-exited:2")  # the first process to exit is the preparation
    await client.add_task("j1", TaskSpec(id="t1", command_line=counted("t1", "exit 9")), node_id=node.node_id)
    await node.crashed()
    await node.start()

    await one_completion_each(client, events, ["t1"])
    assert client.view.tasks[("j1", "t1")].execution_info.exit_code == 9
    assert await count_lines(client, node.node_id, "shared/t1") == 1


async def test_kill_mid_release_adopts_it_and_releases_once(pool: NodePool, client: BatchClient) -> None:
    [node] = await pool(1)
    release = Gate(node, "release")
    await client.create_job(counted_job("j1", release=gated("release")))
    await client.add_task("j1", TaskSpec(id="t1", command_line="/bin/true"), node_id=node.node_id)
    await client.wait_for_tasks("j1", timeout_s=TIMEOUT_S)
    terminating = asyncio.create_task(client.terminate_job("j1", timeout_s=TIMEOUT_S * 2))
    await release.running()
    await node.kill()
    await node.start()
    await release.open()

    await asyncio.wait_for(terminating, TIMEOUT_S * 2)
    [status] = client.prep_release_status("j1")
    assert status.job_release_task_execution_info is not None
    assert status.job_release_task_execution_info.state == SubtaskState.COMPLETED
    assert await count_lines(client, node.node_id, "shared/release") == 1


async def test_reboot_while_a_task_runs_loses_it_and_reruns_preparation(pool: NodePool, client: BatchClient) -> None:
    [node] = await pool(1)
    events: list[Event] = []
    client.on_event = events.append
    gate = Gate(node, "t1")
    await client.create_job(counted_job("j1"))
    await client.add_task("j1", TaskSpec(id="t1", command_line=gated("t1")), node_id=node.node_id)
    await gate.running()
    await node.kill()
    node.agent.set_boot_id("boot-2")
    await node.start()

    handed_back = await client.wait_until(
        lambda: [e for e in events if e.type == "taskHandedBack" and e.task_id == "t1"], TIMEOUT_S
    )
    assert handed_back[0].code == "NodeAgentRestarted"
    await client.add_task("j1", TaskSpec(id="t2", command_line="/bin/true"), node_id=node.node_id)
    await one_completion_each(client, events, ["t2"])
    assert await count_lines(client, node.node_id, "shared/prep-count") == 2


async def test_reboot_does_not_rerun_preparation_when_told_not_to(pool: NodePool, client: BatchClient) -> None:
    [node] = await pool(1)
    events: list[Event] = []
    client.on_event = events.append
    await client.create_job(counted_job("j1", rerun_on_node_reboot_after_success=False))
    await client.add_task("j1", TaskSpec(id="t1", command_line="/bin/true"), node_id=node.node_id)
    await one_completion_each(client, events, ["t1"])
    await node.kill()
    node.agent.set_boot_id("boot-2")
    await node.start()

    await client.add_task("j1", TaskSpec(id="t2", command_line="/bin/true"), node_id=node.node_id)
    await one_completion_each(client, events, ["t1", "t2"])
    assert await count_lines(client, node.node_id, "shared/prep-count") == 1
