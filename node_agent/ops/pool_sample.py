"""The JobPrepRelease sample on whichever nodes a pool has (their ids are not known in advance under --scale)."""

from __future__ import annotations

import os
import sys

from node_agent.client.pool import BatchClient
from node_agent.sample import Print, run_sample
from node_agent.wire.status import NodeStateName


async def run_on_pool(count: int, timeout_s: float, out: Print) -> dict[str, tuple[int | None, int | None]]:
    """Wait for ``count`` idle nodes (broker and prefix from NODE_AGENT_BROKER_URL/_TOPIC_PREFIX), run the sample."""
    url = os.environ.get("NODE_AGENT_BROKER_URL", "mqtt://127.0.0.1:1883")
    prefix = os.environ.get("NODE_AGENT_TOPIC_PREFIX", "batch")
    async with BatchClient(url, topic_prefix=prefix) as client:

        def idle() -> list[str] | None:
            ready = sorted(node.node_id for node in client.list_nodes() if node.state == NodeStateName.IDLE)
            return ready[:count] if len(ready) >= count else None

        node_ids = await client.wait_until(idle, timeout_s=timeout_s)
        return await run_sample(client, node_ids, out, lambda line: print(line, file=sys.stderr))
