"""The environment of a task: a clean base, the AZ_BATCH_* variables, the job's and the task's settings."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping

# Only these are taken from the agent's own environment; nothing else (no secret) reaches a task.
_INHERITED = ("PATH", "LANG", "LC_ALL", "TZ", "HOME", "USER", "LOGNAME", "SHELL", "TMPDIR")
_DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def task_environment(
    batch_vars: Mapping[str, str],
    *settings: Iterable[tuple[str, str]],
) -> dict[str, str]:
    """Base, then AZ_BATCH_* variables, then each settings list in order (later wins, as in Azure Batch)."""
    env = {name: os.environ[name] for name in _INHERITED if name in os.environ}
    env.setdefault("PATH", _DEFAULT_PATH)
    env.update(batch_vars)
    for pairs in settings:
        env.update(pairs)
    return env
