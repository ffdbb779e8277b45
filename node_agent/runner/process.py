"""Spawn a command line without a shell, enforce its wall-clock limit, and kill its whole process tree."""

from __future__ import annotations

import asyncio
import os
import shlex
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import structlog

from node_agent.errors import TaskFailure
from node_agent.runner.outputs import identity_keywords, open_outputs
from node_agent.runner.tree import kill_tree

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class ProcessSpec:
    command_line: str
    cwd: Path
    env: dict[str, str]
    stdout: Path
    stderr: Path
    max_wall_clock: timedelta | None = None
    uid: int | None = None  # None: the agent's own user; else also ``gid``, and supplementary groups are dropped
    gid: int | None = None
    umask: int | None = None
    # Blocking work to do first (making ``cwd``, say), in the same thread call as the launch's own file work:
    # one hop off the loop per attempt instead of two. Adopting a running attempt skips it.
    prepare: Callable[[], object] | None = None
    # What the agent needs to know again if it adopts this attempt after a restart (the task's start time, its
    # retries so far): kept in the supervisor's spec.json (runner/supervised.py), unused without a supervisor.
    task_info: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class ExitResult:
    exit_code: int
    timed_out: bool = False
    killed: bool = False  # ended on request: terminateTask, job end, agent shutdown


def split_command_line(command_line: str) -> list[str]:
    try:
        argv = shlex.split(command_line)
    except ValueError as exc:
        raise TaskFailure("CommandLaunchFailed", f"commandLine cannot be parsed: {exc}") from exc
    if not argv:
        raise TaskFailure("CommandLaunchFailed", "commandLine is empty")
    return argv


def _open_outputs(spec: ProcessSpec) -> tuple[int, int]:
    if spec.prepare is not None:
        spec.prepare()
    try:
        return open_outputs(spec.stdout, spec.stderr, spec.uid, spec.gid)
    except OSError as exc:
        raise TaskFailure("CommandLaunchFailed", f"cannot open the task's output file: {exc}") from exc


def _identity(spec: ProcessSpec) -> dict[str, object]:
    """The keywords that switch the child to the task's user; none when it runs as the agent's user."""
    return identity_keywords(spec.uid, spec.gid, spec.umask)


async def _spawn(spec: ProcessSpec, argv: list[str]) -> asyncio.subprocess.Process:
    out_fd, err_fd = await asyncio.to_thread(_open_outputs, spec)
    try:
        return await asyncio.create_subprocess_exec(
            *argv,
            cwd=spec.cwd,
            env=spec.env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=out_fd,
            stderr=err_fd,
            start_new_session=True,  # own process group: the tree can be killed as one
            **_identity(spec),  # type: ignore[arg-type]
        )
    except FileNotFoundError as exc:
        raise TaskFailure("CommandProgramNotFound", f"program {argv[0]!r} was not found: {exc}") from exc
    except PermissionError as exc:
        raise TaskFailure("CommandLaunchFailed", f"program {argv[0]!r} could not start as its user: {exc}") from exc
    except OSError as exc:
        raise TaskFailure("CommandLaunchFailed", f"program {argv[0]!r} could not start: {exc}") from exc
    finally:
        os.close(out_fd)
        os.close(err_fd)


def _exit_code(returncode: int) -> int:
    return 128 - returncode if returncode < 0 else returncode  # -9 -> 137, as a Linux shell reports it


async def run_process(
    spec: ProcessSpec, kill: asyncio.Event, on_spawn: Callable[[int], Awaitable[None]] | None = None
) -> ExitResult:
    """Run to completion, or until the limit passes or ``kill`` is set; the tree is dead on return."""
    argv = split_command_line(spec.command_line)
    proc = await _spawn(spec, argv)
    log.debug("process.started", pid=proc.pid, program=argv[0])
    waiter = asyncio.ensure_future(proc.wait())
    killer = asyncio.ensure_future(kill.wait())
    limit = spec.max_wall_clock.total_seconds() if spec.max_wall_clock else None
    try:
        if on_spawn is not None:
            await on_spawn(proc.pid)
        done, _ = await asyncio.wait({waiter, killer}, timeout=limit, return_when=asyncio.FIRST_COMPLETED)
        if waiter in done:
            return ExitResult(_exit_code(waiter.result()))
        killed = await asyncio.to_thread(kill_tree, proc.pid)
        log.info("process.killed", pid=proc.pid, processes=killed, timed_out=killer not in done)
        return ExitResult(_exit_code(await proc.wait()), timed_out=killer not in done, killed=killer in done)
    finally:
        killer.cancel()
        if proc.returncode is None:  # cancelled (agent shutdown): never leave the tree behind
            await asyncio.shield(asyncio.to_thread(kill_tree, proc.pid))
            await asyncio.shield(waiter)
