"""The shipped Mosquitto ACL (config/mosquitto.acl) on a test-started broker: what one node's login can do.

Nodes log in with their node id as username (the ACL's %u patterns) and the password in a file
(broker_password_file); the client has its own role (user scheduler). With TLS and client certificates the
certificate's common name is the username, and the same ACL holds.
"""

from __future__ import annotations

import asyncio
import gc
import os
import re
import shutil
import uuid
from pathlib import Path

import aiomqtt
import pytest

from node_agent.brokers import BrokerHandle, BrokerSecurity, broker_url, find_mosquitto, free_port, secure_config
from node_agent.client.pool import BatchClient
from node_agent.testing.fixtures import BrokerFactory
from node_agent.testing.nodes import NodePool, fresh_prefix
from node_agent.wire.specs import Job, TaskSpec
from node_agent.wire.status import TaskResult

TIMEOUT_S = 20.0
REFUSED_WITHIN_S = 1.0
SHIPPED_ACL = Path(__file__).resolve().parents[2] / "config" / "mosquitto.acl"
USERS = {"scheduler": "sched-pw", "node1": "pw-of-node1", "node2": "pw-of-node2"}


def shipped_acl(prefix: str) -> str:
    return SHIPPED_ACL.read_text().replace("batch/", f"{prefix}/")


def password_file(tmp_path: Path, node_id: str) -> dict[str, str]:
    path = tmp_path / f"{node_id}.password"
    path.write_text(USERS[node_id] + "\n")
    path.chmod(0o600)
    return {"NODE_AGENT_BROKER_USERNAME": node_id, "NODE_AGENT_BROKER_PASSWORD_FILE": str(path)}


async def run_a_task(client: BatchClient) -> None:
    await client.create_job(Job(id="j1"))
    await client.add_task("j1", TaskSpec(id="t1", command_line="/bin/sh -c 'echo hi'"), node_id="node1")
    [task] = await client.wait_for_tasks("j1", ["t1"], timeout_s=TIMEOUT_S)
    assert task.execution_info.result == TaskResult.SUCCESS


def login(broker: BrokerHandle, username: str) -> aiomqtt.Client:
    return aiomqtt.Client(
        "127.0.0.1", broker.port, identifier=f"acl-{uuid.uuid4().hex}", username=username, password=USERS[username]
    )


async def first_message(client: aiomqtt.Client) -> tuple[str, bytes]:
    async with asyncio.timeout(TIMEOUT_S):
        message = await anext(aiter(client.messages))
    payload = message.payload if isinstance(message.payload, bytes) else b""
    return message.topic.value, payload


async def test_shipped_acl_serves_a_real_agent_and_keeps_node1_off_node2(
    mqtt_broker_factory: BrokerFactory, tmp_path: Path
) -> None:
    prefix = fresh_prefix()
    broker = mqtt_broker_factory(BrokerSecurity(users=USERS, acl=shipped_acl(prefix)))
    url = broker.url_for("scheduler", USERS["scheduler"])
    async with BatchClient(url, topic_prefix=prefix, command_timeout_s=TIMEOUT_S) as client:
        async with NodePool(broker, client, tmp_path / "nodes") as pool:
            [node] = await pool(env=password_file(tmp_path, "node1"))  # the login from settings, not the URL
            await run_a_task(client)
            assert USERS["node1"] not in node.log_file.read_text()

    own, other = f"{prefix}/nodes/node1/commands", f"{prefix}/nodes/node2/commands"
    async with login(broker, "node1") as spy, login(broker, "scheduler") as scheduler:
        await spy.subscribe(other, qos=1)  # granted or not, the ACL withholds every message on it
        await spy.subscribe(own, qos=1)
        await scheduler.publish(other, b"forbidden", qos=1)
        await scheduler.publish(own, b"marker", qos=1)  # same publisher: delivered after "forbidden"
        assert await first_message(spy) == (own, b"marker")


async def test_node1_cannot_publish_node2_state_or_a_job_document(mqtt_broker_factory: BrokerFactory) -> None:
    prefix = fresh_prefix()
    broker = mqtt_broker_factory(BrokerSecurity(users=USERS, acl=shipped_acl(prefix)))
    forged = [f"{prefix}/nodes/node2/state", f"{prefix}/jobs/j1", f"{prefix}/nodes/node2/commands"]
    allowed = f"{prefix}/nodes/node1/state"
    async with login(broker, "scheduler") as watcher, login(broker, "node1") as node1:
        for topic in (*forged, allowed):
            await watcher.subscribe(topic, qos=1)
        for topic in forged:
            await node1.publish(topic, b"forged", qos=1)  # MQTT 3.1.1: acknowledged, then dropped by the ACL
        await node1.publish(allowed, b"own", qos=1)
        assert await first_message(watcher) == (allowed, b"own")


async def test_no_login_or_a_wrong_password_cannot_connect(mqtt_broker_factory: BrokerFactory) -> None:
    broker = mqtt_broker_factory(BrokerSecurity(users=USERS, acl=shipped_acl("batch")))
    for url in (broker.url, broker.url_for("node1", "wrong")):
        with pytest.raises(ConnectionError):
            async with BatchClient(url, command_timeout_s=REFUSED_WITHIN_S):
                pass


# paho-mqtt 2.2 leaves the socket of a failed TLS handshake to the garbage collector (ResourceWarning).
@pytest.mark.filterwarnings("ignore:Exception ignored in. <ssl.SSLSocket:pytest.PytestUnraisableExceptionWarning")
async def test_tls_client_certificates_work_end_to_end_and_are_required(
    mqtt_broker_factory: BrokerFactory, tmp_path: Path
) -> None:
    prefix = fresh_prefix()
    broker = mqtt_broker_factory(BrokerSecurity(tls=True, client_certificates=True, acl=shipped_acl(prefix)))
    scheduler_cert, scheduler_key = broker.client_certificate("scheduler")
    node_cert, node_key = broker.client_certificate("node1")  # CN = node id = the ACL's %u
    async with BatchClient(
        broker.url,
        topic_prefix=prefix,
        command_timeout_s=TIMEOUT_S,
        tls_ca_file=broker.ca_file,
        tls_cert_file=scheduler_cert,
        tls_key_file=scheduler_key,
    ) as client:
        async with NodePool(broker, client, tmp_path / "nodes") as pool:
            env = {"NODE_AGENT_TLS_CERT_FILE": str(node_cert), "NODE_AGENT_TLS_KEY_FILE": str(node_key)}
            await pool(env=env)
            await run_a_task(client)

    with pytest.raises(ConnectionError):  # the CA is trusted, but no certificate is presented
        async with BatchClient(broker.url, command_timeout_s=REFUSED_WITHIN_S, tls_ca_file=broker.ca_file):
            pass
    gc.collect()  # the failed handshakes' socket warnings come out here, under this test's filter


SHIPPED_CONF = SHIPPED_ACL.with_name("mosquitto-secure.conf")
READY = re.compile(rb"mosquitto version \S+ running")


def shipped_conf(workdir: Path, port: int, prefix: str) -> Path:
    """config/mosquitto-secure.conf as shipped, with its files made here (mosquitto_passwd, openssl) and a
    loopback port; nothing else changed."""
    _, ca_file = secure_config(workdir, BrokerSecurity(users=USERS, acl=shipped_acl(prefix), tls=True))
    assert ca_file is not None
    files = {
        "/etc/mosquitto/node-agent/ca.crt": ca_file,
        "/etc/mosquitto/node-agent/broker.crt": ca_file.with_name("server.crt"),
        "/etc/mosquitto/node-agent/broker.key": ca_file.with_name("server.key"),
        "/etc/mosquitto/node-agent/passwd": workdir / "passwd",
        "/etc/mosquitto/node-agent/acl": workdir / "acl",
        "/var/lib/mosquitto/": f"{workdir}/",
    }
    text = SHIPPED_CONF.read_text().replace("listener 8883\n", f"listener {port} 127.0.0.1\n")
    for shipped, local in files.items():
        assert shipped in text, shipped
        text = text.replace(shipped, str(local))
    conf = workdir / "secure.conf"
    conf.write_text(text + ("user root\n" if os.geteuid() == 0 else ""))
    return conf


async def test_shipped_secure_config_runs_a_pool_over_tls_with_passwords(tmp_path: Path) -> None:
    mosquitto = find_mosquitto()
    if mosquitto is None or shutil.which("mosquitto_passwd", path="/usr/bin:/usr/sbin") is None:
        pytest.skip("mosquitto and mosquitto_passwd are not installed (scripts/test.sh installs them)")
    prefix, port = fresh_prefix(), free_port()
    conf = shipped_conf(tmp_path, port, prefix)
    broker_process = await asyncio.create_subprocess_exec(
        mosquitto, "-c", str(conf), stdin=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )
    try:
        assert broker_process.stderr is not None
        async with asyncio.timeout(TIMEOUT_S):
            while not READY.search(line := await broker_process.stderr.readline()):
                assert line, "mosquitto exited with the shipped configuration"
        drain = asyncio.create_task(broker_process.stderr.read())  # keeps its log from filling the pipe
        ca_file = tmp_path / "tls" / "ca.crt"
        broker = BrokerHandle(url=broker_url(port, tls=True), port=port, kind="mosquitto", ca_file=ca_file)
        url = broker.url_for("scheduler", USERS["scheduler"])
        async with BatchClient(url, topic_prefix=prefix, command_timeout_s=TIMEOUT_S, tls_ca_file=ca_file) as client:
            async with NodePool(broker, client, tmp_path / "nodes") as pool:
                await pool(env=password_file(tmp_path, "node1"))
                await run_a_task(client)
    finally:
        broker_process.terminate()
        await broker_process.wait()
    await drain
