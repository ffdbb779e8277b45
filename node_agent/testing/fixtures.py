"""The pytest fixtures of node-agent's plugin: session brokers (plain, secured or a NATS cluster), a BatchClient,
a pool of nodes; and the ``every_broker`` marker, which runs a test once per broker kind."""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Protocol

import pytest
import pytest_asyncio

from node_agent.brokers import BrokerHandle, BrokerSecurity, BrokerToolMissing, running_broker
from node_agent.client.pool import BatchClient
from node_agent.nats_cluster import NatsCluster, running_nats_cluster
from node_agent.testing.nodes import NodePool, fresh_prefix

COMMAND_TIMEOUT_S = 20.0
BROKER_KINDS = ("mosquitto", "nats-cluster")
BROKER_ENV = "NODE_AGENT_TEST_BROKER"  # the kind of ``mqtt_broker`` for tests without the every_broker marker


def default_broker_kind() -> str:
    kind = os.environ.get(BROKER_ENV, "mosquitto")
    if kind not in BROKER_KINDS:
        raise pytest.UsageError(f"{BROKER_ENV}={kind!r} is not a broker kind: use one of {', '.join(BROKER_KINDS)}")
    return kind


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "every_broker: run the test once per broker kind (mosquitto, nats-cluster) through mqtt_broker"
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Tests marked ``every_broker`` that use ``mqtt_broker`` run once per kind: ``test_x[mosquitto]``, ..."""
    if metafunc.definition.get_closest_marker("every_broker") and "mqtt_broker" in metafunc.fixturenames:
        metafunc.parametrize("mqtt_broker", BROKER_KINDS, indirect=True, scope="session")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under pytest-xdist (``--dist loadgroup``) the tests on the NATS cluster go to one worker: the session's
    cluster is then started once, not once per worker."""
    if not config.pluginmanager.hasplugin("xdist"):
        return
    for item in items:
        callspec = getattr(item, "callspec", None)
        if callspec is not None and callspec.params.get("mqtt_broker") == "nats-cluster":
            item.add_marker(pytest.mark.xdist_group("nats-cluster"))


class BrokerFactory(Protocol):
    """What ``mqtt_broker_factory`` gives: call it to start a Mosquitto with the given security."""

    def __call__(self, security: BrokerSecurity | None = None) -> BrokerHandle: ...


@pytest.fixture(scope="session")
def mosquitto_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerHandle]:
    """A Mosquitto on a free loopback port (the embedded amqtt broker where no binary exists), one per session."""
    with running_broker(tmp_path_factory.mktemp("broker")) as broker:
        yield broker


@pytest.fixture(scope="session")
def nats_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsCluster]:
    """A 3-node NATS cluster (routes, JetStream, an MQTT listener each) on free loopback ports, one per session.

    Tests that use it are skipped, with the reason, where nats-server is not installed.
    """
    with contextlib.ExitStack() as stack:
        try:
            cluster = stack.enter_context(running_nats_cluster(tmp_path_factory.mktemp("nats")))
        except BrokerToolMissing as exc:
            pytest.skip(str(exc))
        yield cluster


@pytest.fixture(scope="session")
def mqtt_broker(request: pytest.FixtureRequest) -> BrokerHandle:
    """The session's broker: ``mosquitto_broker``, or ``nats_cluster``'s handle (``url`` lists its three nodes).

    The kind is the ``every_broker`` parameter, else ``NODE_AGENT_TEST_BROKER`` (default ``mosquitto``).
    """
    kind = getattr(request, "param", None) or default_broker_kind()
    if kind == "nats-cluster":
        cluster: NatsCluster = request.getfixturevalue("nats_cluster")
        return cluster.handle
    broker: BrokerHandle = request.getfixturevalue("mosquitto_broker")
    return broker


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
