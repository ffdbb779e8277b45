"""runner.process: the command line without a shell, exit codes, the wall-clock limit, killing whole trees."""

from __future__ import annotations

import asyncio
import os
import select
import shlex
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from node_agent.errors import TaskFailure
from node_agent.runner.process import ProcessSpec, run_process, split_command_line
from node_agent.runner.tree import kill_tree
from tests.processes import Fifo, has_exited, open_pidfd

TIMEOUT_S = 20.0


def spec(tmp_path: Path, command_line: str, **changes: object) -> ProcessSpec:
    values: dict[str, object] = {
        "command_line": command_line,
        "cwd": tmp_path,
        "env": {"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
        "stdout": tmp_path / "stdout.txt",
        "stderr": tmp_path / "stderr.txt",
    }
    values.update(changes)
    return ProcessSpec(**values)  # type: ignore[arg-type]


def tree(fifo: Path) -> str:
    """A shell whose child shell starts a grandchild, writes the grandchild's pid into ``fifo`` and waits."""
    inner = f"sleep 300 & echo $! > {shlex.quote(str(fifo))}; wait"
    return shlex.join(["/bin/sh", "-c", f"/bin/sh -c {shlex.quote(inner)}; exit $?"])


# -- split_command_line --------------------------------------------------------------------------------------


def test_command_line_is_split_like_a_posix_shell_without_expansion() -> None:
    assert split_command_line("echo $HOME 'a  b' \"c d\" ; >x") == ["echo", "$HOME", "a  b", "c d", ";", ">x"]
    assert split_command_line("/bin/sh -c 'exit 3'") == ["/bin/sh", "-c", "exit 3"]


@pytest.mark.parametrize(("command_line", "reason"), [("", "empty"), ("   ", "empty"), ("echo 'open", "parsed")])
def test_empty_or_unparseable_command_line_is_command_launch_failed(command_line: str, reason: str) -> None:
    with pytest.raises(TaskFailure) as failure:
        split_command_line(command_line)
    assert failure.value.code == "CommandLaunchFailed"
    assert reason in failure.value.message


# -- run_process ---------------------------------------------------------------------------------------------


async def test_exit_code_output_files_and_exact_environment(tmp_path: Path) -> None:
    command = "/bin/sh -c 'echo out; echo err >&2; echo \"$ONLY_THIS\"; env | grep -c . ; exit 5'"
    result = await run_process(spec(tmp_path, command, env={"ONLY_THIS": "yes"}), asyncio.Event())
    assert (result.exit_code, result.timed_out, result.killed) == (5, False, False)
    lines = (tmp_path / "stdout.txt").read_text().splitlines()
    assert lines[:2] == ["out", "yes"]
    assert int(lines[2]) <= 4  # ONLY_THIS plus what /bin/sh itself sets (PWD, SHLVL...), nothing inherited
    assert (tmp_path / "stderr.txt").read_text() == "err\n"


async def test_process_killed_by_a_signal_reports_128_plus_the_signal(tmp_path: Path) -> None:
    result = await run_process(spec(tmp_path, "/bin/sh -c 'kill -TERM $$'"), asyncio.Event())
    assert result.exit_code == 128 + 15


async def test_output_files_are_truncated_per_run(tmp_path: Path) -> None:
    (tmp_path / "stdout.txt").write_text("old output that is longer\n")
    await run_process(spec(tmp_path, "echo new"), asyncio.Event())
    assert (tmp_path / "stdout.txt").read_text() == "new\n"


async def test_missing_program_is_command_program_not_found(tmp_path: Path) -> None:
    with pytest.raises(TaskFailure) as failure:
        await run_process(spec(tmp_path, "/no/such/program"), asyncio.Event())
    assert failure.value.code == "CommandProgramNotFound"
    with pytest.raises(TaskFailure) as failure:
        await run_process(spec(tmp_path, "no-such-program-on-path", env={"PATH": str(tmp_path)}), asyncio.Event())
    assert failure.value.code == "CommandProgramNotFound"


async def test_program_that_cannot_be_executed_is_command_launch_failed(tmp_path: Path) -> None:
    script = tmp_path / "not-executable"
    script.write_text("#!/bin/sh\nexit 0\n")
    script.chmod(0o644)
    if os.geteuid() == 0:
        script.chmod(0o600)  # root may execute any file with an x bit; none is set
    with pytest.raises(TaskFailure) as failure:
        await run_process(spec(tmp_path, str(script)), asyncio.Event())
    assert failure.value.code == "CommandLaunchFailed"


async def test_wall_clock_limit_kills_the_whole_tree(tmp_path: Path) -> None:
    with Fifo(tmp_path / "grandchild.pid") as fifo:
        limited = spec(tmp_path, tree(fifo.path), max_wall_clock=timedelta(seconds=1))
        result = await run_process(limited, asyncio.Event())
        assert (result.timed_out, result.killed, result.exit_code) == (True, False, 137)
        pid = fifo.pid_if_written()  # written long before the limit, except on a badly overloaded machine
    if pid is not None:
        assert has_exited(open_pidfd(pid))


async def test_kill_event_kills_the_whole_tree(tmp_path: Path) -> None:
    kill = asyncio.Event()
    with Fifo(tmp_path / "grandchild.pid") as fifo:
        runner = asyncio.create_task(run_process(spec(tmp_path, tree(fifo.path)), kill))
        grandchild = open_pidfd(await fifo.read_pid())
    kill.set()
    result = await asyncio.wait_for(runner, TIMEOUT_S)
    assert (result.killed, result.timed_out, result.exit_code) == (True, False, 137)
    assert has_exited(grandchild)


async def test_cancelling_the_run_kills_the_whole_tree(tmp_path: Path) -> None:
    with Fifo(tmp_path / "grandchild.pid") as fifo:
        runner = asyncio.create_task(run_process(spec(tmp_path, tree(fifo.path)), asyncio.Event()))
        grandchild = open_pidfd(await fifo.read_pid())
    runner.cancel()
    with pytest.raises(asyncio.CancelledError):
        await runner
    assert has_exited(grandchild)


# -- kill_tree -----------------------------------------------------------------------------------------------


def _start_tree(tmp_path: Path, *, leave_group: bool) -> tuple[subprocess.Popen[bytes], int]:
    """A tree as a task makes it: the shell, and the grandchild's pid read from a FIFO (no polling)."""
    fifo = tmp_path / "grandchild.pid"
    os.mkfifo(fifo)
    fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        target = shlex.quote(str(fifo))
        inner = f"sleep 300 & echo $! > {target}; wait"
        if leave_group:  # a grandchild in its own session: killing the process group does not reach it
            announce = f"open({str(fifo)!r}, 'w').write(f'{{os.getpid()}}\\n')"
            code = f"import os, time; os.setsid(); {announce}; time.sleep(300)"
            inner = f"{shlex.quote(sys.executable)} -c {shlex.quote(code)} & wait"
        command = ["/bin/sh", "-c", f"/bin/sh -c {shlex.quote(inner)}; exit $?"]
        proc = subprocess.Popen(command, start_new_session=True)
        data = b""
        while b"\n" not in data:
            readable, _, _ = select.select([fd], [], [], TIMEOUT_S)
            assert readable, "the tree did not announce its grandchild"
            try:
                chunk = os.read(fd, 64)
            except BlockingIOError:
                continue
            assert chunk, "the FIFO closed before a pid was written"
            data += chunk
        return proc, int(data)
    finally:
        os.close(fd)


@pytest.mark.parametrize("leave_group", [False, True], ids=["same-group", "own-session"])
def test_kill_tree_kills_a_grandchild(tmp_path: Path, leave_group: bool) -> None:
    proc, grandchild_pid = _start_tree(tmp_path, leave_group=leave_group)
    grandchild = open_pidfd(grandchild_pid)
    try:
        assert kill_tree(proc.pid) >= 3  # the shell, its child shell and the grandchild
        assert proc.wait(timeout=TIMEOUT_S) == -9
        assert has_exited(grandchild)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_kill_tree_of_a_finished_process_is_harmless() -> None:
    proc = subprocess.Popen(["/bin/true"], start_new_session=True)
    proc.wait()
    assert kill_tree(proc.pid) == 0
