"""Per-node credentials on a NATS cluster: the users and permissions of config/nats-cluster/production.conf."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import aiomqtt
import pytest

from node_agent.brokers import HOST, broker_url
from node_agent.client.pool import BatchClient
from node_agent.nats_cluster import NatsCluster, agent_user, find_nats_server, running_nats_cluster, scheduler_user
from node_agent.testing.nodes import NodePool, fresh_prefix
from node_agent.transport.mqtt import is_refused
from node_agent.wire.specs import Job, TaskSpec
from node_agent.wire.status import TaskResult

pytestmark = pytest.mark.skipif(
    find_nats_server() is None, reason="nats-server is not installed (Debian: apt-get install nats-server)"
)
TIMEOUT_S = 30.0
PREFIX = fresh_prefix()
SCHEDULER = scheduler_user(PREFIX, "scheduler", "sched-pw")
NODE1 = agent_user(PREFIX, "node1", "node1-pw")


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[NatsCluster]:
    with running_nats_cluster(tmp_path / "nats", users=[SCHEDULER, NODE1]) as started:
        yield started


async def test_node1_runs_its_tasks_but_cannot_read_node2s_commands(cluster: NatsCluster, tmp_path: Path) -> None:
    ports = cluster.handle.ports
    urls = ",".join(broker_url(port, username=SCHEDULER.name, password=SCHEDULER.password) for port in ports)
    async with (
        BatchClient(urls, topic_prefix=PREFIX, command_timeout_s=TIMEOUT_S) as client,
        NodePool(cluster.handle, client, tmp_path / "nodes") as pool,
    ):
        # The login from settings (broker_username, broker_password_file) goes to every URL of the cluster's list;
        # the permissions are enough for an agent.
        secret = tmp_path / "node1.password"
        secret.write_text(NODE1.password + "\n")
        secret.chmod(0o600)
        login_env = {"NODE_AGENT_BROKER_USERNAME": NODE1.name, "NODE_AGENT_BROKER_PASSWORD_FILE": str(secret)}
        [node] = await pool(1, env=login_env)
        await client.create_job(Job(id="j1"))
        await client.add_task("j1", TaskSpec(id="t1", command_line="/bin/true"), node_id="node1")
        [task] = await client.wait_for_tasks("j1", ["t1"], timeout_s=TIMEOUT_S)
        assert task.execution_info.result == TaskResult.SUCCESS

        # Cut node1 off its first broker node: it logs in on the next one of its list with the same settings.
        first = node.broker_port_behind(client.view.nodes["node1"].broker)
        await node.proxies[0].partition()
        await client.wait_until(lambda: node.broker_port_behind(client.view.nodes["node1"].broker) != first, TIMEOUT_S)
        await client.add_task("j1", TaskSpec(id="t2", command_line="/bin/true"), node_id="node1")
        [task] = await client.wait_for_tasks("j1", ["t2"], timeout_s=TIMEOUT_S)
        assert task.execution_info.result == TaskResult.SUCCESS
        assert NODE1.password not in node.log_file.read_text()

    login = {"username": NODE1.name, "password": NODE1.password}
    # A NATS node answers a new session's CONNECT once JetStream has made its session stream: seconds when the
    # cluster is busy (once over aiomqtt's default 10 s in CI), so the spy waits longer.
    spy_client = aiomqtt.Client(HOST, ports[1], identifier=f"spy-{uuid.uuid4().hex}", timeout=60, **login)
    async with spy_client as spy:
        assert is_refused(await spy.subscribe(f"{PREFIX}/nodes/node2/commands", qos=1))
        assert is_refused(await spy.subscribe("$MQTT/sub/#", qos=1))  # nor other users' consumer inboxes
        assert not is_refused(await spy.subscribe(f"{PREFIX}/nodes/node1/commands", qos=1))
    with pytest.raises(aiomqtt.MqttError):
        async with aiomqtt.Client(HOST, ports[2], identifier=f"anon-{uuid.uuid4().hex}"):
            pass
