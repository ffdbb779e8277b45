"""The pytest fixtures of node-agent's plugin: session brokers (plain or secured), a BatchClient, a pool of nodes."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Protocol

import pytest
import pytest_asyncio

from node_agent.brokers import BrokerHandle, BrokerSecurity, BrokerToolMissing, running_broker
from node_agent.client.pool import BatchClient
from node_agent.testing.nodes import NodePool, fresh_prefix

COMMAND_TIMEOUT_S = 20.0


class BrokerFactory(Protocol):
    """What ``mqtt_broker_factory`` gives: call it to start a Mosquitto with the given security."""

    def __call__(self, security: BrokerSecurity | None = None) -> BrokerHandle: ...


@pytest.fixture(scope="session")
def mqtt_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerHandle]:
    """A Mosquitto on a free loopback port (the embedded amqtt broker where no binary exists), one per session."""
    with running_broker(tmp_path_factory.mktemp("broker")) as broker:
        yield broker


@pytest.fixture(scope="session")
def mqtt_broker_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerFactory]:
    """``broker = mqtt_broker_factory(BrokerSecurity(users=..., acl=..., tls=...))``: a Mosquitto of its own.

    Each call starts a new broker on a free loopback port; all of them stop when the session ends. A test that
    calls it is skipped, with the reason, when mosquitto (or mosquitto_passwd, or openssl for TLS) is missing.
    """
    with contextlib.ExitStack() as brokers:

        def make(security: BrokerSecurity | None = None) -> BrokerHandle:
            workdir = tmp_path_factory.mktemp("broker")
            try:
                return brokers.enter_context(running_broker(workdir, kind="mosquitto", security=security))
            except BrokerToolMissing as exc:
                pytest.skip(str(exc))

        yield make


@pytest_asyncio.fixture
async def batch_client(mqtt_broker: BrokerHandle) -> AsyncIterator[BatchClient]:
    """A BatchClient on the session broker, on a topic prefix of its own: the one ``node_pool`` uses."""
    async with BatchClient(mqtt_broker.url, topic_prefix=fresh_prefix(), command_timeout_s=COMMAND_TIMEOUT_S) as client:
        yield client


@pytest_asyncio.fixture
async def node_pool(mqtt_broker: BrokerHandle, batch_client: BatchClient, tmp_path: Path) -> AsyncIterator[NodePool]:
    """``nodes = await node_pool(n=3, task_slots=2, env={...})``: FakeNodes, started and idle.

    Every process the pool started is ended at teardown, whether the test passed or not.
    """
    async with NodePool(mqtt_broker, batch_client, tmp_path / "nodes") as pool:
        yield pool
