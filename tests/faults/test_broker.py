"""The broker stopped and started again (Mosquitto with persistence) while tasks finish: every result arrives,
none twice; and an agent killed during the outage still delivers what it held (durable outbox)."""

from __future__ import annotations

import contextlib
from pathlib import Path

from node_agent.brokers import free_port, running_broker
from node_agent.client.pool import BatchClient
from node_agent.testing.nodes import NodePool, fresh_prefix
from node_agent.wire.specs import Job, TaskSpec
from node_agent.wire.status import Event, TaskState
from tests.conftest import count_lines
from tests.faults.conftest import TIMEOUT_S, completions, counted, is_completed

WAIT_FOR_GO = "while [ ! -e $AZ_BATCH_NODE_SHARED_DIR/go ]; do sleep 0.05; done; exit {code}"
TASKS = 6


async def test_results_finished_during_a_broker_restart_arrive_once(tmp_path: Path) -> None:
    port = free_port()
    store = tmp_path / "broker-store"
    store.mkdir()
    with contextlib.ExitStack() as stack:
        broker = stack.enter_context(running_broker(tmp_path / "b1", kind="mosquitto", port=port, persistence=store))
        async with (
            BatchClient(broker.url, topic_prefix=fresh_prefix(), command_timeout_s=20) as client,
            NodePool(broker, client, tmp_path / "nodes") as pool,
        ):
            events: list[Event] = []
            client.on_event = events.append
            nodes = await pool(2, task_slots=TASKS // 2)
            await client.create_job(Job(id="j1"))
            ids = [f"t{i}" for i in range(TASKS)]
            for i, task_id in enumerate(ids):
                command = counted(task_id, WAIT_FOR_GO.format(code=i))
                await client.add_task("j1", TaskSpec(id=task_id, command_line=command))
            await client.wait_until(
                lambda: all((t := client.view.tasks.get(("j1", i))) and t.state == TaskState.RUNNING for i in ids),
                TIMEOUT_S,
            )
            stack.close()  # SIGTERM: Mosquitto saves its store and stops
            for node in nodes:
                (node.root / "shared" / "go").touch()  # every task ends while the broker is away
            await nodes[0].kill()  # and one agent dies with its results in its outbox
            stack.enter_context(running_broker(tmp_path / "b2", kind="mosquitto", port=port, persistence=store))
            await nodes[0].start()

            await client.wait_until(lambda: all(is_completed(client, "j1", i) for i in ids), TIMEOUT_S)
            codes = {i: client.view.tasks[("j1", i)].execution_info.exit_code for i in ids}
            assert codes == {f"t{i}": i for i in range(TASKS)}
            await client.sync()
            assert all(len(completions(events, i)) <= 1 for i in ids)  # events of the outage may miss the client
            for task_id in ids:
                node_id = client.view.tasks[("j1", task_id)].node_info.node_id  # type: ignore[union-attr]
                assert await count_lines(client, node_id, f"shared/{task_id}") == 1
