"""runner.forkserver and runner.forkclient: one server per agent forks the per-task supervisors."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import psutil
import pytest

from node_agent.runner.forkclient import ForkServer
from node_agent.runner.shim import FENCED, SHIM, SPEC, STARTED, STATUS, write_consistent
from node_agent.runner.supervised import Found, examine
from tests.processes import Fifo, has_exited

TIMEOUT_S = 20.0


@pytest.fixture
async def server() -> AsyncIterator[ForkServer]:
    launcher = ForkServer()
    try:
        yield launcher
    finally:
        await launcher.close()


def folder_for(tmp_path: Path, name: str, command: list[str]) -> Path:
    """A supervisor folder with the spec.json the agent would write."""
    folder = tmp_path / "supervised" / name
    folder.mkdir(parents=True)
    (tmp_path / "wd").mkdir(exist_ok=True)
    spec = {
        "argv": command,
        "cwd": str(tmp_path / "wd"),
        "env": {"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
        "stdout": str(folder / "stdout.txt"),
        "stderr": str(folder / "stderr.txt"),
        "deadline": None,
    }
    write_consistent(folder / SPEC, spec)
    return folder


async def spawn(server: ForkServer, folder: Path) -> tuple[int, int, int, int]:
    """A shim for ``folder``: its pid, its pidfd, the read end of its stdout, and its log (opened here)."""
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    log_fd = os.open(folder / "shim.log", os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
    pid, pidfd = await server.spawn(folder, write_end, log_fd)
    return pid, pidfd, read_end, log_fd


async def read_all(fd: int) -> bytes:
    return await asyncio.wait_for(asyncio.to_thread(_read_all, fd), TIMEOUT_S)


async def said(fd: int) -> list[str]:
    """The shim's lines on its stdout to end-of-file: "started", then "status" for its status (a JSON line)."""
    lines = (await read_all(fd)).splitlines()
    return ["status" if line.startswith(b"{") else line.decode() for line in lines]


def _read_all(fd: int) -> bytes:
    data = b""
    while chunk := os.read(fd, 1024):
        data += chunk
    os.close(fd)
    return data


async def reaped(pid: int) -> bool:
    """Whether ``pid`` is gone (not a zombie), checked until TIMEOUT_S (nothing signals a reap to a non-parent)."""
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                return False
        except psutil.NoSuchProcess:
            return True
        await asyncio.sleep(0.01)
    return False


async def test_a_forked_shim_runs_its_task_in_a_session_of_its_own_and_says_started(
    tmp_path: Path, server: ForkServer
) -> None:
    folder = folder_for(tmp_path, "t1", ["/bin/sh", "-c", "echo out; exit 4"])
    pid, pidfd, read_end, _ = await spawn(server, folder)
    # the pipe passed as stdout: "started", then the status, then EOF as the shim exits
    lines = (await read_all(read_end)).splitlines()
    assert lines[0] == b"started" and json.loads(lines[1]) == json.loads((folder / STATUS).read_bytes())
    assert len(lines) == 2 and has_exited(pidfd)
    assert b'"exitCode": 4' in (folder / STATUS).read_bytes()
    assert (folder / "stdout.txt").read_text() == "out\n"
    assert server.process is not None and pid != server.process.pid
    assert await reaped(pid), "the server reaps its shims"


async def test_the_shim_has_its_own_session_name_and_the_log_as_stderr(tmp_path: Path, server: ForkServer) -> None:
    with Fifo(tmp_path / "pid") as fifo:
        folder = folder_for(tmp_path, "t1", ["/bin/sh", "-c", f"echo $$ > {fifo.path}; sleep 60"])
        pid, pidfd, read_end, _ = await spawn(server, folder)
        task = await fifo.read_pid()
    try:
        shim = psutil.Process(pid)
        assert os.getsid(pid) == pid and os.getsid(task) == task
        assert shim.name() == "node-agent-shim"
        assert "node_agent.runner.forkserver" in " ".join(shim.cmdline())
        assert server.process is not None and shim.ppid() == server.process.pid
        assert shim.environ().keys() <= {"PATH", "PYTHONPATH", "AZ_BATCH_NODE_ROOT_DIR", "LC_CTYPE"}
    finally:
        os.kill(pid, signal.SIGTERM)  # the shim kills its task and records it
    assert has_exited(pidfd)
    assert b'"killed": true' in (folder / STATUS).read_bytes()
    os.close(read_end)

    broken = tmp_path / "supervised" / "broken"
    broken.mkdir()  # no spec.json: the forked shim fails, and says why on its stderr
    pid, pidfd, read_end, _ = await spawn(server, broken)
    assert await said(read_end) == []
    assert has_exited(pidfd)
    assert "spec.json" in (broken / "shim.log").read_text()


async def test_end_of_file_ends_the_server_and_its_shims_run_on(tmp_path: Path, server: ForkServer) -> None:
    with Fifo(tmp_path / "pid") as fifo:
        folder = folder_for(tmp_path, "t1", ["/bin/sh", "-c", f"echo $$ > {fifo.path}; sleep 60"])
        pid, pidfd, read_end, _ = await spawn(server, folder)
        task = await fifo.read_pid()
    os.close(read_end)
    process = server.process
    assert process is not None
    try:
        await server.close()
        assert process.returncode is not None
        assert psutil.pid_exists(pid) and psutil.pid_exists(task)
        assert psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        with pytest.raises(OSError, match="closed"):
            await spawn(server, folder_for(tmp_path, "t2", ["/bin/true"]))
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    assert has_exited(pidfd)


async def test_a_dead_server_is_replaced_at_the_next_spawn(tmp_path: Path, server: ForkServer) -> None:
    await server.start()
    first = server.process
    pid, pidfd, read_end, _ = await spawn(server, folder_for(tmp_path, "t1", ["/bin/true"]))
    assert await said(read_end) == ["started", "status"] and has_exited(pidfd)
    assert first is not None and server.process is first  # started once, before the first spawn
    first.kill()
    await asyncio.to_thread(first.wait)

    pid, pidfd, read_end, _ = await spawn(server, folder_for(tmp_path, "t2", ["/bin/true"]))
    assert await said(read_end) == ["started", "status"] and has_exited(pidfd)
    assert server.process is not None and server.process.pid != first.pid


async def test_a_cancelled_caller_leaves_requests_and_replies_in_step(tmp_path: Path, server: ForkServer) -> None:
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    folder = folder_for(tmp_path, "t1", ["/bin/true"])
    log_fd = os.open(folder / "shim.log", os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
    first = asyncio.ensure_future(server.spawn(folder, write_end, log_fd))
    await asyncio.sleep(0)  # let it start its exchange
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    assert await said(read_end) == ["started", "status"]  # the shim was forked all the same

    second = folder_for(tmp_path, "t2", ["/bin/sh", "-c", "exit 7"])
    pid, pidfd, read_end, _ = await spawn(server, second)
    assert await said(read_end) == ["started", "status"] and has_exited(pidfd)
    assert b'"exitCode": 7' in (second / STATUS).read_bytes()


async def test_a_folder_fenced_before_its_shim_claims_it_never_starts_its_command(
    tmp_path: Path, server: ForkServer
) -> None:
    """The window between the fork request and the shim's claim (shim.json), where the agent may die: the next
    agent's scan fences the folder, and a shim forked after that exits without starting anything (ADR 0011)."""
    marker = tmp_path / "ran"
    folder = folder_for(tmp_path, "t1", ["/bin/sh", "-c", f"echo x > {marker}"])
    spec = json.loads((folder / SPEC).read_bytes())
    write_consistent(folder / SPEC, {**spec, "bootId": "boot-1"})
    assert examine(folder, "boot-1") == Found.UNSTARTED
    assert examine(folder, "boot-1") == Found.UNSTARTED, "fenced once, it stays unstarted"

    pid, pidfd, read_end, _ = await spawn(server, folder)
    assert await said(read_end) == []  # never said started
    assert has_exited(pidfd)
    assert not marker.exists() and not (folder / STATUS).exists() and not (folder / STARTED).exists()
    assert "fenced" in (folder / "shim.log").read_text()


async def test_a_folder_its_shim_claimed_first_is_adopted_and_not_fenced(tmp_path: Path, server: ForkServer) -> None:
    folder = folder_for(tmp_path, "t1", ["/bin/sh", "-c", "exit 2"])
    spec = json.loads((folder / SPEC).read_bytes())
    write_consistent(folder / SPEC, {**spec, "bootId": "boot-1"})
    pid, pidfd, read_end, _ = await spawn(server, folder)
    assert await said(read_end) == ["started", "status"]
    assert has_exited(pidfd)
    assert examine(folder, "boot-1") == Found.ADOPTABLE  # a status to read
    assert examine(folder, "boot-2") == Found.LOST  # another boot's folder: it may have run
    (folder / STATUS).unlink()
    assert examine(folder, "boot-1") == Found.LOST, "claimed by a shim that is gone without a status"
    assert json.loads((folder / SHIM).read_bytes()) != FENCED


async def spare_of(server: ForkServer) -> psutil.Process:
    """The server's one spare shim, once forked (checked until TIMEOUT_S: nothing signals a fork to others)."""
    assert server.process is not None
    parent = psutil.Process(server.process.pid)
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        found = [child for child in parent.children() if child.name() == "node-shim-spare"]
        if found:
            assert len(found) == 1, "one spare at a time"
            return found[0]
        await asyncio.sleep(0.01)
    raise AssertionError("the server forked no spare shim")


async def test_a_spare_shim_waits_for_the_next_request_and_ends_with_the_server(
    tmp_path: Path, server: ForkServer
) -> None:
    await server.start()
    spare = await spare_of(server)
    assert os.getsid(spare.pid) == spare.pid
    assert spare.num_fds() == 4, "stdin, stdout, stderr and its channel: nothing else of the server's"
    spare.kill()  # a spare that died waiting is replaced when the next request comes
    spare.wait(TIMEOUT_S)
    pid, pidfd, read_end, _ = await spawn(server, folder_for(tmp_path, "t1", ["/bin/sh", "-c", "exit 3"]))
    assert await said(read_end) == ["started", "status"] and has_exited(pidfd)
    assert b'"exitCode": 3' in (tmp_path / "supervised" / "t1" / STATUS).read_bytes()

    waiting = await spare_of(server)
    assert waiting.pid not in (spare.pid, pid)
    await server.close()
    waiting.wait(TIMEOUT_S)  # end-of-file on its channel: it exits with the server
