"""Our tests' short names over node-agent's pytest plugin (node_agent/testing), and helpers that read over the wire.

The broker, the client and the pool are the plugin's ``mqtt_broker``, ``batch_client`` and ``node_pool``;
``client`` and ``pool`` only spare the test files a rename.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from node_agent.brokers import BrokerHandle
from node_agent.client.pool import BatchClient, CommandError
from node_agent.localpool import make_searchable
from node_agent.testing.nodes import FakeNode, NodePool, wait_ready
from tests.raw_mqtt import RawMqtt

_BASETEMP_PARENT = pytest.StashKey[Path]()

__all__ = ["count_lines", "restart", "wait_ready"]


def pytest_configure(config: pytest.Config) -> None:
    """As root, temporary directories live in a directory of this run that other users may search (0711).

    pytest's own /tmp/pytest-of-root is 0700, and every pytest session on the machine sets it back to 0700, so
    task users (tasks run as them when the agent is root) could not reach node roots or tmp_path below it.
    """
    if os.geteuid() != 0 or config.option.basetemp or hasattr(config, "workerinput"):
        return
    parent = Path(tempfile.mkdtemp(prefix="node-agent-tests-"))
    parent.chmod(0o711)
    config.option.basetemp = str(parent / "basetemp")
    config.stash[_BASETEMP_PARENT] = parent


def pytest_unconfigure(config: pytest.Config) -> None:
    parent = config.stash.get(_BASETEMP_PARENT, None)
    if parent is not None:
        shutil.rmtree(parent, ignore_errors=True)


@pytest.fixture(autouse=True)
def _tmp_path_open_to_task_users(request: pytest.FixtureRequest) -> None:
    """As root, tasks run as unprivileged task users: a test's tmp_path (where tasks leave pid files and the
    like) is made reachable and writable for them, as /tmp is (sticky bit)."""
    if os.geteuid() != 0 or "tmp_path" not in request.fixturenames:
        return
    tmp_path: Path = request.getfixturevalue("tmp_path")
    make_searchable(tmp_path)
    tmp_path.chmod(0o1777)


SUMMARY = "summary"  # a user property a test records (``record_property(SUMMARY, text)``) to be printed at the end
_summaries: list[str] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Collect the summaries tests recorded (``record_property(SUMMARY, ...)``)."""
    if report.when == "call":
        _summaries.extend(str(value) for name, value in report.user_properties if name == SUMMARY)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Print what tests recorded as their summary (the hostile input count, the soak's figures), which pytest
    would otherwise show only with ``-s``."""
    for text in _summaries:
        terminalreporter.write_line(text)


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
