"""Helpers of the node lifecycle tests (start task, scheduling, reboot): gated tasks and waits over the wire."""

from __future__ import annotations

from collections.abc import Callable

from node_agent.client.pool import BatchClient
from node_agent.testing.nodes import FakeNode
from node_agent.wire.status import Event, NodeState, Task, TaskState

TIMEOUT_S = 20.0
SHARED = '"$AZ_BATCH_NODE_SHARED_DIR"'
# Holds until the test creates shared/go on the node: the test waits on a retained state, then opens it.
GATE = f"while [ ! -e {SHARED}/go ]; do sleep 0.05; done"


def sh(script: str) -> str:
    """A command line running ``script`` (no single quotes in it) through /bin/sh, as Azure Batch users do."""
    assert "'" not in script
    return f"/bin/sh -c '{script}'"


def open_gate(node: FakeNode) -> None:
    (node.root / "shared" / "go").touch()


async def task_in(client: BatchClient, job_id: str, task_id: str, state: TaskState) -> Task:
    """The task's retained state once it is ``state``."""

    def reached() -> Task | None:
        task = client.view.tasks.get((job_id, task_id))
        return task if task is not None and task.state == state else None

    return await client.wait_until(reached, TIMEOUT_S)


async def node_state(
    client: BatchClient, node: FakeNode, *, check: Callable[[NodeState], bool] = lambda state: True
) -> NodeState:
    """The node's retained state published by its current run, once ``check`` accepts it."""

    def reached() -> NodeState | None:
        state = client.view.nodes.get(node.node_id)
        ok = state is not None and state.last_heartbeat >= node.started_at and check(state)
        return state if ok else None

    return await client.wait_until(reached, TIMEOUT_S)


class Events:
    """Every event the client receives from now on."""

    def __init__(self, client: BatchClient) -> None:
        self.client = client
        self.seen: list[Event] = []
        client.on_event = self.seen.append

    async def wait_for(self, kind: str, **fields: object) -> Event:
        def found() -> Event | None:
            for event in self.seen:
                if event.type == kind and all(getattr(event, name) == value for name, value in fields.items()):
                    return event
            return None

        return await self.client.wait_until(found, TIMEOUT_S)
