"""What the benches share: a throw-away Mosquitto, local agents on it, a client, percentiles, a hard deadline.

Not a bench itself. The scripts in bench/ import it as ``harness`` (Python puts a script's folder on sys.path).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from node_agent.brokers import BrokerHandle, running_broker
from node_agent.client.pool import BatchClient
from node_agent.localpool import LocalAgent, make_agents
from node_agent.testing.nodes import fresh_prefix, wait_ready

READY_TIMEOUT_S = 120.0


@dataclass
class Pool:
    broker: BrokerHandle
    client: BatchClient
    agents: list[LocalAgent]
    base: Path


@contextlib.asynccontextmanager
async def local_pool(
    count: int,
    *,
    task_slots: int = 1,
    extra: Mapping[str, str] | None = None,
    command_timeout_s: float = 60,
) -> AsyncIterator[Pool]:
    """A broker, ``count`` agents (node1..) each with its own root, and a connected client; all stopped after."""
    with tempfile.TemporaryDirectory(prefix="node-agent-bench-") as tmp:
        base = Path(tmp)
        with running_broker(base / "broker", kind="mosquitto") as broker:
            prefix = fresh_prefix()
            agents = make_agents(broker.url, prefix, base / "nodes", count, task_slots=task_slots, extra=extra)
            async with BatchClient(broker.url, topic_prefix=prefix, command_timeout_s=command_timeout_s) as client:
                try:
                    for agent in agents:
                        await agent.start()
                    await wait_ready(client, agents, READY_TIMEOUT_S)
                    yield Pool(broker, client, agents, base)
                finally:
                    await asyncio.gather(*(agent.stop(timeout_s=10) for agent in agents))


def run_bounded(main: Callable[[], Awaitable[None]], timeout_s: float, *, uvloop: bool = False) -> None:
    """Run ``main`` with a hard deadline: past it, everything started in ``local_pool`` is stopped and we exit 2."""

    async def bounded() -> None:
        deadline = asyncio.timeout(timeout_s)
        try:
            async with deadline:
                await main()
        except TimeoutError:
            if not deadline.expired():
                raise
            print(f"bench: hard timeout of {timeout_s:g} s reached; stopped", file=sys.stderr)
            raise SystemExit(2) from None

    if uvloop:
        import uvloop as _uvloop

        with asyncio.Runner(loop_factory=_uvloop.new_event_loop) as runner:
            runner.run(bounded())
    else:
        asyncio.run(bounded())


def pct(samples: list[float], q: float) -> float:
    """The q-th percentile (0-100) by nearest rank."""
    ordered = sorted(samples)
    return ordered[max(0, min(len(ordered) - 1, round(q / 100 * len(ordered)) - 1))]


def p50(samples: list[float]) -> float:
    return statistics.median(samples)


def ms(seconds: float) -> float:
    return seconds * 1000


def machine() -> str:
    """Cores, CPU model and Python version, for the figures' header."""
    model = "unknown CPU"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as info:
        for line in info:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    loadavg = os.getloadavg()[0]
    return f"{os.cpu_count()} cores, {model}, Python {sys.version.split()[0]}, load average {loadavg:.1f}"


class Stopwatch:
    def __init__(self) -> None:
        self.start = time.perf_counter()

    def __call__(self) -> float:
        return time.perf_counter() - self.start
