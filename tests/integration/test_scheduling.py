"""disableScheduling with each nodeDisableSchedulingOption, enableScheduling and drain, observed over the wire."""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import pytest

from node_agent.brokers import BrokerHandle
from node_agent.client.pool import BatchClient, CommandError
from node_agent.wire.specs import Job, TaskSpec
from node_agent.wire.status import TaskResult, TaskState
from tests.conftest import restart
from tests.lifecycle import GATE, TIMEOUT_S, Events, node_state, open_gate, sh, task_in

# Held on node1 only: once handed back and placed on node2, the same task runs straight through.
HELD_ON_NODE1 = sh(f'test "$AZ_BATCH_NODE_ID" != node1 || {{ {GATE}; }}')


async def running_task(client: BatchClient, node_id: str, task_id: str = "t") -> None:
    await client.create_job(Job(id="j"))
    await client.add_task("j", TaskSpec(id=task_id, command_line=HELD_ON_NODE1), node_id=node_id)
    await task_in(client, "j", task_id, TaskState.RUNNING)


async def test_disable_requeue_hands_running_task_back_and_client_places_it_elsewhere(
    pool, client: BatchClient
) -> None:
    node1, node2 = await pool(2)
    events = Events(client)
    await running_task(client, node1.node_id)

    assert await client.nodes.disable_scheduling(node1.node_id, "requeue") == {"schedulingState": "disabled"}

    handed_back = await events.wait_for("taskHandedBack", task_id="t")
    assert (handed_back.node_id, handed_back.code) == (node1.node_id, "NodeSchedulingDisabled")
    done = await task_in(client, "j", "t", TaskState.COMPLETED)
    assert done.node_info is not None and done.node_info.node_id == node2.node_id
    assert done.execution_info.result == TaskResult.SUCCESS
    assert client.view.nodes[node1.node_id].scheduling_state == "disabled"


async def test_disable_terminate_ends_running_task(pool, client: BatchClient) -> None:
    [node] = await pool(1)
    await running_task(client, node.node_id)

    await client.nodes.disable_scheduling(node.node_id, "terminate")

    done = await task_in(client, "j", "t", TaskState.COMPLETED)  # recorded before the reply
    assert done.execution_info.failure_info is not None
    assert done.execution_info.failure_info.code == "TaskEnded"
    assert done.node_info is not None and done.node_info.node_id == node.node_id


async def test_disable_taskcompletion_lets_running_task_finish_and_refuses_new_ones(pool, client: BatchClient) -> None:
    [node] = await pool(1)
    await running_task(client, node.node_id)

    await client.nodes.disable_scheduling(node.node_id, "taskcompletion")
    with pytest.raises(CommandError) as refused:
        await client.add_task("j", TaskSpec(id="t2", command_line="true"), node_id=node.node_id)
    assert refused.value.code == "NodeSchedulingDisabled"
    assert client.view.tasks[("j", "t")].state == TaskState.RUNNING

    open_gate(node)
    done = await task_in(client, "j", "t", TaskState.COMPLETED)
    assert done.execution_info.result == TaskResult.SUCCESS


async def test_disabled_scheduling_survives_agent_restart_until_enabled(pool, client: BatchClient) -> None:
    node1, node2 = await pool(2)
    await client.nodes.disable_scheduling(node1.node_id, "taskcompletion")
    await restart(node1)
    assert client.view.nodes[node1.node_id].scheduling_state == "disabled"

    await client.create_job(Job(id="j"))
    placed = [await client.add_task("j", TaskSpec(id=f"t{n}", command_line="true")) for n in range(3)]
    assert {task.node_info.node_id for task in placed if task.node_info} == {node2.node_id}

    assert await client.nodes.enable_scheduling(node1.node_id) == {"schedulingState": "enabled"}
    await client.add_task("j", TaskSpec(id="t9", command_line="true"), node_id=node1.node_id)
    assert (await task_in(client, "j", "t9", TaskState.COMPLETED)).execution_info.result == TaskResult.SUCCESS


async def test_drain_returns_once_the_node_holds_no_task(pool, client: BatchClient) -> None:
    [node] = await pool(1)
    await running_task(client, node.node_id)

    drain = asyncio.create_task(client.nodes.drain(node.node_id, timeout_s=30))
    await node_state(client, node, check=lambda s: s.scheduling_state == "disabled")
    with pytest.raises(CommandError):  # a round trip to the node while the task still runs
        await client.add_task("j", TaskSpec(id="t2", command_line="true"), node_id=node.node_id)
    assert not drain.done()

    open_gate(node)
    assert await drain == {"schedulingState": "disabled", "runningTaskSlotsCount": 0}
    assert client.view.tasks[("j", "t")].state == TaskState.COMPLETED


async def cli(client: BatchClient, broker_url: str, *args: str) -> Any:
    """Run ``node-agent <args>`` against the test's broker and prefix; its stdout as JSON."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "node_agent",
        *args,
        "--broker",
        broker_url,
        "--prefix",
        client.topics.prefix,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), TIMEOUT_S)
    assert process.returncode == 0, err.decode()
    return json.loads(out)


async def test_cli_disables_enables_drains_and_sets_the_pool_start_task(
    pool, client: BatchClient, mqtt_broker: BrokerHandle
) -> None:
    [node] = await pool(1)
    url = mqtt_broker.url

    assert await cli(client, url, "nodes", "disable", node.node_id, "--option", "terminate") == {
        "schedulingState": "disabled"
    }
    assert await cli(client, url, "nodes", "enable", node.node_id) == {"schedulingState": "enabled"}
    assert await cli(client, url, "nodes", "drain", node.node_id, "--timeout", "10") == {
        "schedulingState": "disabled",
        "runningTaskSlotsCount": 0,
    }
    written = await cli(client, url, "pool", "start-task", "set", "pool1", "true", "--no-wait-for-success")
    assert (written["id"], written["startTask"]["commandLine"]) == ("pool1", "true")
    shown = await cli(client, url, "pool", "start-task", "show", "pool1")
    assert shown["commandLine"] == "true" and shown["waitForSuccess"] is False
