"""Fake nodes in real containers: three agent containers built from the project's Dockerfile run the
JobPrepRelease sample, each in its own node root; a killed container goes offline through its last will."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from itertools import takewhile

import pytest

from node_agent.brokers import BrokerHandle
from node_agent.client.pool import BatchClient
from node_agent.sample import run_sample
from node_agent.wire.status import NodeStateName
from tests.containers.podman import apodman

pytestmark = pytest.mark.containers
TIMEOUT_S = 120.0


class Containers:
    """Agent containers this test started (by name), removed at teardown."""

    def __init__(self, image: str, broker: BrokerHandle, prefix: str) -> None:
        self.image, self.broker, self.prefix = image, broker, prefix
        self.names: list[str] = []

    async def start(self, node_id: str) -> str:
        name = f"node-agent-test-{uuid.uuid4().hex[:8]}-{node_id}"
        self.names.append(name)
        status, output = await apodman(
            "run", "-d", "--name", name, "--network", "host",
            "-e", f"NODE_AGENT_BROKER_URL=mqtt://127.0.0.1:{self.broker.port}",
            "-e", f"NODE_AGENT_TOPIC_PREFIX={self.prefix}",
            "-e", f"NODE_AGENT_NODE_ID={node_id}",
            "-e", "NODE_AGENT_POOL_ID=containers",
            "-e", "NODE_AGENT_TASK_SLOTS=2",
            self.image,
        )  # fmt: skip
        assert status == 0, output
        return name

    async def close(self) -> None:
        for name in self.names:
            await apodman("rm", "-f", "-t", "0", name)


@pytest.fixture
async def containers(
    agent_image: str, mqtt_broker: BrokerHandle, batch_client: BatchClient
) -> AsyncIterator[Containers]:
    started = Containers(agent_image, mqtt_broker, batch_client.topics.prefix)
    try:
        yield started
    finally:
        await started.close()


def contents_by_node(lines: list[str]) -> dict[str, list[str]]:
    """The sample's "Contents of shared/... on nodeX:" blocks: the node id the file names, then its task ids."""
    blocks: dict[str, list[str]] = {}
    for number, line in enumerate(lines):
        if line.startswith("Contents of shared/"):
            node_id = line.rsplit(" on ", 1)[1].rstrip(":")
            header = lines[number + 2]  # "<node id written by the preparation> tasks:"
            body = list(takewhile(lambda item: item.startswith("  "), lines[number + 3 :]))
            blocks[node_id] = [header.removesuffix(" tasks:"), *(item.strip() for item in body)]
    return blocks


async def test_sample_runs_on_container_nodes_each_with_its_own_root(
    containers: Containers, batch_client: BatchClient
) -> None:
    node_ids = ["cnode1", "cnode2", "cnode3"]
    names = {node_id: await containers.start(node_id) for node_id in node_ids}
    await batch_client.wait_for_nodes(node_ids, timeout_s=TIMEOUT_S)
    lines: list[str] = []

    codes = await run_sample(batch_client, node_ids, lines.append, task_count=9, timeout_s=TIMEOUT_S)

    assert len(codes) >= 2, lines  # least-loaded placement spreads nine tasks over the nodes
    assert all(code == (0, 0) for code in codes.values()), codes
    blocks = contents_by_node(lines)
    assert set(blocks) == set(codes)
    for node_id, (written_by, *task_ids) in blocks.items():
        assert written_by == node_id  # the preparation on this container wrote it, in this container's root
        assert task_ids and len(set(task_ids)) == len(task_ids)
    assert sorted(task for _, *tasks in blocks.values() for task in tasks) == [f"task{n:03d}" for n in range(1, 10)]

    status, output = await apodman("kill", names["cnode2"])
    assert status == 0, output
    offline = await batch_client.wait_until(
        lambda: next(
            (n for n in batch_client.list_nodes() if n.node_id == "cnode2" and n.state == NodeStateName.OFFLINE), None
        ),
        timeout_s=TIMEOUT_S,
    )
    assert offline.node_id == "cnode2"
    assert {n.node_id: n.state for n in batch_client.list_nodes()}["cnode1"] != NodeStateName.OFFLINE
