"""MQTT QoS 1 round trip through a throw-away Mosquitto, with and without TCP_NODELAY on the client.

    python bench/rtt.py [--count 500]

Prints p50/p99 in milliseconds for both socket settings and their ratio (the broker side always has
set_tcp_nodelay true, as config/mosquitto.conf and node_agent/brokers.py set it).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import aiomqtt

from node_agent.brokers import running_broker
from node_agent.transport.mqtt import NODELAY


async def round_trips(port: int, count: int, nodelay: bool) -> list[float]:
    """Publish QoS 1 to a topic this client subscribes to; time publish -> delivery."""
    options = [NODELAY] if nodelay else []
    async with aiomqtt.Client("127.0.0.1", port, socket_options=options) as client:
        await client.subscribe("bench/rtt", qos=1)
        samples = []
        messages = client.messages
        for number in range(count):
            start = time.perf_counter()
            await client.publish("bench/rtt", str(number).encode(), qos=1)
            await anext(aiter(messages))
            samples.append((time.perf_counter() - start) * 1000)
    return samples


def summary(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered), ordered[int(len(ordered) * 0.99) - 1]


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=500)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, running_broker(Path(tmp), kind="mosquitto") as broker:
        await round_trips(broker.port, 50, True)  # warm-up
        with_nodelay = summary(await round_trips(broker.port, args.count, True))
        without = summary(await round_trips(broker.port, args.count, False))
    print(f"QoS 1 round trip over {args.count} messages (ms)")
    print(f"  TCP_NODELAY on : p50 {with_nodelay[0]:7.3f}  p99 {with_nodelay[1]:7.3f}")
    print(f"  TCP_NODELAY off: p50 {without[0]:7.3f}  p99 {without[1]:7.3f}")
    print(f"  ratio off/on   : p50 {without[0] / with_nodelay[0]:7.1f}x p99 {without[1] / with_nodelay[1]:7.1f}x")


if __name__ == "__main__":
    asyncio.run(main())
