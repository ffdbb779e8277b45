"""The node cut off the broker for 30 s while its tasks finish: every result arrives once after the cut."""

from __future__ import annotations

import asyncio
import os

from node_agent.client.pool import BatchClient
from node_agent.testing.nodes import NodePool
from node_agent.wire.specs import Job, TaskSpec
from node_agent.wire.status import Event, TaskState
from tests.faults.conftest import TIMEOUT_S, completions, is_completed, sh
from tests.processes import Fifo

CUT_S = float(os.environ.get("FAULT_PARTITION_S", "30"))  # the fault's length, as the issue asks
TASKS = 3


async def test_results_of_tasks_that_finish_during_a_30_s_cut_arrive_once(pool: NodePool, client: BatchClient) -> None:
    [node] = await pool(1, task_slots=TASKS)
    events: list[Event] = []
    client.on_event = events.append
    await client.create_job(Job(id="j1"))
    shared = node.root / "shared"
    done = Fifo(shared / "done")
    keep_open = os.open(done.path, os.O_WRONLY | os.O_NONBLOCK)  # so that one task's close is no EOF
    ids = [f"t{i}" for i in range(TASKS)]
    for i, task_id in enumerate(ids):
        wait = "while [ ! -e $AZ_BATCH_NODE_SHARED_DIR/go ]; do sleep 0.05; done"
        command = sh(f"{wait}; echo {task_id} > $AZ_BATCH_NODE_SHARED_DIR/done; exit {i}")
        await client.add_task("j1", TaskSpec(id=task_id, command_line=command), node_id=node.node_id)
    await client.wait_until(
        lambda: all((t := client.view.tasks.get(("j1", i))) and t.state == TaskState.RUNNING for i in ids),
        TIMEOUT_S,
    )
    await node.partition()
    cut = asyncio.create_task(asyncio.sleep(CUT_S))  # the length of the fault, not a wait for an event
    (shared / "go").touch()
    finished: set[str] = set()
    while len(finished) < TASKS:  # every task ended while the node is cut off
        finished.update((await done.read_line()).split())
    done.close()
    os.close(keep_open)
    assert not any(is_completed(client, "j1", i) for i in ids), "nothing gets through the cut"
    await cut
    await node.heal()

    await client.wait_until(lambda: all(is_completed(client, "j1", i) for i in ids), TIMEOUT_S)
    assert {i: client.view.tasks[("j1", i)].execution_info.exit_code for i in ids} == {"t0": 0, "t1": 1, "t2": 2}
    await client.wait_until(lambda: all(completions(events, i) for i in ids), TIMEOUT_S)
    await client.sync()
    assert {i: len(completions(events, i)) for i in ids} == dict.fromkeys(ids, 1)
