"""Helpers of the crash tests: gated commands (a FIFO the test opens), counter files, result counting."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from node_agent.client.pool import BatchClient
from node_agent.testing.nodes import FakeNode
from node_agent.wire.specs import Job, JobPreparationTask, JobReleaseTask
from node_agent.wire.status import Event, TaskState

TIMEOUT_S = 30.0
SHARED = "$AZ_BATCH_NODE_SHARED_DIR"


def sh(script: str) -> str:
    assert "'" not in script
    return f"/bin/sh -c '{script}'"


def counted(name: str, then: str = "true") -> str:
    """Append a line to shared/<name> (how often it ran), then run ``then``."""
    return sh(f"echo x >> {SHARED}/{name}; {then}")


def gated(name: str, exit_code: int = 0) -> str:
    """Count, tell the test its pid on shared/<name>.pid, wait for shared/<name>.gate, exit ``exit_code``."""
    return counted(name, f"echo $$ > {SHARED}/{name}.pid; read line < {SHARED}/{name}.gate; exit {exit_code}")


def counted_job(job_id: str, prep: str | None = None, release: str | None = None, **prep_options: object) -> Job:
    return Job(
        id=job_id,
        job_preparation_task=JobPreparationTask(command_line=prep or counted("prep-count"), **prep_options),
        job_release_task=JobReleaseTask(command_line=release or counted("release-count")),
    )


class Gate:
    """The FIFOs of one gated command on a node: its pid (read when it runs) and its gate (opened to end it)."""

    def __init__(self, node: FakeNode, name: str) -> None:
        shared = node.root / "shared"
        shared.mkdir(parents=True, exist_ok=True)
        self.gate = shared / f"{name}.gate"
        os.mkfifo(self.gate)
        from tests.processes import Fifo

        self.pids = Fifo(shared / f"{name}.pid")

    async def running(self) -> int:
        try:
            return await self.pids.read_pid(TIMEOUT_S)
        finally:
            self.pids.close()

    async def open(self) -> None:
        await asyncio.to_thread(_write_line, self.gate)


def _write_line(path: Path) -> None:
    with open(path, "w") as gate:
        gate.write("go\n")


def completions(events: list[Event], task_id: str) -> list[Event]:
    """The distinct completion events of a task. A message re-sent after a crash (the outbox is at least once)
    is byte-identical to the first copy, so it is the same result, not a second one."""
    distinct = {
        e.model_dump_json(): e
        for e in events
        if e.task_id == task_id and e.type == "taskStateChanged" and e.state == "completed"
    }
    return list(distinct.values())


async def one_completion_each(client: BatchClient, events: list[Event], task_ids: list[str]) -> None:
    """Wait for a completion event of each task, then check after a round trip that none came twice."""
    await client.wait_until(lambda: all(completions(events, t) for t in task_ids), TIMEOUT_S)
    await client.sync()
    counts = {t: len(completions(events, t)) for t in task_ids}
    assert counts == dict.fromkeys(task_ids, 1), counts


def is_completed(client: BatchClient, job_id: str, task_id: str) -> bool:
    task = client.view.tasks.get((job_id, task_id))
    return task is not None and task.state == TaskState.COMPLETED
