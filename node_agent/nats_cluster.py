"""A throw-away 3-node NATS cluster on loopback ports (routes, JetStream, an MQTT listener per node) for tests."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import shutil
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiomqtt

from node_agent.brokers import (
    HOST,
    START_ATTEMPTS,
    BrokerHandle,
    BrokerToolMissing,
    BrokerUnavailable,
    LaunchSpec,
    OutputPump,
    broker_url,
    free_port,
    launch,
    stop_process,
)
from node_agent.transport.mqtt import NODELAY, is_refused

KIND = "nats-cluster"
NODE_READY_TIMEOUT_S = 30.0  # a JetStream metadata leader election can take long on a loaded machine
CLUSTER_READY_TIMEOUT_S = 30.0
PROBE_ATTEMPT_TIMEOUT_S = 10.0  # one cross-node round trip; JetStream may still be electing its leaders
_RETRY_FIRST_S = 0.1
_RETRY_MAX_S = 1.0

# One node. The client port is set (not the default 4222, which a system NATS may hold); mqtt needs server_name
# and JetStream (sessions and retained messages are JetStream streams, replicated over the cluster).
_NATS_CONF = """\
server_name: "{name}"
listen: "{host}:{client_port}"
http: "{host}:{http_port}"
jetstream {{
  store_dir: "{store_dir}"
  max_memory_store: 64MB
  max_file_store: 256MB
}}
cluster {{
  name: "node-agent-test"
  listen: "{host}:{cluster_port}"
  no_advertise: true
  routes: [{routes}]
}}
mqtt {{
  listen: "{host}:{mqtt_port}"
  stream_replicas: {replicas}
}}
{authorization}"""
_PROBE_TOPICS = "node-agent-probe"


@dataclass(frozen=True, slots=True)
class NatsUser:
    """A NATS user for MQTT clients, with the subjects it may publish and subscribe to (``/`` written ``.``)."""

    name: str
    password: str
    publish: tuple[str, ...]
    subscribe: tuple[str, ...]

    def config(self) -> str:
        def quoted(subjects: tuple[str, ...]) -> str:
            return ", ".join(json.dumps(subject) for subject in subjects)

        return (
            f"    {{ user: {json.dumps(self.name)}, password: {json.dumps(self.password)}, permissions: {{ "
            f"publish: [{quoted(self.publish)}], subscribe: [{quoted(self.subscribe)}] }} }}\n"
        )


def agent_user(prefix: str, node_id: str, password: str) -> NatsUser:
    """What an agent logged in as ``node_id`` needs and nothing more: Mosquitto's per-node ACL, in NATS subjects.

    ``$MQTT.sub.>`` is the inbox of the user's own QoS 1 consumers; the server makes those only for subjects
    the user may read, so it opens nothing of another node's.
    """
    p = prefix.replace("/", ".")
    return NatsUser(
        node_id,
        password,
        publish=(
            f"{p}.nodes.{node_id}.state",
            f"{p}.nodes.{node_id}.events",
            f"{p}.jobs.*.tasks.*",
            f"{p}.jobs.*.nodes.{node_id}",
            f"{p}.clients.*.replies",
        ),
        subscribe=(f"{p}.nodes.{node_id}.commands", f"{p}.jobs.*", f"{p}.pools.*", "$MQTT.sub.>"),
    )


def scheduler_user(prefix: str, name: str, password: str) -> NatsUser:
    """A driver (BatchClient): everything under the prefix."""
    p = prefix.replace("/", ".")
    return NatsUser(name, password, publish=(p, f"{p}.>"), subscribe=(p, f"{p}.>", "$MQTT.sub.>"))


def _authorization(users: Sequence[NatsUser]) -> str:
    return "authorization {\n  users = [\n" + "".join(user.config() for user in users) + "  ]\n}\n" if users else ""


def find_nats_server() -> str | None:
    """Return the nats-server executable (Debian installs it in /usr/sbin), or None."""
    return shutil.which("nats-server") or shutil.which("nats-server", path="/usr/sbin:/usr/bin")


@dataclass(eq=False)
class NatsNode:
    """One server of the cluster: its ports, its files and, while it runs, its process."""

    name: str
    workdir: Path
    client_port: int = field(default_factory=free_port)
    mqtt_port: int = field(default_factory=free_port)
    http_port: int = field(default_factory=free_port)
    cluster_port: int = field(default_factory=free_port)
    proc: subprocess.Popen[str] | None = None
    pump: OutputPump | None = None

    @property
    def url(self) -> str:
        return broker_url(self.mqtt_port)

    def write_config(self, peers: Sequence[NatsNode], users: Sequence[NatsUser] = ()) -> Path:
        routes = ", ".join(f'"nats-route://{HOST}:{peer.cluster_port}"' for peer in peers if peer is not self)
        conf = self.workdir / "nats.conf"
        conf.write_text(
            _NATS_CONF.format(
                name=self.name,
                host=HOST,
                client_port=self.client_port,
                http_port=self.http_port,
                cluster_port=self.cluster_port,
                mqtt_port=self.mqtt_port,
                store_dir=self.workdir / "jetstream",
                routes=routes,
                replicas=min(len(peers), 3),
                authorization=_authorization(users),
            ),
            encoding="utf-8",
        )
        return conf

    def launch(self, binary: str) -> None:
        """Start the process, from the calling thread: the child's parent-death signal is tied to that thread."""
        argv = [binary, "-c", str(self.workdir / "nats.conf")]
        self.proc, self.pump = launch(LaunchSpec(argv, self.workdir / "nats.log", _is_ready))

    def wait_ready(self) -> None:
        """Block until the node knows its JetStream metadata leader; else stop it and raise BrokerUnavailable."""
        assert self.pump is not None, "launch() first"
        ready, output = self.pump.wait_for(_is_ready, NODE_READY_TIMEOUT_S)
        if not ready:
            self.stop()
            raise BrokerUnavailable(
                f"nats-server {self.name} did not report readiness within {NODE_READY_TIMEOUT_S:g} s; its output "
                f"was:\n{output}"
            )

    def kill(self) -> None:
        """SIGKILL, as a crashed broker machine: no goodbye to its clients or its routes."""
        if self.proc is not None and self.pump is not None:
            self.proc.kill()
            self.proc.wait()
            self.pump.join()

    def stop(self) -> None:
        if self.proc is not None and self.pump is not None:
            stop_process(self.proc, self.pump)

    def route_count(self) -> int:
        """``num_routes`` from the node's monitoring endpoint (``/routez``); blocking, loopback only."""
        with urllib.request.urlopen(f"http://{HOST}:{self.http_port}/routez", timeout=2) as reply:  # noqa: S310
            return int(json.load(reply)["num_routes"])


@dataclass(eq=False)
class NatsCluster:
    """``with running_nats_cluster(workdir) as cluster``: ``cluster.handle`` is what the fixtures and agents use;
    ``kill(i)`` and ``await restart(i)`` take node ``i`` down and bring it back; ``await wait_whole()`` waits
    until every node routes to every other and MQTT works across all of them."""

    nodes: list[NatsNode]
    binary: str
    probe: NatsUser | None = None  # the login of the readiness probe, on a cluster with users

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self.nodes]

    @property
    def handle(self) -> BrokerHandle:
        ports = tuple(node.mqtt_port for node in self.nodes)
        return BrokerHandle(url=",".join(self.urls), port=ports[0], kind=KIND, cluster_ports=ports)

    def kill(self, index: int) -> None:
        self.nodes[index].kill()

    async def restart(self, index: int, timeout_s: float = CLUSTER_READY_TIMEOUT_S) -> None:
        """Start node ``index`` again on its ports and store, then wait until the cluster is whole."""
        node = self.nodes[index]
        node.kill()
        node.launch(self.binary)  # a short fork/exec on the caller's thread (see NatsNode.launch)
        await asyncio.to_thread(node.wait_ready)
        await self.wait_whole(timeout_s)

    async def route_counts(self) -> list[int]:
        return list(await asyncio.gather(*(asyncio.to_thread(node.route_count) for node in self.nodes)))

    async def wait_whole(self, timeout_s: float = CLUSTER_READY_TIMEOUT_S) -> None:
        """Wait until a retained message published on each node reaches a subscriber on every node, and each
        node's ``/routez`` shows a route to each other node. Raises BrokerUnavailable after ``timeout_s``."""
        expected = [len(self.nodes) - 1] * len(self.nodes)
        last: object = None
        try:
            async with asyncio.timeout(timeout_s):
                await _retrying(lambda: round_trip([node.mqtt_port for node in self.nodes], self.probe))
                while (counts := await self.route_counts()) != expected:
                    last = counts  # a duplicate route between two nodes is dropped a moment after it forms
                    await _retrying(lambda: round_trip([node.mqtt_port for node in self.nodes], self.probe))
        except TimeoutError:
            raise BrokerUnavailable(
                f"the NATS cluster did not become whole within {timeout_s:g} s (routes per node: {last}); "
                f"logs in {self.nodes[0].workdir.parent}"
            ) from None

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


def _is_ready(line: str) -> bool:
    """The node knows its JetStream metadata leader ("Self is new ..." or "... new metadata leader: n2/...").

    Before that an MQTT CONNECT waits out a 4 s JetStream API timeout and fails.
    """
    return "JetStream cluster metadata leader" in line or "JetStream cluster new metadata leader" in line


async def _retrying(attempt: Callable[[], Awaitable[None]]) -> None:
    """Run ``attempt`` until it succeeds, with a growing pause after each failure; the caller bounds the time."""
    delay = _RETRY_FIRST_S
    while True:
        try:
            async with asyncio.timeout(PROBE_ATTEMPT_TIMEOUT_S):
                await attempt()
            return
        except (aiomqtt.MqttError, OSError, TimeoutError):
            await asyncio.sleep(delay)  # back-off between attempts at a server that is still starting
            delay = min(delay * 2, _RETRY_MAX_S)


async def round_trip(ports: Sequence[int], login: NatsUser | None = None) -> None:
    """Each port's client publishes a retained QoS 1 message that every port's client receives (at QoS 0), then
    clears it.

    Proves routes between every pair of nodes and JetStream (which stores retained messages) working.
    """
    tag = uuid.uuid4().hex[:12]
    topics = {f"{_PROBE_TOPICS}/{tag}/{number}" for number in range(len(ports))}
    async with contextlib.AsyncExitStack() as stack:
        enter = stack.enter_async_context
        clients = [await enter(_probe_client(port, f"probe-{tag}-{n}", login)) for n, port in enumerate(ports)]
        for client in clients:
            # QoS 0: a plain NATS subscription, where QoS 1 would make (and later delete) a replicated JetStream
            # consumer each time, a load that slows the very recovery being waited for. The retained QoS 1
            # publish still has to be stored by JetStream before its PUBACK.
            if is_refused(await client.subscribe(f"{_PROBE_TOPICS}/{tag}/+", qos=0)):
                raise aiomqtt.MqttError("probe subscription refused (JetStream not ready)")
        receivers = [asyncio.ensure_future(_receive(client, topics)) for client in clients]
        try:
            for client, topic in zip(clients, sorted(topics), strict=True):
                await client.publish(topic, b"1", qos=1, retain=True)
            await asyncio.gather(*receivers)
        finally:
            for receiver in receivers:
                receiver.cancel()
            await asyncio.gather(*receivers, return_exceptions=True)
            for client, topic in zip(clients, sorted(topics), strict=True):
                with contextlib.suppress(aiomqtt.MqttError):
                    await client.publish(topic, b"", qos=1, retain=True)


def _probe_client(port: int, identifier: str, login: NatsUser | None) -> aiomqtt.Client:
    return aiomqtt.Client(
        HOST,
        port,
        identifier=identifier,
        username=login.name if login else None,
        password=login.password if login else None,
        socket_options=[NODELAY],
        timeout=PROBE_ATTEMPT_TIMEOUT_S,
    )


async def _receive(client: aiomqtt.Client, topics: set[str]) -> None:
    missing = set(topics)
    async for message in client.messages:
        missing.discard(message.topic.value)
        if not missing:
            return


def _in_new_loop(coro: Awaitable[None]) -> None:
    """Run a coroutine to its end from synchronous code, even when the calling thread runs an event loop."""

    async def main() -> None:
        await coro

    with concurrent.futures.ThreadPoolExecutor(1) as executor:
        executor.submit(asyncio.run, main()).result()


@contextlib.contextmanager
def running_nats_cluster(workdir: Path, size: int = 3, users: Sequence[NatsUser] = ()) -> Iterator[NatsCluster]:
    """Run a ``size``-node NATS cluster on free loopback ports for the duration of the block.

    ``users`` (``agent_user``, ``scheduler_user``) turn anonymous access off: only they may connect, each within
    its permissions (plus the cluster's own readiness probe, on its own topics).

    Returns once the cluster is whole (see ``NatsCluster.wait_whole``). Raises BrokerToolMissing without
    nats-server (``apt-get install nats-server``).
    """
    binary = find_nats_server()
    if binary is None:
        raise BrokerToolMissing("nats-server is not installed (Debian: `apt-get install nats-server`, in /usr/sbin)")
    probe = None
    if users:
        subjects = (f"{_PROBE_TOPICS}.>",)
        probe = NatsUser("node-agent-probe", uuid.uuid4().hex, subjects, (*subjects, "$MQTT.sub.>"))
    cluster = _start_cluster(binary, workdir, size, [*users, probe] if probe else [], probe)
    try:
        yield cluster
    finally:
        cluster.stop()


def _start_cluster(binary: str, workdir: Path, size: int, users: list[NatsUser], probe: NatsUser | None) -> NatsCluster:
    """Start the nodes on free ports and wait until the cluster is whole. A port found free may be taken before a
    node binds it (an outgoing connection's ephemeral port, say): then the whole cluster starts again on fresh
    ports and an empty store, as a single broker does (``brokers._start``)."""
    for attempt in range(1, START_ATTEMPTS + 1):
        nodes = [NatsNode(f"n{number}", workdir / f"n{number}") for number in range(1, size + 1)]
        cluster = NatsCluster(nodes, binary, probe)
        try:
            for node in nodes:
                shutil.rmtree(node.workdir, ignore_errors=True)  # a failed attempt's store
                node.workdir.mkdir(parents=True)
                node.write_config(nodes, users)
            started = time.monotonic()
            for node in nodes:
                node.launch(binary)
            for node in nodes:
                node.wait_ready()
            _in_new_loop(cluster.wait_whole(CLUSTER_READY_TIMEOUT_S - (time.monotonic() - started)))
            return cluster
        except BrokerUnavailable as exc:
            cluster.stop()
            if attempt == START_ATTEMPTS or "address already in use" not in str(exc).lower():
                raise
        except BaseException:
            cluster.stop()
            raise
    raise AssertionError("unreachable: the last attempt returns or raises")
