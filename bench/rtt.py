"""MQTT QoS 1 round trip through a throw-away Mosquitto or 3-node NATS cluster, on loopback.

    python bench/rtt.py [--count 500] [--broker mosquitto|nats-cluster|both]

Mosquitto: p50/p99 in milliseconds with and without TCP_NODELAY on the client, and their ratio (the broker side
always has set_tcp_nodelay true, as config/mosquitto.conf and node_agent/brokers.py set it).
NATS cluster: with TCP_NODELAY, publisher and subscriber on the same node, then on two different nodes (the
message crosses a cluster route). ``both`` runs the two brokers one after the other and prints them side by side,
with each NATS figure as a ratio of Mosquitto's.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import tempfile
import time
from pathlib import Path

import aiomqtt

from node_agent.brokers import running_broker
from node_agent.nats_cluster import running_nats_cluster
from node_agent.transport.mqtt import NODELAY

Figures = dict[str, tuple[float, float]]  # what was measured -> (p50, p99) in ms


async def round_trips(pub_port: int, count: int, nodelay: bool, sub_port: int | None = None) -> list[float]:
    """Publish QoS 1 on one connection, receive it on another (or the same); time publish -> delivery."""
    options = [NODELAY] if nodelay else []
    async with contextlib.AsyncExitStack() as stack:
        publisher = await stack.enter_async_context(aiomqtt.Client("127.0.0.1", pub_port, socket_options=options))
        subscriber = publisher
        if sub_port is not None:
            subscriber = await stack.enter_async_context(aiomqtt.Client("127.0.0.1", sub_port, socket_options=options))
        await subscriber.subscribe("bench/rtt", qos=1)
        samples = []
        messages = subscriber.messages
        for number in range(count):
            start = time.perf_counter()
            await publisher.publish("bench/rtt", str(number).encode(), qos=1)
            await anext(aiter(messages))
            samples.append((time.perf_counter() - start) * 1000)
    return samples


def summary(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered), ordered[int(len(ordered) * 0.99) - 1]


async def mosquitto(count: int) -> Figures:
    with tempfile.TemporaryDirectory() as tmp, running_broker(Path(tmp), kind="mosquitto") as broker:
        await round_trips(broker.port, 50, True)  # warm-up
        return {
            "mosquitto, TCP_NODELAY on": summary(await round_trips(broker.port, count, True)),
            "mosquitto, TCP_NODELAY off": summary(await round_trips(broker.port, count, False)),
        }


async def nats_cluster(count: int) -> Figures:
    with tempfile.TemporaryDirectory() as tmp, running_nats_cluster(Path(tmp)) as cluster:
        first, second = cluster.handle.ports[:2]
        await round_trips(first, 50, True)  # warm-up
        return {
            "nats-cluster, same node": summary(await round_trips(first, count, True)),
            "nats-cluster, across nodes": summary(await round_trips(first, count, True, sub_port=second)),
        }


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=500)
    parser.add_argument("--broker", choices=("mosquitto", "nats-cluster", "both"), default="mosquitto")
    args = parser.parse_args()
    figures: Figures = {}
    if args.broker in ("mosquitto", "both"):
        figures.update(await mosquitto(args.count))
    if args.broker in ("nats-cluster", "both"):
        figures.update(await nats_cluster(args.count))
    baseline = figures.get("mosquitto, TCP_NODELAY on")
    print(f"QoS 1 round trip over {args.count} messages (ms)")
    for name, (p50, p99) in figures.items():
        ratio = f"  {p50 / baseline[0]:6.1f}x p50 of mosquitto" if baseline else ""
        print(f"  {name:28}: p50 {p50:7.3f}  p99 {p99:7.3f}{ratio}")


if __name__ == "__main__":
    asyncio.run(main())
