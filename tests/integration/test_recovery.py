"""An agent killed with SIGKILL: on its next start it kills what it left running and hands the task back."""

from __future__ import annotations

import asyncio

import psutil

from node_agent.client.pool import BatchClient
from node_agent.wire.specs import Job, TaskSpec
from node_agent.wire.status import Event, TaskState
from tests.conftest import wait_for_file, wait_ready

LONG_TASK = "/bin/sh -c 'echo $$ > pid; sleep 300'"


async def test_restart_after_sigkill_kills_the_orphaned_task_and_hands_it_back(
    pool, client: BatchClient
) -> None:
    [agent] = await pool(1)
    events: list[Event] = []
    client.on_event = events.append
    await client.create_job(Job(id="j1"))
    await client.add_task("j1", TaskSpec(id="t1", command_line=LONG_TASK), node_id=agent.node_id)
    await client.wait_until(
        lambda: (t := client.view.tasks.get(("j1", "t1"))) and t.state == TaskState.RUNNING, 20
    )
    pid_file = agent.root / "workitems/j1/job-1/t1/wd/pid"
    await wait_for_file(pid_file)
    orphan = psutil.Process(int(pid_file.read_text()))

    await agent.kill()
    assert orphan.is_running(), "the task outlives a SIGKILLed agent"
    await agent.start()
    await wait_ready(client, [agent])

    await asyncio.to_thread(orphan.wait, 10)  # raises TimeoutExpired if the orphan was not killed
    handed_back = await client.wait_until(
        lambda: next((e for e in events if e.type == "taskHandedBack" and e.task_id == "t1"), None), 20
    )
    assert handed_back.code == "NodeAgentRestarted"
    assert client.view.tasks[("j1", "t1")].state == TaskState.ACTIVE
