"""``node-agent demo``: a broker (given, or started here), two local agents, the JobPrepRelease sample, cleanup."""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

from node_agent.brokers import running_broker
from node_agent.client.pool import BatchClient
from node_agent.localpool import LocalAgent, make_agents
from node_agent.log import configure_logging
from node_agent.sample import Print, run_sample


@contextlib.asynccontextmanager
async def _broker(url: str | None, workdir: Path, progress: Print) -> AsyncIterator[str]:
    if url is not None:
        yield url
        return
    with running_broker(workdir) as broker:
        note = "" if broker.kind == "mosquitto" else " (embedded fallback: see the README for what it does not promise)"
        article = "a" if broker.kind == "mosquitto" else "an"
        progress(f"started {article} {broker.kind} broker on {broker.url}{note}")
        yield broker.url


async def run_demo(
    out: Print,
    progress: Print,
    *,
    broker_url: str | None = None,
    nodes: int = 2,
    tasks: int = 8,
    timeout_s: float = 120,
) -> int:
    """Run the sample end to end; returns 0 when every preparation and release exited 0."""
    configure_logging("warning", "console")
    prefix = f"demo-{uuid.uuid4().hex[:8]}"
    with tempfile.TemporaryDirectory(prefix="node-agent-demo-") as tmp:
        workdir = Path(tmp)
        async with _broker(broker_url, workdir, progress) as url:
            agents = make_agents(url, prefix, workdir, nodes)
            try:
                await asyncio.gather(*(agent.start() for agent in agents))
                progress(f"started {nodes} agents: {', '.join(a.node_id for a in agents)} (topic prefix {prefix})")
                async with BatchClient(url, topic_prefix=prefix) as client:
                    codes = await run_sample(
                        client,
                        [a.node_id for a in agents],
                        out,
                        progress,
                        task_count=tasks,
                        timeout_s=timeout_s,
                    )
            finally:
                await _stop_all(agents, progress)
    return 0 if codes and all(code == (0, 0) for code in codes.values()) else 1


async def _stop_all(agents: list[LocalAgent], progress: Print) -> None:
    statuses = await asyncio.gather(*(agent.stop() for agent in agents))
    progress("stopped the agents (exit " + ", ".join(str(s) for s in statuses) + ")")
