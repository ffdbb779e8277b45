"""runner.supervised and runner.shim: a process under its own supervisor (forked by the fork server), and
adopting one a dead agent left."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import psutil
import pytest

from node_agent.errors import TaskFailure
from node_agent.runner.forkclient import ForkServer
from node_agent.runner.process import ProcessSpec
from node_agent.runner.supervised import ShimPipe, Supervision, adopt, is_adoptable, run_supervised, shim_alive
from tests.processes import Fifo, has_exited, open_pidfd

TIMEOUT_S = 20.0


def spec(tmp_path: Path, command_line: str, **changes: object) -> ProcessSpec:
    work = tmp_path / "wd"
    work.mkdir(exist_ok=True)
    values: dict[str, object] = {
        "command_line": command_line,
        "cwd": work,
        "env": {"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
        "stdout": tmp_path / "stdout.txt",
        "stderr": tmp_path / "stderr.txt",
    }
    values.update(changes)
    return ProcessSpec(**values)  # type: ignore[arg-type]


@pytest.fixture
async def launcher() -> AsyncIterator[ForkServer]:
    server = ForkServer()
    try:
        yield server
    finally:
        await server.close()


def supervision(tmp_path: Path, launcher: ForkServer, boot_id: str = "boot-1") -> Supervision:
    return Supervision(tmp_path / "supervised" / "t1", boot_id, launcher)


async def test_exit_code_and_output_come_through_the_supervisor(tmp_path: Path, launcher: ForkServer) -> None:
    result = await run_supervised(
        spec(tmp_path, "/bin/sh -c 'echo out; exit 3'"), asyncio.Event(), supervision(tmp_path, launcher)
    )
    assert result.exit_code == 3 and not result.timed_out and not result.killed
    assert (tmp_path / "stdout.txt").read_text() == "out\n"


async def test_the_shim_pipe_gives_whole_lines_however_they_arrive() -> None:
    read_end, write_end = os.pipe()
    pipe = ShimPipe(read_end)
    os.write(write_end, b'started\n{"exitCode"')  # a line and a half in one read
    assert await pipe.line() == b"started"
    os.write(write_end, b': 0, "endTime": 1.0}\n')
    assert await pipe.line() == b'{"exitCode": 0, "endTime": 1.0}'
    os.close(write_end)
    assert await pipe.line() is None  # end-of-file
    pipe.close()
    pipe.close()  # closed once


async def test_missing_program_is_command_program_not_found(tmp_path: Path, launcher: ForkServer) -> None:
    with pytest.raises(TaskFailure) as failure:
        await run_supervised(spec(tmp_path, "/no/such/program"), asyncio.Event(), supervision(tmp_path, launcher))
    assert failure.value.code == "CommandProgramNotFound"


async def test_supervisor_kills_the_task_at_its_wall_clock_limit(tmp_path: Path, launcher: ForkServer) -> None:
    limited = spec(tmp_path, "sleep 60", max_wall_clock=timedelta(seconds=0.5))
    result = await asyncio.wait_for(
        run_supervised(limited, asyncio.Event(), supervision(tmp_path, launcher)), TIMEOUT_S
    )
    assert result.timed_out and result.exit_code == 137


async def test_kill_event_ends_the_task_through_its_supervisor(tmp_path: Path, launcher: ForkServer) -> None:
    kill = asyncio.Event()
    fifo = Fifo(tmp_path / "pid")
    running = asyncio.ensure_future(
        run_supervised(
            spec(tmp_path, f"/bin/sh -c 'echo $$ > {fifo.path}; sleep 60'"), kill, supervision(tmp_path, launcher)
        )
    )
    pid = await fifo.read_pid()
    fifo.close()
    kill.set()
    result = await asyncio.wait_for(running, TIMEOUT_S)
    assert result.killed and not result.timed_out
    assert has_exited(open_pidfd(pid))


async def test_a_new_agent_adopts_a_running_supervisor_and_gets_the_real_exit_code(
    tmp_path: Path, launcher: ForkServer
) -> None:
    detach = asyncio.Event()
    fifo = Fifo(tmp_path / "pid")
    where = supervision(tmp_path, launcher)
    gate = tmp_path / "gate"
    os.mkfifo(gate)
    script = f"/bin/sh -c 'echo $$ > {fifo.path}; read line < {gate}; exit 5'"
    spawned = asyncio.Event()

    async def on_spawn(pid: int) -> None:
        spawned.set()

    first = asyncio.ensure_future(run_supervised(spec(tmp_path, script), asyncio.Event(), where, on_spawn, detach))
    pid = await fifo.read_pid()
    try:
        await asyncio.wait_for(spawned.wait(), TIMEOUT_S)
        fifo.close()
        detach.set()  # the agent stops and leaves the task to its supervisor
        first.cancel()
        await asyncio.wait({first})
        assert psutil.pid_exists(pid)
        assert is_adoptable(where.folder, "boot-1") and not is_adoptable(where.folder, "boot-2")

        adopted = asyncio.ensure_future(adopt(where, asyncio.Event()))
        await asyncio.to_thread(lambda: gate.write_text("go\n"))
        result = await asyncio.wait_for(adopted, TIMEOUT_S)
        assert result.exit_code == 5
        assert shim_alive(where.folder) is None
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)  # a failed test leaves no task (nor its supervisor) waiting on the gate


async def test_adopted_supervisor_keeps_the_original_deadline(tmp_path: Path, launcher: ForkServer) -> None:
    detach = asyncio.Event()
    where = supervision(tmp_path, launcher)
    limited = spec(tmp_path, "sleep 60", max_wall_clock=timedelta(seconds=1.5))
    started = time.monotonic()
    spawned = asyncio.Event()

    async def on_spawn(pid: int) -> None:
        spawned.set()

    first = asyncio.ensure_future(run_supervised(limited, asyncio.Event(), where, on_spawn, detach))
    await asyncio.wait_for(spawned.wait(), TIMEOUT_S)
    detach.set()
    first.cancel()
    await asyncio.wait({first})

    result = await asyncio.wait_for(adopt(where, asyncio.Event()), TIMEOUT_S)
    assert result.timed_out
    assert time.monotonic() - started < 10  # counted from the first start, not from the adoption


@pytest.mark.parametrize("link", ["symbolic", "hard"])
async def test_shim_refuses_an_output_file_that_is_a_link_and_leaves_its_target_alone(
    tmp_path: Path, launcher: ForkServer, link: str
) -> None:
    target = tmp_path / "precious.txt"
    target.write_text("keep me\n")
    if link == "symbolic":
        (tmp_path / "stdout.txt").symlink_to(target)
    else:
        os.link(target, tmp_path / "stdout.txt")
    with pytest.raises(TaskFailure) as failure:
        await run_supervised(spec(tmp_path, "/bin/echo overwritten"), asyncio.Event(), supervision(tmp_path, launcher))
    assert failure.value.code == "CommandLaunchFailed" and "output file" in failure.value.message
    assert target.read_text() == "keep me\n"


async def test_shim_applies_the_task_umask(tmp_path: Path, launcher: ForkServer) -> None:
    command = "/bin/sh -c 'umask; touch made'"
    result = await run_supervised(
        spec(tmp_path, command, umask=0o027), asyncio.Event(), supervision(tmp_path, launcher)
    )
    assert result.exit_code == 0
    assert (tmp_path / "stdout.txt").read_text() == "0027\n"
    assert (tmp_path / "wd" / "made").stat().st_mode & 0o777 == 0o640


async def test_a_wall_clock_limit_past_what_select_can_wait_is_no_limit_in_practice(
    tmp_path: Path, launcher: ForkServer
) -> None:
    huge = timedelta(days=99_999_999)
    result = await run_supervised(
        spec(tmp_path, "/bin/sh -c 'exit 2'", max_wall_clock=huge), asyncio.Event(), supervision(tmp_path, launcher)
    )
    assert result.exit_code == 2 and not result.timed_out


async def test_no_supervisor_to_fork_is_command_launch_failed(tmp_path: Path, launcher: ForkServer) -> None:
    await launcher.close()  # as when the agent is stopping
    with pytest.raises(TaskFailure) as failure:
        await run_supervised(spec(tmp_path, "/bin/true"), asyncio.Event(), supervision(tmp_path, launcher))
    assert failure.value.code == "CommandLaunchFailed" and "fork server" in failure.value.message


async def test_a_cancel_without_detach_ends_the_task_and_leaves_nothing_to_adopt(
    tmp_path: Path, launcher: ForkServer
) -> None:
    where = supervision(tmp_path, launcher)
    spawned = asyncio.Event()

    async def on_spawn(pid: int) -> None:
        spawned.set()

    with Fifo(tmp_path / "pid") as fifo:
        command = f"/bin/sh -c 'echo $$ > {fifo.path}; sleep 60'"
        running = asyncio.ensure_future(run_supervised(spec(tmp_path, command), asyncio.Event(), where, on_spawn))
        task = open_pidfd(await fifo.read_pid())
    await asyncio.wait_for(spawned.wait(), TIMEOUT_S)
    running.cancel()  # a stop that hands tasks back: the shim has recorded itself and may record the kill
    await asyncio.wait({running})
    assert has_exited(task)
    assert not is_adoptable(where.folder, "boot-1") and not where.folder.exists()


async def test_runs_that_end_every_way_leave_no_fd_open_and_no_reader_registered(
    tmp_path: Path, launcher: ForkServer
) -> None:
    await run_supervised(spec(tmp_path, "/bin/true"), asyncio.Event(), supervision(tmp_path, launcher))  # server up
    selector = asyncio.get_running_loop()._selector  # type: ignore[attr-defined]
    fds_before, readers_before = set(os.listdir("/proc/self/fd")), len(selector.get_map())

    await run_supervised(spec(tmp_path, "/bin/sh -c 'exit 5'"), asyncio.Event(), supervision(tmp_path, launcher))
    for ending in ("kill", "cancel"):
        kill, spawned = asyncio.Event(), asyncio.Event()

        async def on_spawn(pid: int, spawned: asyncio.Event = spawned) -> None:
            spawned.set()

        where = Supervision(tmp_path / "supervised" / ending, "boot-1", launcher)
        running = asyncio.ensure_future(run_supervised(spec(tmp_path, "sleep 60"), kill, where, on_spawn))
        await asyncio.wait_for(spawned.wait(), TIMEOUT_S)
        kill.set() if ending == "kill" else running.cancel()
        await asyncio.wait({running}, timeout=TIMEOUT_S)
        assert running.done()

    assert set(os.listdir("/proc/self/fd")) == fds_before
    assert len(selector.get_map()) == readers_before
