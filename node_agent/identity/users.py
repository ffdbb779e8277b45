"""Who a task runs as: a userIdentity request resolved to an account, created on demand, and deleted again.

Azure Batch's rules (Linux): no userIdentity means an auto-user with pool scope and no elevation; ``admin``
runs as root; a ``pool`` auto-user is one account shared by every task of the pool on the node; a ``task``
auto-user is an account of that task alone, deleted with the task's files; ``userName`` is an account that
already exists. An agent that is not root (development mode) runs every task as its own user and refuses
what that cannot honour. Nothing here is ever resolved to more rights than were asked for.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from enum import StrEnum

import structlog

from node_agent.errors import TaskFailure
from node_agent.identity import accounts
from node_agent.identity.accounts import Account, AccountError
from node_agent.identity.names import (
    is_valid_user_name,
    pool_comment,
    pool_user_name,
    task_comment,
    task_user_name,
)

log = structlog.get_logger(__name__)

TASK_UMASK = 0o007  # what a task creates is its own user's and group's, never the world's


class UserKind(StrEnum):
    POOL = "pool"  # autoUser, scope pool, nonadmin (the default)
    TASK = "task"  # autoUser, scope task, nonadmin
    ADMIN = "admin"  # autoUser, elevationLevel admin: root
    NAMED = "named"  # userName: an existing account


class UserMode(StrEnum):
    """How this agent runs tasks (NodeState's ``taskUserMode``)."""

    TASK_USERS = "taskUsers"  # as root: each task as the user its userIdentity asks for
    AGENT_USER = "agentUser"  # unprivileged (development mode): every task as the agent's own user


@dataclass(frozen=True, slots=True)
class UserRequest:
    kind: UserKind = UserKind.POOL
    user_name: str | None = None  # for NAMED


@dataclass(frozen=True, slots=True)
class RunAs:
    """The account a task runs as; ``uid`` None means the agent's own user (no switch)."""

    name: str
    uid: int | None
    gid: int | None
    home: str | None  # None: the task's working directory stands in for a home


def _unsupported(message: str) -> TaskFailure:
    return TaskFailure("UserIdentityNotSupported", message)


class TaskUsers:
    """Resolves requests for one node; owns the accounts it creates (found again by their comment)."""

    def __init__(self, node_id: str, pool_id: str, *, is_root: bool | None = None) -> None:
        self.node_id = node_id
        self.pool_id = pool_id
        self.is_root = os.geteuid() == 0 if is_root is None else is_root
        self.mode = UserMode.TASK_USERS if self.is_root else UserMode.AGENT_USER
        self._lock = asyncio.Lock()  # one useradd at a time from this agent
        self._agent = accounts.lookup_uid(os.geteuid())
        self._pool_account: Account | None = None  # the pool auto-user, once resolved

    @property
    def agent_user(self) -> str:
        return self._agent.name if self._agent is not None else str(os.geteuid())

    async def resolve(self, request: UserRequest, job_id: str, task_id: str) -> RunAs:
        """The account to run as; raises TaskFailure (never falls back to other rights)."""
        if not self.is_root:
            return self._as_agent(request)
        match request.kind:
            case UserKind.ADMIN:
                return RunAs("root", 0, 0, "/root")
            case UserKind.POOL:
                if self._pool_account is None:  # looked up (or made) once: the agent never deletes it
                    name = pool_user_name(self.pool_id)
                    self._pool_account = await self._ensure(name, pool_comment(self.pool_id))
                return _run_as(self._pool_account, own_home=False)
            case UserKind.TASK:
                name = task_user_name(self.node_id, job_id, task_id)
                return _run_as(await self._ensure(name, task_comment(self.node_id, job_id, task_id)), own_home=False)
            case UserKind.NAMED:
                return await self._named(request.user_name or "")

    def _as_agent(self, request: UserRequest) -> RunAs:
        agent = self.agent_user
        reason = "the agent runs unprivileged (development mode) and runs every task as its own user"
        if request.kind == UserKind.ADMIN:
            raise _unsupported(f"elevationLevel 'admin' cannot be honoured: {reason} {agent!r}")
        if request.kind == UserKind.TASK:
            raise _unsupported(f"autoUser scope 'task' cannot be honoured (no task user can be created): {reason}")
        if request.kind == UserKind.NAMED and request.user_name != agent:
            raise _unsupported(f"userName {request.user_name!r} cannot be honoured: {reason} {agent!r}")
        return RunAs(agent, None, None, None)

    async def _named(self, name: str) -> RunAs:
        account = await asyncio.to_thread(accounts.lookup, name) if is_valid_user_name(name) else None
        if account is None:
            raise TaskFailure("TaskUserNotFound", f"userName {name!r} is not an account on this node")
        return _run_as(account, own_home=True)

    async def _ensure(self, name: str, comment: str) -> Account:
        async with self._lock:
            account = await asyncio.to_thread(accounts.lookup, name)
            if account is not None and account.comment != comment:
                raise TaskFailure(
                    "TaskUserCreationFailed",
                    f"account {name!r} exists but was not created by this agent for this task; refusing to use it",
                    category="servererror",
                )
            if account is not None:
                return account
            try:
                return await accounts.create(name, comment)
            except AccountError as exc:
                raise TaskFailure("TaskUserCreationFailed", str(exc), category="servererror") from exc

    async def remove_task_users(self, job_id: str, task_id: str | None = None) -> int:
        """Delete the task-scope accounts of one task (or of every task of the job); returns how many went.

        Called once the task's files are gone. A failure is logged, never raised: the files are already gone
        and the next removal of the job tries again.
        """
        if not self.is_root:
            return 0
        prefix = task_comment(self.node_id, job_id, task_id)
        found = await asyncio.to_thread(accounts.find_marked, prefix)
        removed = 0
        for account in found:
            if task_id is not None and account.comment != prefix:
                continue
            try:
                async with self._lock:
                    await accounts.delete(account)
                removed += 1
            except AccountError as exc:
                log.warning("identity.user_delete_failed", user=account.name, error=str(exc))
        return removed


def _run_as(account: Account, *, own_home: bool) -> RunAs:
    return RunAs(account.name, account.uid, account.gid, account.home if own_home else None)
