"""An agent killed with SIGKILL: in the same boot its next run adopts the task's supervisor; after a reboot the
task is lost, and the next run kills what is left of it and hands it back."""

from __future__ import annotations

import asyncio
import os

import psutil

from node_agent.client.pool import BatchClient
from node_agent.wire.specs import Job, TaskSpec
from node_agent.wire.status import Event, TaskState
from tests.processes import Fifo, has_exited, open_pidfd

LONG_TASK = "/bin/sh -c 'echo $$ > $AZ_BATCH_NODE_SHARED_DIR/pid; sleep 300'"
GATED_TASK = "/bin/sh -c 'echo $$ > $AZ_BATCH_NODE_SHARED_DIR/pid; read line < $AZ_BATCH_NODE_SHARED_DIR/gate; exit 5'"


async def test_restart_in_the_same_boot_adopts_the_running_task_and_reports_its_exit_code(
    pool, client: BatchClient
) -> None:
    [agent] = await pool(1)
    events: list[Event] = []
    client.on_event = events.append
    await client.create_job(Job(id="j1"))
    gate = agent.root / "shared/gate"
    os.mkfifo(gate)
    pids = Fifo(agent.root / "shared/pid")
    await client.add_task("j1", TaskSpec(id="t1", command_line=GATED_TASK), node_id=agent.node_id)
    pid = int(await pids.read_line())
    pids.close()

    await agent.kill()
    await agent.start()
    assert psutil.pid_exists(pid), "the task runs on under its supervisor"
    await asyncio.to_thread(gate.write_text, "go\n")

    [task] = await client.wait_for_tasks("j1", timeout_s=20)
    assert task.execution_info.exit_code == 5

    def completions() -> list[Event]:
        return [e for e in events if e.type == "taskStateChanged" and e.state == TaskState.COMPLETED]

    await client.wait_until(completions, 20)
    await client.sync()
    assert not [e for e in events if e.type == "taskHandedBack"]
    assert len(completions()) == 1


async def test_restart_after_a_reboot_kills_the_lost_task_and_hands_it_back(pool, client: BatchClient) -> None:
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
    agent.agent.set_boot_id("boot-after-reboot")  # its processes would be gone after a real reboot
    await agent.start()

    assert await asyncio.to_thread(has_exited, orphan), "the restarted agent killed the lost task"
    handed_back = await client.wait_until(
        lambda: next((e for e in events if e.type == "taskHandedBack" and e.task_id == "t1"), None), 20
    )
    assert handed_back.code == "NodeAgentRestarted"
    assert client.view.tasks[("j1", "t1")].state == TaskState.ACTIVE
