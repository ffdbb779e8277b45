"""Killing a process tree, shared by the agent's runner and the per-task supervisor (which stays light: no
asyncio or logging imports)."""

from __future__ import annotations

import os
import signal

import psutil


def kill_tree(pid: int) -> int:
    """SIGKILL the process, its process group and every descendant psutil can see; returns the count."""
    victims: list[psutil.Process] = []
    try:
        root = psutil.Process(pid)
        victims = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        pass
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    for victim in victims:
        try:
            victim.kill()
        except psutil.NoSuchProcess:
            pass
    return len(victims)
