"""The example of docs/testing.md, as printed there: what a scheduler sees when a node is cut off."""

import pytest

from node_agent.client.pool import BatchClient
from node_agent.testing.nodes import NodePool
from node_agent.wire.specs import Job, TaskSpec
from node_agent.wire.status import NodeStateName, TaskState

WAIT_FOR_GO = "/bin/sh -c 'while [ ! -e go ]; do sleep 0.05; done'"  # ends once the test creates wd/go


def state_of(scheduler: BatchClient, node_id: str) -> NodeStateName | None:
    node = scheduler.view.nodes.get(node_id)
    return node.state if node is not None else None


@pytest.mark.asyncio
async def test_partitioned_node_keeps_its_task_and_reports_it_after_heal(
    node_pool: NodePool, batch_client: BatchClient
) -> None:
    scheduler = batch_client  # the scheduler under test: here BatchClient's own least-loaded placement
    node1, node2 = await node_pool(n=2)
    await scheduler.create_job(Job(id="render"))
    await scheduler.add_task("render", TaskSpec(id="frame1", command_line=WAIT_FOR_GO), node_id=node1.node_id)
    await scheduler.wait_until(lambda: scheduler.view.tasks[("render", "frame1")].state == TaskState.RUNNING, 20)

    await node1.partition()
    # The broker publishes node1's last will: the scheduler sees it offline and places new work elsewhere.
    await scheduler.wait_until(lambda: state_of(scheduler, node1.node_id) == NodeStateName.OFFLINE, 20)
    frame2 = await scheduler.add_task("render", TaskSpec(id="frame2", command_line="true"))
    assert frame2.node_info is not None and frame2.node_info.node_id == node2.node_id
    # frame1 is not handed back: node1 still runs it, and it ends while node1 is cut off. Nothing node1
    # publishes gets through meanwhile, so the scheduler still sees frame1 running on node1.
    (node1.root / "workitems/render/job-1/frame1/wd/go").touch()
    frame1 = scheduler.view.tasks[("render", "frame1")]
    assert frame1.state == TaskState.RUNNING and frame1.node_info is not None
    assert frame1.node_info.node_id == node1.node_id

    await node1.heal()
    # node1 reconnects by itself and delivers what it held back: frame1's result, then its idle state.
    [frame1] = await scheduler.wait_for_tasks("render", ["frame1"], timeout_s=20)
    assert frame1.execution_info.exit_code == 0
    await scheduler.wait_until(lambda: state_of(scheduler, node1.node_id) == NodeStateName.IDLE, 20)
