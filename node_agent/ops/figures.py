"""The node's CPU, memory and disk figures from psutil: blocking, so callers run it in a thread."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import psutil


@dataclass(frozen=True, slots=True)
class NodeFigures:
    cpu_percent: float  # all CPUs, since the previous measurement (psutil.cpu_percent(interval=None))
    memory_total_bytes: int
    memory_available_bytes: int
    disk_total_bytes: int | None  # of the node root's file system; None when it cannot be read
    disk_free_bytes: int | None


def measure_node(root: Path) -> NodeFigures:
    memory = psutil.virtual_memory()
    disk_total: int | None
    disk_free: int | None
    try:
        disk = psutil.disk_usage(str(root))
        disk_total, disk_free = int(disk.total), int(disk.free)
    except OSError:
        disk_total = disk_free = None
    return NodeFigures(
        cpu_percent=float(psutil.cpu_percent(interval=None)),
        memory_total_bytes=int(memory.total),
        memory_available_bytes=int(memory.available),
        disk_total_bytes=disk_total,
        disk_free_bytes=disk_free,
    )
