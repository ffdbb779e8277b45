"""Agents and clients against a Mosquitto with passwords, an ACL or TLS (the plugin's mqtt_broker_factory)."""

from __future__ import annotations

import asyncio
import gc
import uuid
from pathlib import Path

import aiomqtt
import pytest

from node_agent.brokers import BrokerHandle, BrokerSecurity
from node_agent.client.pool import BatchClient
from node_agent.testing.fixtures import BrokerFactory
from node_agent.testing.nodes import NodePool, fresh_prefix
from node_agent.wire.specs import Job, TaskSpec
from node_agent.wire.status import TaskResult

TIMEOUT_S = 20.0
REFUSED_WITHIN_S = 1.0  # how long a client that cannot connect keeps trying before __aenter__ gives up

USERS = {"scheduler": "sched-pw", "node1": "node1:pw@"}  # ':' and '@' must survive the URL

# What an agent logged in as node1 needs, and nothing of node2's (docs/operations.md lists the topics).
ACL = """\
user scheduler
topic readwrite {p}/#

user node1
topic read {p}/nodes/node1/commands
topic read {p}/jobs/+
topic write {p}/nodes/node1/state
topic write {p}/nodes/node1/events
topic write {p}/jobs/+/tasks/+
topic write {p}/jobs/+/nodes/node1
topic write {p}/clients/+/replies
"""


async def run_a_task(client: BatchClient) -> None:
    await client.create_job(Job(id="j1"))
    await client.add_task("j1", TaskSpec(id="t1", command_line="/bin/sh -c 'echo hi'"), node_id="node1")
    [task] = await client.wait_for_tasks("j1", ["t1"], timeout_s=TIMEOUT_S)
    assert task.execution_info.result == TaskResult.SUCCESS


async def cannot_connect(url: str, tls_ca_file: Path | None = None) -> None:
    with pytest.raises(ConnectionError):
        async with BatchClient(url, command_timeout_s=REFUSED_WITHIN_S, tls_ca_file=tls_ca_file):
            pass


async def test_password_broker_admits_the_right_login_only(mqtt_broker_factory: BrokerFactory, tmp_path: Path) -> None:
    broker = mqtt_broker_factory(BrokerSecurity(users=USERS))
    url = broker.url_for("scheduler", USERS["scheduler"])
    async with BatchClient(url, topic_prefix=fresh_prefix(), command_timeout_s=TIMEOUT_S) as client:
        async with NodePool(broker, client, tmp_path) as pool:
            [node] = await pool(username="node1", password=USERS["node1"])
            await run_a_task(client)
            assert USERS["node1"] not in node.log_file.read_text()  # the agent never logs its password
    await asyncio.gather(
        cannot_connect(broker.url_for("scheduler", "wrong")),
        cannot_connect(broker.url),  # anonymous
    )


async def test_acl_keeps_another_nodes_commands_from_node1(mqtt_broker_factory: BrokerFactory, tmp_path: Path) -> None:
    prefix = fresh_prefix()
    broker = mqtt_broker_factory(BrokerSecurity(users=USERS, acl=ACL.format(p=prefix)))
    url = broker.url_for("scheduler", USERS["scheduler"])
    async with BatchClient(url, topic_prefix=prefix, command_timeout_s=TIMEOUT_S) as client:
        async with NodePool(broker, client, tmp_path) as pool:
            await pool(username="node1", password=USERS["node1"])  # the ACL is enough for a real agent
            await run_a_task(client)

    own, other = f"{prefix}/nodes/node1/commands", f"{prefix}/nodes/node2/commands"
    async with login(broker, "node1") as spy, login(broker, "scheduler") as scheduler:
        await spy.subscribe(other, qos=1)  # granted or not, the ACL withholds every message on it
        await spy.subscribe(own, qos=1)
        await scheduler.publish(other, b"forbidden", qos=1)
        await scheduler.publish(own, b"marker", qos=1)  # same publisher, so it is delivered after "forbidden"
        async with asyncio.timeout(TIMEOUT_S):
            message = await anext(aiter(spy.messages))
    assert (message.topic.value, message.payload) == (own, b"marker")


def login(broker: BrokerHandle, username: str) -> aiomqtt.Client:
    return aiomqtt.Client(
        "127.0.0.1", broker.port, identifier=f"acl-{uuid.uuid4().hex}", username=username, password=USERS[username]
    )


# paho-mqtt 2.2 leaves the socket of a failed TLS handshake to the garbage collector (ResourceWarning).
@pytest.mark.filterwarnings("ignore:Exception ignored in. <ssl.SSLSocket:pytest.PytestUnraisableExceptionWarning")
async def test_tls_broker_is_reached_with_its_ca_only(mqtt_broker_factory: BrokerFactory, tmp_path: Path) -> None:
    broker = mqtt_broker_factory(BrokerSecurity(tls=True))
    assert broker.url.startswith("mqtts://") and broker.ca_file is not None
    async with BatchClient(
        broker.url, topic_prefix=fresh_prefix(), command_timeout_s=TIMEOUT_S, tls_ca_file=broker.ca_file
    ) as client:
        async with NodePool(broker, client, tmp_path) as pool:
            [node] = await pool()
            await run_a_task(client)
    assert "mqtts://" in (node.agent.env["NODE_AGENT_BROKER_URL"])
    await cannot_connect(broker.url)  # the system's CA certificates do not know the throw-away CA
    gc.collect()  # those sockets' warnings come out here, under this test's filter, not in a later test
