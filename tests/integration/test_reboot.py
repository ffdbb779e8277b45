"""reboot and reimage on request, with a reboot command the test provides (a new boot id, then SIGTERM)."""

from __future__ import annotations

import pytest

from node_agent.client.pool import BatchClient, CommandError
from node_agent.testing.nodes import SIMULATED_REBOOT_COMMAND
from node_agent.wire.specs import Job, JobPreparationTask, TaskSpec
from node_agent.wire.status import NodeStateName, SubtaskState, TaskResult, TaskState
from tests.conftest import count_lines
from tests.lifecycle import GATE, SHARED, Events, open_gate, sh, task_in

REBOOTABLE = {"NODE_AGENT_ALLOW_REBOOT": "true", "NODE_AGENT_REBOOT_COMMAND": SIMULATED_REBOOT_COMMAND}
HELD_ON_NODE1 = sh(f'test "$AZ_BATCH_NODE_ID" != node1 || {{ {GATE}; }}')


async def test_reboot_is_refused_unless_allowed(pool, client: BatchClient) -> None:
    [node] = await pool(1)
    for operation in (client.nodes.reboot, client.nodes.reimage):
        with pytest.raises(CommandError) as refused:
            await operation(node.node_id, "requeue")
        assert refused.value.code == "NodeRebootNotAllowed"
    assert client.view.nodes[node.node_id].state == NodeStateName.IDLE


async def test_reboot_requeue_hands_running_task_back_then_node_returns_in_new_boot(pool, client: BatchClient) -> None:
    node1, node2 = await pool(2, env=REBOOTABLE)
    events = Events(client)
    await client.create_job(Job(id="j"))
    await client.add_task("j", TaskSpec(id="t", command_line=HELD_ON_NODE1), node_id=node1.node_id)
    await task_in(client, "j", "t", TaskState.RUNNING)

    assert await client.nodes.reboot(node1.node_id, "requeue") == {"state": "rebooting"}

    handed_back = await events.wait_for("taskHandedBack", task_id="t")
    assert (handed_back.node_id, handed_back.code) == (node1.node_id, "NodeRebooting")
    done = await task_in(client, "j", "t", TaskState.COMPLETED)
    assert done.node_info is not None and done.node_info.node_id == node2.node_id
    await node1.rebooted()
    rebooted = await events.wait_for("nodeRebooted", node_id=node1.node_id)
    assert rebooted.message is not None and "requeue" in rebooted.message
    assert client.view.nodes[node1.node_id].boot_id == node1.boot_id == "boot-2"


async def test_reboot_terminate_ends_running_task(pool, client: BatchClient) -> None:
    [node] = await pool(1, env=REBOOTABLE)
    await client.create_job(Job(id="j"))
    await client.add_task("j", TaskSpec(id="t", command_line=sh(GATE)), node_id=node.node_id)
    await task_in(client, "j", "t", TaskState.RUNNING)

    await client.nodes.reboot(node.node_id, "terminate")

    done = await task_in(client, "j", "t", TaskState.COMPLETED)
    assert done.execution_info.failure_info is not None
    assert done.execution_info.failure_info.code == "TaskEnded"
    await node.rebooted()


async def test_reboot_taskcompletion_waits_for_running_task(pool, client: BatchClient) -> None:
    [node] = await pool(1, env=REBOOTABLE)
    events = Events(client)
    await client.create_job(Job(id="j"))
    await client.add_task("j", TaskSpec(id="t", command_line=sh(GATE)), node_id=node.node_id)
    await task_in(client, "j", "t", TaskState.RUNNING)

    await client.nodes.reboot(node.node_id, "taskcompletion")
    with pytest.raises(CommandError) as refused:
        await client.add_task("j", TaskSpec(id="t2", command_line="true"), node_id=node.node_id)
    assert refused.value.code == "NodeRebooting"
    assert client.view.nodes[node.node_id].state == NodeStateName.REBOOTING
    assert node.process is not None and node.process.returncode is None  # not rebooted while the task runs

    open_gate(node)
    done = await task_in(client, "j", "t", TaskState.COMPLETED)
    assert done.execution_info.result == TaskResult.SUCCESS
    await node.rebooted()
    await events.wait_for("nodeRebooted", node_id=node.node_id)


async def test_reimage_wipes_node_root_and_preparation_runs_again(pool, client: BatchClient) -> None:
    [node] = await pool(1, env=REBOOTABLE)
    events = Events(client)
    prep = JobPreparationTask(command_line=sh(f"echo x >> {SHARED}/prep-count"))
    await client.create_job(Job(id="j", job_preparation_task=prep))
    await client.add_task("j", TaskSpec(id="t1", command_line="true"), node_id=node.node_id)
    await task_in(client, "j", "t1", TaskState.COMPLETED)
    assert await count_lines(client, node.node_id, "shared/prep-count") == 1

    assert await client.nodes.reimage(node.node_id, "taskcompletion") == {"state": "reimaging"}
    await node.rebooted()
    await events.wait_for("nodeReimaged", node_id=node.node_id)

    assert await client.list_files(node.node_id, "workitems") == []
    assert await count_lines(client, node.node_id, "shared/prep-count") == 0
    assert client.prep_release_status("j") == []  # the node forgot the job's preparation, and said so
    await client.add_task("j", TaskSpec(id="t2", command_line="true"), node_id=node.node_id)
    done = await task_in(client, "j", "t2", TaskState.COMPLETED)
    assert done.execution_info.result == TaskResult.SUCCESS
    assert await count_lines(client, node.node_id, "shared/prep-count") == 1
    [status] = client.prep_release_status("j")
    assert status.job_preparation_task_execution_info is not None
    assert status.job_preparation_task_execution_info.state == SubtaskState.COMPLETED

    await client.delete_job("j", timeout_s=20)  # the task completed before the reimage is cleared too
    assert client.view.tasks.get(("j", "t1")) is None


async def test_reboot_recorded_before_an_agent_stop_is_resumed_at_the_next_start(pool, client: BatchClient) -> None:
    env = {**REBOOTABLE, "NODE_AGENT_SHUTDOWN_GRACE": "PT0S", "NODE_AGENT_TASKS_ON_STOP": "handback"}
    [node] = await pool(1, env=env)
    events = Events(client)
    await client.create_job(Job(id="j"))
    await client.add_task("j", TaskSpec(id="t", command_line=sh(GATE)), node_id=node.node_id)
    await task_in(client, "j", "t", TaskState.RUNNING)
    await client.nodes.reboot(node.node_id, "taskcompletion")

    assert await node.stop() == 0  # SIGTERM while the reboot waits for the task: the task is handed back
    await events.wait_for("taskHandedBack", task_id="t", code="NodeAgentStopped")
    await node.start(ready=False)  # same boot: the recorded reboot goes on, with nothing left to wait for
    await node.rebooted()

    await events.wait_for("nodeRebooted", node_id=node.node_id)
    assert client.view.nodes[node.node_id].boot_id == "boot-2"


async def test_reboot_waiting_for_a_task_kept_over_an_agent_stop_waits_for_it_after_the_restart(
    pool, client: BatchClient
) -> None:
    [node] = await pool(1, env=REBOOTABLE)  # tasks_on_stop keep: the running task stays with its supervisor
    events = Events(client)
    await client.create_job(Job(id="j"))
    await client.add_task("j", TaskSpec(id="t", command_line=sh(f"{GATE}; exit 4")), node_id=node.node_id)
    await task_in(client, "j", "t", TaskState.RUNNING)
    await client.nodes.reboot(node.node_id, "taskcompletion")

    assert await node.stop() == 0  # the stop does not wait for the reboot's wait for the task
    await node.start(ready=False)  # same boot: the task is adopted and the reboot waits for it again
    open_gate(node)
    task = await task_in(client, "j", "t", TaskState.COMPLETED)
    assert task.execution_info.exit_code == 4
    await node.rebooted()

    await events.wait_for("nodeRebooted", node_id=node.node_id)
    assert client.view.nodes[node.node_id].boot_id == "boot-2"


async def test_failing_reboot_command_is_abandoned_and_the_node_serves_again(pool, client: BatchClient) -> None:
    [node] = await pool(1, env={"NODE_AGENT_ALLOW_REBOOT": "true", "NODE_AGENT_REBOOT_COMMAND": "/bin/false"})
    await client.nodes.reboot(node.node_id, "requeue")
    assert client.view.nodes[node.node_id].state == NodeStateName.REBOOTING  # published before the reply

    await client.wait_until(lambda: client.view.nodes[node.node_id].state == NodeStateName.IDLE, 20)
    await client.create_job(Job(id="j"))
    await client.add_task("j", TaskSpec(id="t", command_line="true"), node_id=node.node_id)
    assert (await task_in(client, "j", "t", TaskState.COMPLETED)).execution_info.result == TaskResult.SUCCESS
    assert node.process is not None and node.process.returncode is None
