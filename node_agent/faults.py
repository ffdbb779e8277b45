"""Fault injection for the crash tests: ``NODE_AGENT_FAULT_POINT=name`` makes the agent SIGKILL itself there.

Only tests set the variable. A kill at a named point is exact where an outside ``kill -9`` would race with
the agent; the test then starts the agent again without the variable and checks what survived. Points:

- ``after-receive``: a command arrived from the broker, nothing of it applied or acknowledged yet
- ``after-store``: an addTask is recorded durably, its reply not yet sent nor the command acknowledged
- ``prep-started``: the job preparation is recorded running, its process not started yet
- ``prepared``: the job preparation succeeded, the task waiting for it not yet recorded running
- ``before-spawn``: a supervised process's spec.json is written, its shim not yet asked for
- ``task-spawned``: a supervised process started (its shim said so), nothing recorded of it being running
- ``task-exited``: a task's process ended, its result not yet recorded nor published
- ``task-recorded``: a task's result and completed record are committed to the outbox, its record file not yet
  written
- ``task-published``: a task's record file is written, its supervisor folder and the outbox's copy not yet gone
- ``release-started``: the job release is recorded running, its process not started yet

``NODE_AGENT_FAULT_POINT=name:N`` kills at the N-th time the point is reached (default the first).
"""

from __future__ import annotations

import os
import signal
from collections import Counter

ENV = "NODE_AGENT_FAULT_POINT"
_reached: Counter[str] = Counter()


def _armed() -> tuple[str, int] | None:
    value = os.environ.get(ENV, "")
    if not value:
        return None
    name, _, count = value.partition(":")
    return name, int(count) if count.isdigit() else 1


def reached(point: str) -> None:
    """Die by SIGKILL (no clean-up, like a crash or the OOM killer) if the test armed this point."""
    armed = _armed()
    if armed is None or armed[0] != point:
        return
    _reached[point] += 1
    if _reached[point] >= armed[1]:
        os.kill(os.getpid(), signal.SIGKILL)
