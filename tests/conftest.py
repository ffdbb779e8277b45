"""Our tests' short names over node-agent's pytest plugin (node_agent/testing), and helpers that read over the wire.

The broker, the client and the pool are the plugin's ``mqtt_broker``, ``batch_client`` and ``node_pool``;
``client`` and ``pool`` only spare the test files a rename.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from node_agent.brokers import BrokerHandle
from node_agent.client.pool import BatchClient, CommandError
from node_agent.testing.nodes import FakeNode, NodePool, wait_ready
from tests.raw_mqtt import RawMqtt

__all__ = ["count_lines", "restart", "wait_ready"]


@pytest.fixture
def client(batch_client: BatchClient) -> BatchClient:
    return batch_client


@pytest.fixture
def pool(node_pool: NodePool) -> NodePool:
    """``agents = await pool(n, task_slots=1, env={...})``: started and idle; all ended at teardown."""
    return node_pool


@pytest.fixture
async def raw(mqtt_broker: BrokerHandle, batch_client: BatchClient) -> AsyncIterator[RawMqtt]:
    """A plain MQTT client on the test's prefix (see tests/raw_mqtt.py)."""
    async with RawMqtt(mqtt_broker, batch_client.topics.prefix) as raw_client:
        yield raw_client


async def restart(node: FakeNode) -> None:
    """An agent restart on the same boot: stop, start, ready."""
    await node.stop()
    await node.start()


async def count_lines(client: BatchClient, node_id: str, path: str) -> int:
    """How many lines a counter file has on the node, read over the wire (0 if it does not exist)."""
    try:
        return len((await client.get_file(node_id, path)).splitlines())
    except CommandError as exc:
        if exc.code == "FileNotFound":
            return 0
        raise
