"""An agent killed with SIGKILL: on its next start it kills what it left running and hands the task back."""

from __future__ import annotations

import asyncio

import psutil

from node_agent.client.pool import BatchClient
from node_agent.wire.specs import Job, TaskSpec
from node_agent.wire.status import Event, TaskState
from tests.processes import Fifo, has_exited, open_pidfd

LONG_TASK = "/bin/sh -c 'echo $$ > $AZ_BATCH_NODE_SHARED_DIR/pid; sleep 300'"


async def test_restart_after_sigkill_kills_the_orphaned_task_and_hands_it_back(pool, client: BatchClient) -> None:
    [agent] = await pool(1)
    events: list[Event] = []
    client.on_event = events.append
    await client.create_job(Job(id="j1"))
    pids = Fifo(agent.root / "shared/pid")  # opened before the task starts; the task writes its pid into it
    await client.add_task("j1", TaskSpec(id="t1", command_line=LONG_TASK), node_id=agent.node_id)
    pid = int(await pids.read_line())
    pids.close()
    orphan = open_pidfd(pid)

    await agent.kill()
    assert psutil.pid_exists(pid), "the task outlives a SIGKILLed agent"
    await agent.start()

    assert await asyncio.to_thread(has_exited, orphan), "the restarted agent killed the orphaned task"
    handed_back = await client.wait_until(
        lambda: next((e for e in events if e.type == "taskHandedBack" and e.task_id == "t1"), None), 20
    )
    assert handed_back.code == "NodeAgentRestarted"
    assert client.view.tasks[("j1", "t1")].state == TaskState.ACTIVE
