"""The pool's start task through the wire: once per boot, before the node is idle, startTaskInfo in NodeState."""

from __future__ import annotations

import json

import pytest

from node_agent.client.pool import BatchClient, CommandError
from node_agent.client.view import NoNodeAvailable
from node_agent.wire.specs import Job, StartTask, TaskSpec
from node_agent.wire.status import NodeStateName, SubtaskState, TaskResult, TaskState
from tests.conftest import count_lines, restart
from tests.lifecycle import GATE, SHARED, node_state, open_gate, sh, task_in

COUNT = f"echo x >> {SHARED}/start-count"


def start_task_env(**fields: object) -> dict[str, str]:
    return {"NODE_AGENT_START_TASK": json.dumps(fields)}


async def test_start_task_runs_on_first_start_not_on_restart_and_again_after_reboot(pool, client: BatchClient) -> None:
    where = 'test "$PWD" = "$AZ_BATCH_NODE_STARTUP_DIR/wd" && echo "$AZ_BATCH_TASK_DIR"'
    [node] = await pool(1, env=start_task_env(commandLine=sh(f"{COUNT} && {where}")))

    state = client.view.nodes[node.node_id]  # idle: waitForSuccess (the default) held it until the task succeeded
    info = state.start_task_info
    assert info is not None
    assert (info.state, info.result, info.exit_code, info.retry_count) == (SubtaskState.COMPLETED, "success", 0, 0)
    assert await count_lines(client, node.node_id, "shared/start-count") == 1
    stdout = await client.get_file(node.node_id, "startup/stdout.txt")
    assert stdout.decode().strip() == str(node.root / "startup")

    await restart(node)
    assert await count_lines(client, node.node_id, "shared/start-count") == 1
    assert client.view.nodes[node.node_id].start_task_info == info  # durable across the agent restart

    await node.reboot()
    assert await count_lines(client, node.node_id, "shared/start-count") == 2
    again = client.view.nodes[node.node_id].start_task_info
    assert again is not None and again.start_time > info.end_time


async def test_failed_start_task_with_wait_for_success_leaves_node_refusing_tasks(pool, client: BatchClient) -> None:
    env = start_task_env(commandLine=sh(f"{COUNT}; exit 3"), maxTaskRetryCount=1, waitForSuccess=True)
    [node] = await pool(1, env=env, ready=False)

    state = await node_state(client, node, check=lambda s: s.state == NodeStateName.START_TASK_FAILED)
    info = state.start_task_info
    assert info is not None and info.failure_info is not None
    assert (info.exit_code, info.retry_count, info.result) == (3, 1, TaskResult.FAILURE)
    assert info.failure_info.code == "FailureExitCode"
    await client.create_job(Job(id="j"))
    with pytest.raises(CommandError) as refused:
        await client.add_task("j", TaskSpec(id="t", command_line="true"), node_id=node.node_id)
    assert refused.value.code == "StartTaskFailed"
    with pytest.raises(NoNodeAvailable):  # the client library does not place tasks there
        await client.add_task("j", TaskSpec(id="t", command_line="true"))

    await node.stop()
    await node.start(ready=False)  # same boot: still failed, not run again
    await node_state(client, node, check=lambda s: s.state == NodeStateName.START_TASK_FAILED)
    assert await count_lines(client, node.node_id, "shared/start-count") == 2


async def test_start_task_without_wait_for_success_lets_the_node_serve_while_it_runs(pool, client: BatchClient) -> None:
    [node] = await pool(1, env=start_task_env(commandLine=sh(f"{GATE} && {COUNT}"), waitForSuccess=False))
    running = await node_state(client, node, check=lambda s: s.start_task_info is not None)
    assert running.state == NodeStateName.IDLE
    assert running.start_task_info is not None and running.start_task_info.state == SubtaskState.RUNNING

    await client.create_job(Job(id="j"))
    await client.add_task("j", TaskSpec(id="t", command_line="true"), node_id=node.node_id)
    done = await task_in(client, "j", "t", TaskState.COMPLETED)
    assert done.execution_info.result == TaskResult.SUCCESS

    open_gate(node)
    finished = await node_state(
        client, node, check=lambda s: s.start_task_info is not None and s.start_task_info.state == "completed"
    )
    assert finished.start_task_info is not None and finished.start_task_info.result == TaskResult.SUCCESS


async def test_pool_document_start_task_runs_where_the_node_sets_none(pool, client: BatchClient) -> None:
    start = StartTask(command_line=sh(f"echo x >> {SHARED}/pool-count"))
    await client.nodes.set_start_task("pool1", start)
    own = start_task_env(commandLine=sh(f"echo x >> {SHARED}/own-count"))
    node1 = (await pool(1, ready=False))[0]
    node2 = (await pool(1, env=own, ready=False))[0]

    for node in (node1, node2):
        await node_state(client, node, check=lambda s: s.state == "idle" and s.start_task_info is not None)
    assert await count_lines(client, node1.node_id, "shared/pool-count") == 1
    assert await count_lines(client, node2.node_id, "shared/pool-count") == 0  # the node's own setting wins
    assert await count_lines(client, node2.node_id, "shared/own-count") == 1
    assert client.nodes.get_pool("pool1") == client.view.pools["pool1"]
    assert client.view.pools["pool1"].start_task == start

    await node1.reboot()  # kept in the store: known before the agent connects, run again in the new boot
    assert await count_lines(client, node1.node_id, "shared/pool-count") == 2
