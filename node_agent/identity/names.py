"""The names of the accounts the agent creates: derived from ids, valid Linux user names, at most 32 characters."""

from __future__ import annotations

import hashlib
import re

MAX_LENGTH = 32
# useradd's default NAME_REGEX on Debian, with the 32-character limit of utmp and most tools.
USER_NAME_PATTERN = r"^[a-z_][a-z0-9_-]{0,30}[a-z0-9_$-]?$"
_USER_NAME_RE = re.compile(USER_NAME_PATTERN)
# What the agent writes in the comment (GECOS) field of every account it creates: how it finds them again.
MARKER = "node-agent task user"


def is_valid_user_name(name: str) -> bool:
    return len(name) <= MAX_LENGTH and _USER_NAME_RE.fullmatch(name) is not None


def _digest(*parts: str) -> str:
    return hashlib.sha256("/".join(parts).encode()).hexdigest()


def _checked(name: str) -> str:
    if not is_valid_user_name(name):  # cannot happen for valid ids; a guard against a future change of the rule
        raise ValueError(f"derived user name {name!r} is not a valid Linux user name")
    return name


def pool_user_name(pool_id: str) -> str:
    """``na-pool-<pool id, lowercased, cut>-<hash>``: one per pool, the same on every node of it."""
    slug = re.sub(r"[^a-z0-9-]", "-", pool_id.lower())[:16]
    return _checked(f"na-pool-{slug}-{_digest(pool_id)[:6]}")


def task_user_name(node_id: str, job_id: str, task_id: str) -> str:
    """``na-task-<hash of node, job and task ids>``: one per task of a node (ids are too long to spell out)."""
    return _checked(f"na-task-{_digest(node_id, job_id, task_id)[:20]}")


def pool_comment(pool_id: str) -> str:
    return f"{MARKER} pool {pool_id}"


def task_comment(node_id: str, job_id: str, task_id: str | None = None) -> str:
    """The comment of a task user; without ``task_id``, the prefix shared by every task user of the job."""
    return f"{MARKER} task {node_id} {job_id} " + (task_id if task_id is not None else "")
