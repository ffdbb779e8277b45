"""The exclusive lock on a state directory: one agent, or one ``node-agent gc`` that removes, at a time."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from node_agent.errors import ConfigError

LOCK_NAME = "agent.lock"


class StateLocked(ConfigError):
    """Another process holds the state directory (the agent exits with status 2)."""


def lock_state_dir(state_dir: Path) -> int:
    """Take the lock (non-blocking) and return its descriptor, to keep open while the state is in use.

    A process that dies releases it; the descriptor is not inherited by the tasks the agent starts.
    """
    fd = os.open(state_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise StateLocked(f"state_dir {state_dir} is in use by another node-agent process") from None
    return fd
