"""How long node_pool takes to hand a test ready nodes: 1 node (the baseline) and 3 nodes, through a Mosquitto
or a 3-node NATS cluster (where each agent's first connect creates its persistent session's JetStream consumers).

    python bench/pool_start.py [--rounds 5] [--broker mosquitto|nats-cluster]

Prints the median and worst time until every node's retained state says idle, and the 3-node/1-node ratio.
Each round is a fresh pool on a fresh topic prefix, torn down as the fixture does it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import tempfile
import time
from pathlib import Path

from node_agent.brokers import BrokerHandle, running_broker
from node_agent.client.pool import BatchClient
from node_agent.nats_cluster import running_nats_cluster
from node_agent.testing.nodes import NodePool, fresh_prefix


async def time_pool(broker: BrokerHandle, base: Path, count: int) -> float:
    async with (
        BatchClient(broker.url, topic_prefix=fresh_prefix()) as client,
        NodePool(broker, client, base) as pool,
    ):
        start = time.perf_counter()
        await pool(n=count)
        return time.perf_counter() - start


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--broker", choices=("mosquitto", "nats-cluster"), default="mosquitto")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        if args.broker == "mosquitto":
            broker = stack.enter_context(running_broker(Path(tmp) / "broker", kind="mosquitto"))
        else:
            broker = stack.enter_context(running_nats_cluster(Path(tmp) / "nats")).handle
        await time_pool(broker, Path(tmp) / "warm-up", 1)
        one = [await time_pool(broker, Path(tmp) / f"one{r}", 1) for r in range(args.rounds)]
        three = [await time_pool(broker, Path(tmp) / f"three{r}", 3) for r in range(args.rounds)]
    print(f"node_pool start until ready on {args.broker}, {args.rounds} rounds (s)")
    print(f"  1 node : median {statistics.median(one):6.3f}  worst {max(one):6.3f}")
    print(f"  3 nodes: median {statistics.median(three):6.3f}  worst {max(three):6.3f}")
    print(f"  ratio 3/1: {statistics.median(three) / statistics.median(one):5.2f}x")


if __name__ == "__main__":
    asyncio.run(main())
