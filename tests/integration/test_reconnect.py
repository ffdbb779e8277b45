"""A broker restart: agent and client reconnect, and what happened meanwhile is delivered, not lost."""

from __future__ import annotations

import contextlib
from pathlib import Path

from node_agent.brokers import free_port, running_broker
from node_agent.client.pool import BatchClient
from node_agent.testing.nodes import NodePool, fresh_prefix
from node_agent.wire.specs import Job, TaskSpec
from node_agent.wire.status import TaskResult, TaskState

WAIT_FOR_GO = "/bin/sh -c 'while [ ! -e go ]; do sleep 0.05; done'"


async def test_task_result_during_broker_outage_arrives_after_restart(tmp_path: Path) -> None:
    port = free_port()
    with contextlib.ExitStack() as stack:
        broker = stack.enter_context(running_broker(tmp_path / "broker", kind="mosquitto", port=port))
        async with (
            BatchClient(broker.url, topic_prefix=fresh_prefix(), command_timeout_s=20) as client,
            NodePool(broker, client, tmp_path / "nodes") as pool,  # its own broker: not the node_pool fixture
        ):
            [agent] = await pool(1)
            await client.create_job(Job(id="j1"))
            await client.add_task("j1", TaskSpec(id="t1", command_line=WAIT_FOR_GO))
            await client.wait_until(
                lambda: (t := client.view.tasks.get(("j1", "t1"))) and t.state == TaskState.RUNNING, 20
            )
            stack.close()  # the broker goes away while the task runs
            (agent.root / "workitems/j1/job-1/t1/wd/go").touch()  # the task ends during the outage
            stack.enter_context(running_broker(tmp_path / "broker2", kind="mosquitto", port=port))
            [task] = await client.wait_for_tasks("j1", ["t1"], timeout_s=30)
            assert task.execution_info.result == TaskResult.SUCCESS

            # The agent subscribed again: a new task runs (the broker kept no retained job: publish it again).
            await client.create_job(Job(id="j1"))
            # The client may have seen the agent's will (offline) around the restart, and the agent's NodeState of
            # its new session follows its queued results: the result can arrive before the node is back.
            await client.wait_until(lambda: all(n.state == "idle" for n in client.view.nodes.values()), 20)
            await client.add_task("j1", TaskSpec(id="t2", command_line="/bin/true"))
            [second] = await client.wait_for_tasks("j1", ["t2"], timeout_s=20)
            assert second.execution_info.exit_code == 0
            assert await agent.stop() == 0
