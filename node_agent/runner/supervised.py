"""A process run under its own supervisor (runner/shim.py), and the adoption of one a previous agent started.

The supervisor folder (one per task, outside the node root) holds ``spec.json`` (written here before the
spawn), ``shim.json``, ``started.json`` and ``status.json`` (written by the shim). The shim is forked by the
agent's fork server (``runner/forkserver.py``, reached through ``runner/forkclient.py``). A new agent in the
same boot finds the folder, waits for the shim through a pidfd and reads the real exit status; the wall-clock
deadline in ``spec.json`` is absolute, so the limit keeps counting from the original start.
"""

from __future__ import annotations

import asyncio
import enum
import json
import os
import shutil
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import structlog

from node_agent import faults
from node_agent.errors import TaskFailure
from node_agent.runner.forkclient import ForkServer
from node_agent.runner.process import ExitResult, ProcessSpec, split_command_line
from node_agent.runner.readiness import readable
from node_agent.runner.shim import FENCED, SHIM, SPEC, STARTED, STATUS, claim, write_consistent
from node_agent.runner.tree import kill_tree

log = structlog.get_logger(__name__)
TERM_GRACE_S = 5.0


@dataclass(frozen=True, slots=True)
class Supervision:
    """Where one task's supervisor keeps its files, the boot it belongs to, and who forks it."""

    folder: Path
    boot_id: str
    launcher: ForkServer


def _read(path: Path) -> dict[str, Any] | None:
    try:
        document = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    return document if isinstance(document, dict) else None


def _create_time(pid: int, *, running: bool = False) -> float | None:
    """The process's start time; None when it is gone (or, with ``running``, ended and not yet reaped: a
    shim's parent, the fork server, reaps it a moment after its pidfd said it exited)."""
    try:
        process = psutil.Process(pid)
        if running and process.status() == psutil.STATUS_ZOMBIE:
            return None
        return float(process.create_time())
    except psutil.Error:
        return None


def shim_alive(folder: Path) -> int | None:
    """The pid of the folder's shim if it still runs (same pid and start time), else None."""
    shim = _read(folder / SHIM) or {}
    pid, created = shim.get("shimPid"), shim.get("shimCreateTime")
    if isinstance(pid, int) and created is not None and _create_time(pid, running=True) == created:
        return pid
    return None


def is_adoptable(folder: Path, boot_id: str) -> bool:
    """Started in this boot, and either finished (a status to read) or still supervised."""
    spec = _read(folder / SPEC)
    if spec is None or spec.get("bootId") != boot_id:
        return False
    return (folder / STATUS).exists() or shim_alive(folder) is not None


class Found(enum.Enum):
    """What a recovering agent makes of a supervisor folder (``examine``)."""

    ADOPTABLE = "adoptable"  # started in this boot: its shim still runs, or it left a status
    UNSTARTED = "unstarted"  # no shim ever claimed it, and now none ever will: its task never started
    LOST = "lost"  # a shim claimed it and died without a status, or it belongs to another boot


def examine(folder: Path, boot_id: str) -> Found:
    """Classify a folder an earlier agent left; an unclaimed one is fenced first (blocking).

    The agent writes spec.json, then asks its fork server for a shim, and the shim claims the folder
    (shim.json) before it starts anything. An agent killed in between may leave a request the server has not
    yet forked, or a shim that has not yet claimed: fencing the folder (``claim`` of shim.json, as the shim
    does) settles the race, so "unstarted" is final (ADR 0011). Only what is not settled this way, a folder
    of another boot, is called lost rather than unstarted."""
    spec = _read(folder / SPEC)
    if spec is not None and spec.get("bootId") != boot_id:
        return Found.LOST  # its task may have started before the reboot, and cannot be running now
    for _ in range(2):
        if spec is not None and ((folder / STATUS).exists() or shim_alive(folder) is not None):
            return Found.ADOPTABLE
        shim = _read(folder / SHIM)
        if shim == FENCED:
            return Found.UNSTARTED
        if shim is not None or (folder / SHIM).exists():
            return Found.LOST  # claimed by a shim that is gone without a status
        try:
            if claim(folder / SHIM, FENCED):
                return Found.UNSTARTED
        except OSError:
            return Found.LOST  # cannot be fenced (the folder is unwritable): not known to be unstarted
        # a shim claimed it meanwhile: look again
    return Found.LOST


def task_info(folder: Path) -> dict[str, Any]:
    """What the agent kept in spec.json about the task of this folder (ProcessSpec.task_info)."""
    info = (_read(folder / SPEC) or {}).get("task")
    return info if isinstance(info, dict) else {}


def _prepare(folder: Path, spec: dict[str, Any], before: Callable[[], object] | None = None) -> int:
    if before is not None:
        before()  # the task's own preparation (ProcessSpec.prepare)
    shutil.rmtree(folder, ignore_errors=True)  # a previous attempt's files
    folder.mkdir(parents=True, mode=0o700)
    write_consistent(folder / SPEC, spec)
    return os.open(folder / "shim.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)


async def run_supervised(
    spec: ProcessSpec,
    kill: asyncio.Event,
    supervision: Supervision,
    on_spawn: Callable[[int], Awaitable[None]] | None = None,
    detach: asyncio.Event | None = None,
) -> ExitResult:
    """Start the command under a new shim and wait for its status (see ``watch`` for kill and detach)."""
    argv = split_command_line(spec.command_line)
    limit = spec.max_wall_clock.total_seconds() if spec.max_wall_clock else None
    document = {
        "argv": argv,
        "cwd": str(spec.cwd),
        "env": spec.env,
        "stdout": str(spec.stdout),
        "stderr": str(spec.stderr),
        "deadline": time.time() + limit if limit is not None else None,
        "bootId": supervision.boot_id,
        # The task's user (None: the agent's own); the shim switches only the child (runner/outputs.py).
        "uid": spec.uid,
        "gid": spec.gid,
        "umask": spec.umask,
        "task": spec.task_info,
    }
    log_fd = await asyncio.to_thread(_prepare, supervision.folder, document, spec.prepare)
    faults.reached("before-spawn")
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    try:
        # Not the agent's child: the shim outlives an agent that stops leaving tasks to their supervisors.
        pid, pidfd = await supervision.launcher.spawn(supervision.folder, write_end, log_fd)  # closes the fds
    except BaseException as exc:
        if isinstance(exc, asyncio.CancelledError) and detach is not None and detach.is_set():
            os.close(read_end)
        else:
            await asyncio.shield(_abandon(supervision.folder, read_end))
        if isinstance(exc, OSError):
            raise TaskFailure("CommandLaunchFailed", f"the task supervisor could not start: {exc}") from exc
        raise
    exited = asyncio.ensure_future(_exit_of(pidfd))
    pipe = ShimPipe(read_end)
    try:
        # "started" once started.json is written; a status (the launch failed) or EOF (the shim died) else
        first = await pipe.line()
    except BaseException:
        pipe.close()
        if detach is None or not detach.is_set():
            await asyncio.shield(_end(supervision.folder, pid, exited))
        raise
    if first != b"started":
        pipe.close()  # the status file tells why, once the shim has exited
        return await watch(supervision.folder, pid, exited, kill, detach)
    faults.reached("task-spawned")
    try:
        if on_spawn is not None:
            await on_spawn(pid)
    except BaseException:
        pipe.close()
        raise
    return await watch(supervision.folder, pid, exited, kill, detach, pipe)


class ShimPipe:
    """The agent's end of a shim's stdout: ``started`` once the task runs, then its status as one JSON line
    once status.json is written (runner/shim.py). Read without blocking the loop; closed once."""

    def __init__(self, fd: int) -> None:
        os.set_blocking(fd, False)
        self.fd: int | None = fd
        self._buffer = b""

    async def line(self) -> bytes | None:
        """The next line without its newline; None at end-of-file (the shim has exited or closed its end)."""
        while b"\n" not in self._buffer:
            assert self.fd is not None
            await readable(self.fd)
            try:
                chunk = os.read(self.fd, 4096)
            except BlockingIOError:
                continue
            if not chunk:
                return None
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


async def _abandon(folder: Path, read_end: int) -> None:
    """A launch that failed or was cancelled: a shim may have been forked all the same (the fork server died
    after the fork, or the caller was cancelled meanwhile). Once it has said its first line or ended, it and
    its task are ended."""
    pipe = ShimPipe(read_end)
    try:
        await pipe.line()
    finally:
        pipe.close()
    await asyncio.to_thread(lambda: _discard(folder, shim_alive(folder)))


async def adopt(supervision: Supervision, kill: asyncio.Event, detach: asyncio.Event | None = None) -> ExitResult:
    """Wait for the shim a previous agent started in this boot, and return its real status."""
    pid = await asyncio.to_thread(shim_alive, supervision.folder)
    exited = asyncio.ensure_future(_exit_of(_pidfd(pid)))
    log.info("process.adopted", shim_pid=pid, folder=supervision.folder.name)
    return await watch(supervision.folder, pid, exited, kill, detach)


def _pidfd(pid: int | None) -> int | None:
    try:
        return None if pid is None else os.pidfd_open(pid)
    except ProcessLookupError:
        return None


async def _exit_of(pidfd: int | None) -> None:
    """Wait for a process that is not our child to exit (its pidfd becomes readable); closes the pidfd."""
    if pidfd is None:
        return
    try:
        await readable(pidfd)
    finally:
        os.close(pidfd)


async def watch(
    folder: Path,
    pid: int | None,
    exited: asyncio.Future[Any],
    kill: asyncio.Event,
    detach: asyncio.Event | None,
    pipe: ShimPipe | None = None,
) -> ExitResult:
    """Until the shim reports its status on ``pipe`` (this agent started it) or exits: on ``kill`` ask it
    (SIGTERM) to kill the task. Cancelled with ``detach`` set (the agent stops and leaves tasks to their
    shims), the shim goes on; otherwise it is ended too. ``pipe`` is closed once its last read is over."""
    killer = asyncio.ensure_future(kill.wait())
    reported = None
    if pipe is not None:
        reported = asyncio.ensure_future(pipe.line())
        # Closed once the read is over, never while its reader is still registered: a number closed under the
        # selector could be reused by another task's fd, and this reader's removal would take that one's.
        reported.add_done_callback(lambda _: pipe.close())
    ended = {exited} if reported is None else {exited, reported}
    try:
        await asyncio.wait({*ended, killer}, return_when=asyncio.FIRST_COMPLETED)
        if not any(future.done() for future in ended) and pid is not None:
            _signal(pid, signal.SIGTERM)
            await asyncio.wait(ended, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        if detach is None or not detach.is_set():
            await asyncio.shield(_end(folder, pid, exited))
        raise
    finally:
        killer.cancel()
        if reported is not None:
            reported.cancel()
    if reported is not None and reported.done() and not reported.cancelled():
        status = _parse(reported.result())
        if status is not None:  # status.json is written: the shim's own exit need not be waited for
            exited.cancel()
            await asyncio.wait({exited})  # its pidfd closed before this returns
            return _exit_result(status)
    await exited  # its pipe closed without a status: the file tells, once the shim is gone
    return await asyncio.to_thread(_result, folder)


async def _end(folder: Path, pid: int | None, exited: asyncio.Future[Any]) -> None:
    if pid is not None:
        _signal(pid, signal.SIGTERM)
        await asyncio.wait({exited}, timeout=TERM_GRACE_S)
    await asyncio.to_thread(_discard, folder, pid)


def _discard(folder: Path, shim_pid: int | None) -> None:
    """End a supervisor this agent gives up on (a stop that hands tasks back, a cancelled launch) and remove
    its folder: the attempt did not finish, so the next start must not adopt the status of its killing."""
    _kill_all(folder, shim_pid)
    shutil.rmtree(folder, ignore_errors=True)


def _kill_all(folder: Path, shim_pid: int | None) -> None:
    started = _read(folder / STARTED) or {}
    child, created = started.get("pid"), started.get("createTime")
    if isinstance(child, int) and created is not None and _create_time(child) == created:
        kill_tree(child)
    if shim_pid is not None and shim_alive(folder) == shim_pid:
        kill_tree(shim_pid)


def _signal(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def _parse(line: bytes | None) -> dict[str, Any] | None:
    try:
        document = json.loads(line) if line else None
    except ValueError:
        return None
    return document if isinstance(document, dict) and "endTime" in document else None


def _result(folder: Path) -> ExitResult:
    status = _read(folder / STATUS)
    if status is None:
        raise TaskFailure(
            "TaskSupervisorLost",
            "the task's supervisor ended without recording the task's exit status",
            category="servererror",
        )
    return _exit_result(status)


def _exit_result(status: dict[str, Any]) -> ExitResult:
    if "launchError" in status:
        raise TaskFailure(str(status["launchError"]), str(status.get("message", "")))
    return ExitResult(int(status["exitCode"]), timed_out=bool(status["timedOut"]), killed=bool(status["killed"]))
