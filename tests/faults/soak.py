"""A bounded fault soak: N tasks over M agents while agents are killed (SIGKILL) and the broker restarted.

Run by ``tests/faults/test_soak.py`` at a small size in CI, or by hand at any size:

    .venv/bin/python -m tests.faults.soak --tasks 2000 --agents 5

Afterwards every task must have exactly one distinct final result, must have run once (each task appends its
id to a file in its node's shared dir), and every node's preparation must have run once (one boot).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import shutil
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from node_agent.brokers import free_port, running_broker
from node_agent.client.pool import RETRY_ELSEWHERE, BatchClient, CommandError
from node_agent.client.view import NoNodeAvailable
from node_agent.testing.nodes import FakeNode, NodePool, fresh_prefix
from node_agent.wire.specs import Job, JobPreparationTask, TaskSpec
from node_agent.wire.status import Event, TaskState

SHARED = "$AZ_BATCH_NODE_SHARED_DIR"


@dataclass
class SoakReport:
    tasks: int
    agents: int
    seconds: float = 0.0
    agent_kills: int = 0
    broker_restarts: int = 0
    completed: int = 0
    runs: Counter[str] = field(default_factory=Counter)  # task id -> times its command ran
    completion_events: Counter[str] = field(default_factory=Counter)  # distinct completion events per task
    prep_runs: dict[str, int] = field(default_factory=dict)  # node id -> times its preparation ran
    handed_back: int = 0

    @property
    def ran_twice(self) -> list[str]:
        return sorted(t for t, n in self.runs.items() if n > 1)

    @property
    def never_ran(self) -> int:
        return self.tasks - len(self.runs)

    def lines(self) -> list[str]:
        return [
            f"tasks {self.tasks} over {self.agents} agents in {self.seconds:.1f} s",
            f"faults: {self.agent_kills} agent SIGKILLs, {self.broker_restarts} broker restarts",
            f"completed (retained state): {self.completed}; handed back and placed again: {self.handed_back}",
            f"ran once: {sum(1 for n in self.runs.values() if n == 1)}; twice or more: {len(self.ran_twice)}; "
            f"never: {self.never_ran}",
            f"distinct completion events per task: {dict(Counter(self.completion_events.values()))}",
            f"preparation runs per node: {self.prep_runs}",
        ]


async def _submit(client: BatchClient, task: TaskSpec) -> None:
    """Place a task; a timed-out addTask is sent again to the same node (idempotent there, and the broker
    redelivers it to a restarted agent), an error that names another node sends it elsewhere."""
    skipped: set[str] = set()
    node_id: str | None = None
    while True:
        try:
            node_id = node_id or client.view.pick_node(skipped)
            await client.add_task("soak", task, node_id=node_id)
            return
        except TimeoutError:
            placed = client.view.tasks.get(("soak", task.id))
            if placed is not None and (placed.node_info is None or placed.node_info.node_id != node_id):
                return  # handed back meanwhile, and the client placed it again itself
            continue
        except NoNodeAvailable:
            skipped.clear()
            await client.wait_until(lambda: client.view.pick_node() if _any_node(client) else None, 60)
        except CommandError as exc:
            if exc.code == "TaskHandedBack":
                return  # this node gave it back; the client placed it elsewhere
            if exc.code not in RETRY_ELSEWHERE:
                raise
            skipped.add(exc.node_id)
            node_id = None


def _any_node(client: BatchClient) -> bool:
    try:
        client.view.pick_node()
    except NoNodeAvailable:
        return False
    return True


class Faults:
    """Kills a random agent (and starts it again) or restarts the broker, every 0.3-1.5 s, until stopped."""

    def __init__(self, nodes: list[FakeNode], restart_broker: object, report: SoakReport, seed: int) -> None:
        self.nodes = nodes
        self.restart_broker = restart_broker
        self.report = report
        self.random = random.Random(seed)
        self.stopping = asyncio.Event()

    async def run(self) -> None:
        while not self.stopping.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.random.uniform(0.3, 1.5)):
                    await self.stopping.wait()
            if self.stopping.is_set():
                return
            if self.random.random() < 0.15:
                await self.restart_broker()  # type: ignore[operator]
                self.report.broker_restarts += 1
            else:
                node = self.random.choice(self.nodes)
                await node.kill()
                self.report.agent_kills += 1
                await node.start()


async def soak(tasks: int, agents: int, base: Path, *, seed: int = 1, timeout_s: float = 600) -> SoakReport:
    report = SoakReport(tasks=tasks, agents=agents)
    started = time.monotonic()
    port = free_port()
    store = base / "broker-store"
    store.mkdir(parents=True)
    with contextlib.ExitStack() as brokers:
        broker = brokers.enter_context(running_broker(base / "broker", kind="mosquitto", port=port, persistence=store))
        restarts = 0

        async def restart_broker() -> None:
            nonlocal restarts
            restarts += 1
            brokers.close()
            brokers.enter_context(
                running_broker(base / f"broker{restarts}", kind="mosquitto", port=port, persistence=store)
            )

        async with (
            BatchClient(broker.url, topic_prefix=fresh_prefix(), command_timeout_s=10) as client,
            NodePool(broker, client, base / "nodes") as pool,
        ):
            events: list[Event] = []
            client.on_event = events.append
            nodes = await pool(agents, task_slots=4)
            prep = JobPreparationTask(command_line=f"/bin/sh -c 'echo x >> {SHARED}/prep-count'")
            await client.create_job(Job(id="soak", job_preparation_task=prep))
            faults = Faults(nodes, restart_broker, report, seed)
            fault_loop = asyncio.create_task(faults.run())
            ids = [f"t{i:05d}" for i in range(tasks)]
            specs = [TaskSpec(id=i, command_line=f"/bin/sh -c 'echo {i} >> {SHARED}/ran; sleep 0.2'") for i in ids]
            try:
                for start in range(0, tasks, 50):
                    await asyncio.gather(*(_submit(client, spec) for spec in specs[start : start + 50]))
                await client.wait_until(lambda: _completed(client, ids) == tasks or None, timeout_s)
            finally:
                faults.stopping.set()
                await fault_loop
            for node in nodes:  # every agent up, so that what it holds is published
                if node.process is None or node.process.returncode is not None:
                    await node.start()
            await client.sync()
            report.completed = _completed(client, ids)
            report.handed_back = sum(1 for e in events if e.type == "taskHandedBack")
            for event in {e.model_dump_json(): e for e in events}.values():
                if event.type == "taskStateChanged" and event.state == TaskState.COMPLETED and event.task_id:
                    report.completion_events[event.task_id] += 1
            for node in nodes:
                ran = node.root / "shared" / "ran"
                report.runs.update(ran.read_text().split() if ran.exists() else [])
                prep_file = node.root / "shared" / "prep-count"
                report.prep_runs[node.node_id] = len(prep_file.read_text().split()) if prep_file.exists() else 0
    report.seconds = time.monotonic() - started
    return report


def _completed(client: BatchClient, ids: list[str]) -> int:
    done = 0
    for task_id in ids:
        task = client.view.tasks.get(("soak", task_id))
        done += task is not None and task.state == TaskState.COMPLETED
    return done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--agents", type=int, default=5)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=900, help="seconds to wait for every task")
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="soak-"))
    report = asyncio.run(soak(args.tasks, args.agents, base, seed=args.seed, timeout_s=args.timeout))
    print("\n".join(report.lines()))
    ok = report.completed == args.tasks and not report.ran_twice and report.never_ran == 0
    ok = ok and all(n == 1 for n in report.prep_runs.values() if n)
    if ok:
        shutil.rmtree(base, ignore_errors=True)
    else:
        print(f"ran twice: {report.ran_twice[:20]}; agent logs and state kept in {base}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
