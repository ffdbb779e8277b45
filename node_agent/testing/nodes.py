"""FakeNode and NodePool: real agent processes, each behind its own BrokerProxy, with the faults a test injects."""

from __future__ import annotations

import asyncio
import signal
import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Protocol, Self

import psutil

from node_agent import faults
from node_agent.brokers import BrokerHandle, broker_url
from node_agent.client.pool import BatchClient
from node_agent.client.view import PLACEABLE
from node_agent.localpool import STOP_TIMEOUT_S, LocalAgent, make_agent
from node_agent.runner.tree import kill_tree
from node_agent.testing.proxy import BrokerProxy

READY_TIMEOUT_S = 20.0
# A reboot command for NODE_AGENT_REBOOT_COMMAND: it writes a new boot id where the agent reads it and stops the
# agent (its parent) with SIGTERM, as a real reboot would; FakeNode.rebooted() then starts the agent again.
SIMULATED_REBOOT_COMMAND = (
    """/bin/sh -c 'printf "rebooted-%s\\n" "$$" > "$NODE_AGENT_BOOT_ID_FILE" && kill -TERM "$PPID"'"""
)
LOG_TAIL_CHARS = 3000


class Started(Protocol):
    """What a readiness wait needs of an agent: FakeNode and LocalAgent both have it."""

    @property
    def node_id(self) -> str: ...
    @property
    def started_at(self) -> datetime: ...
    @property
    def log_file(self) -> Path: ...


def fresh_prefix() -> str:
    """A topic prefix no other test uses: tests share one broker, never a prefix."""
    return f"t{uuid.uuid4().hex[:12]}"


async def wait_ready(client: BatchClient, nodes: Sequence[Started], timeout_s: float = READY_TIMEOUT_S) -> None:
    """Wait until each node's retained state says idle or running, published by the run that started at
    ``started_at``."""
    since = min(node.started_at for node in nodes)

    def ready() -> bool:
        # idle, or running: a restarted agent may have adopted running tasks or queued accepted ones again
        states = [client.view.nodes.get(node.node_id) for node in nodes]
        return all(s is not None and s.state in PLACEABLE and s.last_heartbeat >= since for s in states)

    try:
        await client.wait_until(lambda: ready() or None, timeout_s)
    except TimeoutError:
        logs = "\n".join(f"--- {node.node_id}\n{_log_tail(node.log_file)}" for node in nodes)
        raise AssertionError(f"agents not ready in {timeout_s:g} s:\n{logs}") from None


def _log_tail(path: Path) -> str:
    try:
        return path.read_text(errors="replace")[-LOG_TAIL_CHARS:]
    except OSError as exc:
        return f"(no log: {exc})"


class FakeNode:
    """One real ``node-agent run`` process behind its own BrokerProxy; the faults are methods.

    ``start()`` waits until the node is ready; ``stop()`` is SIGTERM (tasks handed back), ``kill()`` SIGKILL
    (the broker publishes the last will, tasks keep running until the next start kills them), ``reboot()``
    a stop and a start with a new boot id (preparation tasks run again), ``partition()`` / ``heal()`` cut
    the node off the broker and let it back (the process and its tasks carry on meanwhile).
    """

    def __init__(self, agent: LocalAgent, proxies: Sequence[BrokerProxy], client: BatchClient) -> None:
        self.agent = agent
        self.proxies = list(proxies)  # one per broker node, in the order of the agent's broker URL list
        self._client = client
        self._boots = 1
        self._orphans: list[psutil.Process] = []  # what a SIGKILLed agent left running, ended at close()

    def __repr__(self) -> str:
        return f"FakeNode({self.node_id!r}, pid={self.pid})"

    @property
    def node_id(self) -> str:
        return self.agent.node_id

    @property
    def root(self) -> Path:
        """The node root (AZ_BATCH_NODE_ROOT_DIR): shared/, workitems/, ..."""
        return self.agent.root

    @property
    def state_dir(self) -> Path:
        """The agent's own records (NODE_AGENT_STATE_DIR), outside the node root."""
        return self.agent.state_dir

    @property
    def log_file(self) -> Path:
        """The agent's stdout and stderr, over all its runs."""
        return self.agent.log_file

    @property
    def started_at(self) -> datetime:
        return self.agent.started_at

    @property
    def proxy(self) -> BrokerProxy:
        """The proxy to the first broker in this node's list (the only one, on a single broker)."""
        return self.proxies[0]

    def broker_port_behind(self, address: str | None) -> int | None:
        """The real broker port behind ``host:port`` of one of this node's proxies (NodeState's ``broker``)."""
        return next((p.broker_port for p in self.proxies if address == f"{p.broker_host}:{p.port}"), None)

    @property
    def process(self) -> asyncio.subprocess.Process | None:
        return self.agent.process

    @property
    def pid(self) -> int | None:
        return self.agent.process.pid if self.agent.process is not None else None

    @property
    def boot_id(self) -> str:
        return f"boot-{self._boots}"

    async def start(self, *, ready: bool = True) -> None:
        """Start the process and wait until its retained state says idle, published by this run (``ready=False``:
        do not wait, for a node that is not to become idle, such as one whose start task fails)."""
        await self.agent.start()
        if ready:
            await wait_ready(self._client, [self])

    async def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> int:
        """SIGTERM and wait for the exit status (SIGKILL after ``timeout_s``)."""
        return await self.agent.stop(timeout_s)

    async def kill(self) -> int:
        """SIGKILL the agent alone: its tasks are left running, as after a crash."""
        process = self.agent.process
        if process is not None and process.returncode is None:
            process.send_signal(signal.SIGSTOP)  # frozen, it starts nothing the list below would miss
        self._orphans.extend(_descendants(process))
        return await self.agent.kill()

    async def crash_at(self, point: str) -> None:
        """Restart the agent armed to SIGKILL itself at a named point (see ``node_agent.faults``); then trigger
        that point and await ``crashed()``."""
        await self.stop()
        self.agent.env[faults.ENV] = point
        await self.start()

    async def crashed(self, timeout_s: float = READY_TIMEOUT_S) -> int:
        """Wait until the armed agent killed itself, and disarm it: the next ``start()`` runs normally."""
        process = self.agent.process
        assert process is not None, "the agent was never started"
        async with asyncio.timeout(timeout_s):
            code = await process.wait()
        self.agent.env.pop(faults.ENV, None)
        return code

    async def reboot(self) -> None:
        """Stop, take a new boot id, start (and wait until ready): preparation tasks run again."""
        await self.stop()
        self._boots += 1
        self.agent.set_boot_id(self.boot_id)
        await self.start()

    async def rebooted(self, *, ready: bool = True, timeout_s: float = READY_TIMEOUT_S) -> None:
        """After the agent ran SIMULATED_REBOOT_COMMAND (a reboot or reimage it was asked for): wait until that
        stopped it, then start it in a new boot (and, unless ``ready=False``, wait until it is idle)."""
        process = self.agent.process
        assert process is not None, "the agent was never started"
        async with asyncio.timeout(timeout_s):
            await process.wait()
        self._boots += 1
        self.agent.set_boot_id(self.boot_id)
        await self.start(ready=ready)

    async def partition(self) -> None:
        """Cut the node off the broker: its connections close at both ends (the broker publishes its last will),
        new ones are refused until ``heal()``. The agent and its tasks keep running; what it publishes waits in
        its outbox.
        """
        await asyncio.gather(*(proxy.partition() for proxy in self.proxies))

    async def heal(self) -> None:
        """Let the node reach the broker again; it reconnects by itself and delivers what it held back."""
        await asyncio.gather(*(proxy.heal() for proxy in self.proxies))

    def disk_full(self, free_bytes: int = 0) -> None:
        """Make the agent see only ``free_bytes`` free on its node root (from its next sweep or heartbeat):
        it removes completed task directories, oldest first, and says ``isLowOnDisk`` when that is not enough.
        Writes nothing to the real disk; see docs/testing.md for why a real full disk is not made."""
        self.agent.disk_free_file.write_text(f"{free_bytes}\n")

    def disk_ok(self) -> None:
        """Undo ``disk_full()``: the agent measures its file system again."""
        self.agent.disk_free_file.unlink(missing_ok=True)

    async def close(self) -> None:
        """Teardown: SIGKILL the agent with every process it started or left behind, then close the proxy.

        No graceful stop: that would wait out the shutdown grace of running tasks, and the test is over.
        """
        try:
            await asyncio.to_thread(self._kill_all)
            if self.agent.process is not None:
                await self.agent.process.wait()
        finally:
            await asyncio.gather(*(proxy.close() for proxy in self.proxies))

    def _kill_all(self) -> None:
        process = self.agent.process
        if process is not None and process.returncode is None:  # not reaped yet: the pid is still the agent's
            kill_tree(process.pid)
        for orphan in [*self._orphans, *_of_root(self.root)]:
            if orphan.is_running():  # psutil compares start times: not a newcomer under a reused pid
                kill_tree(orphan.pid)  # a task leads its own process group: what it started goes too


class NodePool:
    """``nodes = await pool(n=3, task_slots=2, env={...})``: started agents, each ready; ``close()`` ends them all.

    Nodes are numbered on from the last call: ``node1``, ``node2``, ... Every agent reaches ``broker`` through its
    own proxy, on the topic prefix of ``client``, which is also what readiness is watched with. On a clustered
    broker (``broker.ports``) each agent has a proxy per broker node and a URL list rotated by its number, so the
    agents start spread over the broker nodes. On a broker with TLS (``broker.ca_file``) the agents speak
    ``mqtts://`` and trust that CA.
    """

    def __init__(self, broker: BrokerHandle, client: BatchClient, base: Path) -> None:
        self.broker = broker
        self.client = client
        self.base = base
        self.nodes: list[FakeNode] = []

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def __call__(
        self,
        n: int = 1,
        *,
        task_slots: int = 1,
        env: Mapping[str, str] | None = None,
        username: str | None = None,
        password: str | None = None,
        broker_index: int | None = None,
        ready: bool = True,
    ) -> list[FakeNode]:
        """Start ``n`` more nodes with ``task_slots`` each and extra NODE_AGENT_* settings; return once all are idle.

        ``username`` and ``password`` are the login the agents give a broker with passwords. ``broker_index``
        starts every new node on that node of a clustered broker (default: node k on the k-th, round robin); with
        ``ready=False`` the nodes are started and not waited for.
        """
        tls = self.broker.ca_file is not None
        settings = {"NODE_AGENT_TLS_CA_FILE": str(self.broker.ca_file)} if tls else {}
        settings.update(env or {})
        started: list[FakeNode] = []
        for number in range(len(self.nodes) + 1, len(self.nodes) + 1 + n):
            first = number - 1 if broker_index is None else broker_index
            proxies = await _start_proxies(_rotated(self.broker.ports, first))
            try:
                url = ",".join(broker_url(p.port, tls=tls, username=username, password=password) for p in proxies)
                agent = make_agent(
                    url, self.client.topics.prefix, self.base, number, task_slots=task_slots, extra=settings
                )
            except BaseException:
                await asyncio.gather(*(proxy.close() for proxy in proxies))
                raise
            node = FakeNode(agent, proxies, self.client)
            self.nodes.append(node)  # before it starts: a failed start is still torn down
            started.append(node)
        await asyncio.gather(*(node.start(ready=ready) for node in started))
        return started

    async def close(self) -> None:
        """Stop every node (in parallel); raise the first error only after all of them were handled."""
        results = await asyncio.gather(*(node.close() for node in self.nodes), return_exceptions=True)
        self.nodes = []
        for result in results:
            if isinstance(result, BaseException):
                raise result


def _rotated(ports: Sequence[int], shift: int) -> list[int]:
    """Node k starts on the k-th broker node of a cluster (and fails over to the next ones in turn)."""
    shift %= len(ports)
    return [*ports[shift:], *ports[:shift]]


async def _start_proxies(ports: Sequence[int]) -> list[BrokerProxy]:
    proxies: list[BrokerProxy] = []
    try:
        for port in ports:
            proxy = BrokerProxy(port)
            await proxy.start()
            proxies.append(proxy)
    except BaseException:
        await asyncio.gather(*(proxy.close() for proxy in proxies))
        raise
    return proxies


def _of_root(root: Path) -> list[psutil.Process]:
    """Task processes (and their supervisors) of this node root, wherever a crashed agent left them.

    A look at each process's raw environment first: parsing every process's environment through psutil took
    about 60 ms per node at each teardown; psutil then confirms the few that name the root.
    """
    marker = f"AZ_BATCH_NODE_ROOT_DIR={root}\0".encode()
    found = []
    for pid in psutil.pids():
        try:
            with open(f"/proc/{pid}/environ", "rb") as environ:
                if marker not in environ.read():
                    continue
            proc = psutil.Process(pid)
            if proc.environ().get("AZ_BATCH_NODE_ROOT_DIR") == str(root):
                found.append(proc)
        except (OSError, psutil.Error):
            continue
    return found


def _descendants(process: asyncio.subprocess.Process | None) -> list[psutil.Process]:
    """The live descendants of a process this pool started (none once it was reaped)."""
    if process is None or process.returncode is not None:  # reaped: its pid may already be someone else's
        return []
    try:
        return list(psutil.Process(process.pid).children(recursive=True))
    except psutil.NoSuchProcess:
        return []
