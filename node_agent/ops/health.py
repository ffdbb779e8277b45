"""The agent's liveness file (``state_dir/health.json``), written from the event loop, and its check.

``node-agent health`` (a container's HEALTHCHECK) reads it: the agent's pid must be alive, the file fresh
(a blocked loop stops writing it) and the broker connected.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HEALTH_NAME = "health.json"
STALE_AFTER_INTERVALS = 3


def write_health(path: Path, snapshot: dict[str, Any]) -> None:
    """Atomic replace, so a reader never sees half a file."""
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(snapshot))
    os.replace(temporary, path)


async def beat(path: Path, interval_s: float, stopping: asyncio.Event, snapshot: Callable[[], dict[str, Any]]) -> None:
    """Rewrite the file every ``interval_s`` until ``stopping``; then remove it (a stopped agent is not healthy)."""
    try:
        while not stopping.is_set():
            state = {"pid": os.getpid(), "time": time.time(), "interval_s": interval_s, **snapshot()}
            await asyncio.to_thread(write_health, path, state)
            try:
                async with asyncio.timeout(interval_s):
                    await stopping.wait()
            except TimeoutError:
                pass
    finally:
        await asyncio.shield(asyncio.to_thread(path.unlink, missing_ok=True))


def check_health(path: Path, now: float | None = None) -> str | None:
    """None when healthy, else what is wrong in one line."""
    try:
        state = json.loads(path.read_text())
    except FileNotFoundError:
        return f"no {path}: the agent is not running (or has not started yet)"
    except (OSError, ValueError) as exc:
        return f"cannot read {path}: {exc}"
    age = (now or time.time()) - float(state.get("time", 0))
    if not _is_alive(int(state.get("pid", 0))):
        return f"the agent (pid {state.get('pid')}) that wrote {path} is gone"
    if age > STALE_AFTER_INTERVALS * float(state.get("interval_s", 30)):
        return f"the agent has not written {path} for {age:.0f} s: its event loop is stuck"
    if not state.get("connected"):
        return "the agent is not connected to its broker (see mqtt.disconnected in its log)"
    return None


def _is_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
