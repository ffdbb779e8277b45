"""Node operations of the client library: scheduling, drain, reboot and reimage, and the pool's start task."""

from __future__ import annotations

from collections.abc import Collection
from typing import TYPE_CHECKING, Any

from node_agent.wire.commands import RebootOption, SchedulingOption
from node_agent.wire.specs import Pool, StartTask
from node_agent.wire.status import NodeState, NodeStateName

if TYPE_CHECKING:
    from node_agent.client.pool import BatchClient

DRAIN_TIMEOUT_S = 3600.0


class NodeOperations:
    """``client.nodes``: what an operator does to a node or a pool (Azure Batch's ComputeNode operations)."""

    def __init__(self, client: BatchClient) -> None:
        self._client = client

    async def disable_scheduling(self, node_id: str, option: SchedulingOption = "requeue") -> dict[str, Any]:
        """The node takes no new task; ``requeue`` hands back, ``terminate`` ends, ``taskcompletion`` keeps the
        tasks it holds. Returns once the option has been applied."""
        body = {"type": "disableScheduling", "nodeDisableSchedulingOption": option}
        return dict(await self._client.command(node_id, body))

    async def enable_scheduling(self, node_id: str) -> dict[str, Any]:
        return dict(await self._client.command(node_id, {"type": "enableScheduling"}))

    async def drain(self, node_id: str, *, timeout_s: float = DRAIN_TIMEOUT_S) -> dict[str, Any]:
        """Disable scheduling (taskcompletion) and wait until the node holds no unfinished task."""
        return dict(await self._client.command(node_id, {"type": "drain"}, timeout_s=timeout_s))

    async def reboot(self, node_id: str, option: RebootOption = "requeue") -> dict[str, Any]:
        """Ask the node to reboot (refused unless its agent allows it); returns once it is under way."""
        return dict(await self._client.command(node_id, {"type": "reboot", "nodeRebootOption": option}))

    async def reimage(self, node_id: str, option: RebootOption = "requeue") -> dict[str, Any]:
        """Ask the node to reimage: a reboot after which its node root and job memory are gone."""
        return dict(await self._client.command(node_id, {"type": "reimage", "nodeReimageOption": option}))

    async def wait_for_state(
        self, node_id: str, states: Collection[NodeStateName], *, timeout_s: float = 30
    ) -> NodeState:
        """Wait until the node's retained state is one of ``states``."""

        def reached() -> NodeState | None:
            state = self._client.view.nodes.get(node_id)
            return state if state is not None and state.state in states else None

        return await self._client.wait_until(reached, timeout_s)

    def get_pool(self, pool_id: str) -> Pool | None:
        return self._client.view.pools.get(pool_id)

    async def set_start_task(self, pool_id: str, start_task: StartTask | None) -> Pool:
        """Publish the pool document with this start task (None removes it). Nodes run it when they join the pool
        or reboot; a node's own ``start_task`` setting wins over it."""
        pool = (self.get_pool(pool_id) or Pool(id=pool_id)).model_copy(update={"start_task": start_task})
        self._client.view.pools[pool_id] = pool
        await self._client.publish_retained(self._client.topics.pool(pool_id), pool.to_json())
        return pool
