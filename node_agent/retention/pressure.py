"""Disk pressure: the free space of the node root, and which completed directories go first when it is low."""

from __future__ import annotations

import shutil
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from node_agent.retention.deadlines import Deadline


@dataclass(frozen=True, slots=True)
class FreeSpaceProbe:
    """Free bytes of the file system holding the node root, or, while ``probe_file`` exists, the number
    written in it (for tests and file systems whose free space statvfs does not tell)."""

    root: Path
    probe_file: Path | None = None

    def measure(self) -> int | None:
        """Blocking; None when the figure cannot be read."""
        try:
            if self.probe_file is not None and self.probe_file.exists():
                return int(self.probe_file.read_text().strip())
            return shutil.disk_usage(self.root).free
        except (OSError, ValueError):
            return None


@dataclass(frozen=True, slots=True)
class Candidate:
    deadline: Deadline
    is_job_ended: bool


def pressure_order(candidates: Iterable[Candidate]) -> list[Deadline]:
    """Ended jobs' directories first, then active jobs'; within each, the oldest completion first.

    Beyond Azure Batch, which only has retentionTime. The caller passes completed material only (no running
    or waiting task, no preparation of a job that can still run tasks); the shared directory is never a
    candidate, and there is no staging cache yet to empty before these.
    """
    ordered = sorted(candidates, key=lambda c: (not c.is_job_ended, c.deadline.completed_at, c.deadline.key))
    return [candidate.deadline for candidate in ordered]


@dataclass(frozen=True, slots=True)
class Relief:
    free_bytes: int | None
    is_low: bool
    removed: tuple[Deadline, ...] = ()


async def relieve(
    ordered: Iterable[Deadline],
    threshold_bytes: int,
    probe: Callable[[], Awaitable[int | None]],
    remove: Callable[[Deadline], Awaitable[bool]],
) -> Relief:
    """Remove candidates in order until the free space is back at the threshold (probed after each
    removal); ``is_low`` when the candidates ran out first. An unknown free space removes nothing."""
    free = await probe()
    removed: list[Deadline] = []
    for deadline in ordered:
        if free is None or free >= threshold_bytes:
            break
        if await remove(deadline):
            removed.append(deadline)
            free = await probe()
    is_low = free is not None and free < threshold_bytes
    return Relief(free_bytes=free, is_low=is_low, removed=tuple(removed))
