"""Shared fixtures: one real broker per session, a fresh topic prefix per test, real agent processes."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from pathlib import Path

import pytest

from node_agent.brokers import BrokerHandle, running_broker
from node_agent.client.pool import BatchClient, CommandError
from node_agent.localpool import LocalAgent, make_agents
from tests.raw_mqtt import RawMqtt

READY_TIMEOUT_S = 20.0


@pytest.fixture(scope="session")
def mqtt_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerHandle]:
    """A Mosquitto on a free loopback port (the embedded broker only where no binary exists)."""
    with running_broker(tmp_path_factory.mktemp("broker")) as broker:
        yield broker


@pytest.fixture
def prefix() -> str:
    return f"t{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def client(mqtt_broker: BrokerHandle, prefix: str) -> AsyncIterator[BatchClient]:
    async with BatchClient(mqtt_broker.url, topic_prefix=prefix, command_timeout_s=20) as batch_client:
        yield batch_client


@pytest.fixture
async def raw(mqtt_broker: BrokerHandle, prefix: str) -> AsyncIterator[RawMqtt]:
    """A plain MQTT client on the test's prefix (see tests/raw_mqtt.py)."""
    async with RawMqtt(mqtt_broker, prefix) as raw_client:
        yield raw_client


StartPool = Callable[..., Awaitable[list[LocalAgent]]]


@pytest.fixture
async def pool(mqtt_broker: BrokerHandle, prefix: str, tmp_path: Path, client: BatchClient) -> AsyncIterator[StartPool]:
    """``agents = await pool(n, task_slots=1, env={...})``: started and idle; all stopped at teardown."""
    started: list[LocalAgent] = []

    async def start(count: int = 1, *, task_slots: int = 1, env: Mapping[str, str] | None = None) -> list[LocalAgent]:
        agents = make_agents(
            mqtt_broker.url,
            prefix,
            tmp_path / "nodes",
            count,
            task_slots=task_slots,
            extra=env,
            first=len(started) + 1,
        )
        started.extend(agents)
        await asyncio.gather(*(agent.start() for agent in agents))
        await wait_ready(client, agents)
        return agents

    yield start
    await asyncio.gather(*(agent.stop() for agent in started))


async def wait_ready(client: BatchClient, agents: list[LocalAgent]) -> None:
    """Wait for each agent's retained state to say idle, published by this run of the process."""
    since = min(agent.started_at for agent in agents)
    try:
        await client.wait_for_nodes([a.node_id for a in agents], timeout_s=READY_TIMEOUT_S, since=since)
    except TimeoutError:
        logs = "\n".join(f"--- {a.node_id}\n{a.log_file.read_text()[-3000:]}" for a in agents)
        raise AssertionError(f"agents not ready in {READY_TIMEOUT_S} s:\n{logs}") from None


async def restart(client: BatchClient, agent: LocalAgent) -> None:
    await agent.stop()
    await agent.start()
    await wait_ready(client, [agent])


async def count_lines(client: BatchClient, node_id: str, path: str) -> int:
    """How many lines a counter file has on the node, read over the wire (0 if it does not exist)."""
    try:
        return len((await client.get_file(node_id, path)).splitlines())
    except CommandError as exc:
        if exc.code == "FileNotFound":
            return 0
        raise
