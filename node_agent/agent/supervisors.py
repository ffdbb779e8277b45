"""The task supervisors of this node: their folders, which ones a new agent adopts, and detaching at stop.

Each task, preparation and release runs under its own supervisor process (``runner/shim.py``), with its
files in ``state_dir/supervised/<jobId>/<taskId>/``. At start-up, before any orphan is killed, ``scan()``
finds the folders an agent of this boot left: a shim still running, or one that recorded an exit status, is
adopted (its pids are spared); a folder no shim claimed is fenced, so its task is known never to have started
(kept until the orphans are killed, then removed by ``forget_unstarted``); anything else is lost and its folder
removed (ADR 0006, ADR 0011). A task's record says only ``active`` while it runs: these folders say the rest.

The shims are forked by one fork server per agent (``runner/forkserver.py``), started once recovery's orphan
scan is done (it carries this node's AZ_BATCH_NODE_ROOT_DIR, so the scan would take it for a task process)
and ended when the agent stops (``async with``); its shims run on.
"""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path
from typing import Any

import psutil
import structlog

from node_agent.runner.forkclient import ForkServer
from node_agent.runner.supervised import Found, Supervision, examine, shim_alive, task_info

log = structlog.get_logger(__name__)


class Supervisors:
    def __init__(self, state_dir: Path, boot_id: str, node_root: Path) -> None:
        self.root = state_dir / "supervised"
        self.boot_id = boot_id
        self.adoptable: set[tuple[str, str]] = set()
        self.unstarted: set[tuple[str, str]] = set()  # fenced: their tasks never started
        self.lost: dict[tuple[str, str], dict[str, Any]] = {}  # started, gone: what spec.json said of the task
        self.detach = asyncio.Event()  # set at a stop that leaves running tasks to their supervisors
        self.launcher = ForkServer(node_root)

    async def __aenter__(self) -> Supervisors:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.launcher.close()  # the shims run on

    def supervision(self, job_id: str, task_id: str) -> Supervision:
        return Supervision(self.root / job_id / task_id, self.boot_id, self.launcher)

    def scan(self) -> set[int]:
        """Find the adoptable supervisors (blocking); return the pids to spare: each live shim and its tree."""
        spare: set[int] = set()
        lost = []
        for folder in sorted(self.root.glob("*/*")):
            key = (folder.parent.name, folder.name)
            found = examine(folder, self.boot_id)
            if found == Found.UNSTARTED:
                self.unstarted.add(key)
                continue
            if found == Found.LOST:
                self.lost[key] = task_info(folder)
                lost.append(folder)
                continue
            self.adoptable.add(key)
            pid = shim_alive(folder)
            if pid is not None:
                spare.add(pid)
                spare.update(_descendants(pid))
        for folder in lost:
            shutil.rmtree(folder, ignore_errors=True)
        if self.adoptable or lost or self.unstarted:
            log.info(
                "recovery.supervisors", adoptable=len(self.adoptable), unstarted=len(self.unstarted), lost=len(lost)
            )
        return spare

    def task_info(self, job_id: str, task_id: str) -> dict[str, Any]:
        """What spec.json says of the task of an adoptable folder (its start time, retries so far)."""
        return task_info(self.root / job_id / task_id)

    async def forget_unstarted(self) -> None:
        """Remove the fenced folders, once the orphans are killed: a shim forked for one by the previous agent's
        fork server can no longer be waiting to read it."""
        for job_id, task_id in sorted(self.unstarted):
            await self.forget(job_id, task_id)
        self.unstarted.clear()

    def take(self, job_id: str, task_id: str) -> bool:
        """Whether this task's supervisor is to be adopted (once: the first caller gets it)."""
        key = (job_id, task_id)
        if key in self.adoptable:
            self.adoptable.discard(key)
            return True
        return False

    async def forget(self, job_id: str, task_id: str) -> None:
        """The task's result is recorded: its supervisor folder is no longer needed."""
        await asyncio.to_thread(shutil.rmtree, self.root / job_id / task_id, ignore_errors=True)

    async def forget_job(self, job_id: str) -> None:
        await asyncio.to_thread(shutil.rmtree, self.root / job_id, ignore_errors=True)

    async def forget_unadopted(self) -> None:
        """Folders nobody adopted at start-up (their task was completed or handed back)."""
        for job_id, task_id in sorted(self.adoptable):
            await self.forget(job_id, task_id)
        self.adoptable.clear()


def _descendants(pid: int) -> set[int]:
    try:
        return {child.pid for child in psutil.Process(pid).children(recursive=True)}
    except psutil.Error:
        return set()
