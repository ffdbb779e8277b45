"""Dispatch latency: a client's addTask to the task's process running, and its exit to the client knowing.

    python bench/dispatch.py [--count 2000] [--uvloop]

One agent with one slot, tasks sent one after another through BatchClient. In the same run, through the same
broker: a raw MQTT QoS 1 round trip (bench/rtt.py) and a bare ``asyncio.create_subprocess_exec`` of the same
command. The floor of addTask -> completed is round trip + bare spawn-to-exit-known; the ratio to it is the
figure that matters (the goal is 2x or less).

How the moments are taken, all in this process with ``time.perf_counter``:

- *running*: the command is ``/bin/sh -c 'echo $$ > FIFO'``; the bench holds the FIFO open for reading (and a
  writer of its own, so it never sees end-of-file) with ``loop.add_reader``; the pid arriving on it is the
  moment the process runs (after the shell's start-up, the same in the bare spawn).
- *exit*: ``os.pidfd_open(pid)`` polled for readability, which Linux signals when the process exits; if the
  agent had already reaped it, the moment the bench learns that is taken (counted as "late" and printed).
- *completed*: ``BatchClient.on_event`` seeing the ``taskStateChanged`` event with state ``completed``.
- *exit known*, a second view of the exit that does not depend on this process waking in time: the task's
  ``executionInfo.endTime``, taken by the agent once it reaped the process (wall clock, same machine).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import time
from pathlib import Path

from harness import local_pool, machine, ms, p50, pct, run_bounded
from rtt import round_trips

from node_agent.client.pool import BatchClient
from node_agent.wire.specs import Job, TaskSpec
from node_agent.wire.status import Event, TaskState


class Fifo:
    """Lines written to a named pipe, each with the moment it arrived."""

    def __init__(self, path: Path) -> None:
        os.mkfifo(path)
        os.chmod(path, 0o666)  # as root, tasks run as an unprivileged pool user: it must be able to write here
        self.path = path
        self._read_fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        self._keep_fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)  # a writer of our own: no end-of-file, ever
        self._buffer = b""
        self._lines: asyncio.Queue[tuple[float, int]] = asyncio.Queue()
        asyncio.get_running_loop().add_reader(self._read_fd, self._on_readable)

    def _on_readable(self) -> None:
        now = time.perf_counter()
        self._buffer += os.read(self._read_fd, 4096)
        while b"\n" in self._buffer:
            line, self._buffer = self._buffer.split(b"\n", 1)
            self._lines.put_nowait((now, int(line)))

    async def next(self) -> tuple[float, int]:
        return await self._lines.get()

    def close(self) -> None:
        asyncio.get_running_loop().remove_reader(self._read_fd)
        os.close(self._read_fd)
        os.close(self._keep_fd)


class ExitClock:
    """The moment a process exits, through a pidfd; ``late`` counts processes already reaped when asked."""

    def __init__(self) -> None:
        self.late = 0

    async def exited(self, pid: int) -> float:
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            self.late += 1
            return time.perf_counter()
        loop = asyncio.get_running_loop()
        done: asyncio.Future[float] = loop.create_future()
        loop.add_reader(fd, lambda: done.done() or done.set_result(time.perf_counter()))
        try:
            return await done
        finally:
            loop.remove_reader(fd)
            os.close(fd)


async def bare_spawns(command: str, fifo: Fifo, clock: ExitClock, count: int) -> dict[str, list[float]]:
    argv = shlex.split(command)
    out: dict[str, list[float]] = {"spawn_to_running": [], "exit_to_known": [], "total": []}
    for _ in range(count):
        start = time.perf_counter()
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
            start_new_session=True,
        )
        running, pid = await fifo.next()
        exited = await clock.exited(pid)
        await proc.wait()
        known = time.perf_counter()
        out["spawn_to_running"].append(running - start)
        out["exit_to_known"].append(known - exited)
        out["total"].append(known - start)
    return out


async def agent_tasks(
    client: BatchClient, command: str, fifo: Fifo, clock: ExitClock, count: int, tag: str
) -> dict[str, list[float]]:
    completed: dict[str, asyncio.Future[float]] = {}

    def on_event(event: Event) -> None:
        if event.type == "taskStateChanged" and event.state == TaskState.COMPLETED and event.task_id in completed:
            future = completed[event.task_id]
            if not future.done():
                future.set_result(time.perf_counter())
                end = event.task.execution_info.end_time if event.task is not None else None
                if end is not None:  # the agent's clock when it knew the exit; the same machine's wall clock
                    out["known_to_completed"].append(time.time() - end.timestamp())

    client.on_event = on_event
    job_id = f"dispatch-{tag}"
    await client.create_job(Job(id=job_id))
    out: dict[str, list[float]] = {
        "add_to_running": [],
        "exit_to_completed": [],
        "known_to_completed": [],
        "total": [],
        "add_to_reply": [],
    }
    loop = asyncio.get_running_loop()
    for number in range(count):
        task_id = f"t{number}"
        completed[task_id] = loop.create_future()
        start = time.perf_counter()
        add = asyncio.create_task(client.add_task(job_id, TaskSpec(id=task_id, command_line=command), node_id="node1"))
        add.add_done_callback(lambda _, started=start: out["add_to_reply"].append(time.perf_counter() - started))
        running, pid = await fifo.next()
        exited = await clock.exited(pid)
        done = await asyncio.wait_for(completed[task_id], 30)
        del completed[task_id]
        await add
        out["add_to_running"].append(running - start)
        out["exit_to_completed"].append(done - exited)
        out["total"].append(done - start)
    client.on_event = None
    return out


def line(label: str, samples: list[float]) -> str:
    return f"  {label:<34} p50 {ms(p50(samples)):8.3f}  p99 {ms(pct(samples, 99)):8.3f}"


async def main(args: argparse.Namespace) -> None:
    extra = {"NODE_AGENT_LOG_LEVEL": args.log_level, "NODE_AGENT_EVENT_LOOP": args.agent_loop}
    async with local_pool(1, task_slots=1, extra=extra) as pool:
        fifo = Fifo(pool.base / "running.fifo")
        command = f"/bin/sh -c 'echo $$ > {fifo.path}'"
        clock = ExitClock()
        warm = max(5, min(50, args.count // 10))
        await round_trips(pool.broker.port, warm, True)
        await bare_spawns(command, fifo, clock, warm)
        await agent_tasks(pool.client, command, fifo, clock, warm, "warm")
        rtt = await round_trips(pool.broker.port, args.count, True)
        rtt = [sample / 1000 for sample in rtt]
        bare = await bare_spawns(command, fifo, clock, args.count)
        clock.late = 0
        agent = await agent_tasks(pool.client, command, fifo, clock, args.count, "run")
        rtt_after = [sample / 1000 for sample in await round_trips(pool.broker.port, args.count, True)]
        fifo.close()
    floor = p50(rtt) + p50(bare["total"])
    print(f"dispatch latency, {args.count} sequential tasks each (ms); {machine()}")
    print(line("MQTT QoS 1 round trip", rtt))
    print(line("MQTT QoS 1 round trip (after)", rtt_after))
    print(line("bare spawn -> running", bare["spawn_to_running"]))
    print(line("bare exit -> exit known (wait())", bare["exit_to_known"]))
    print(line("bare spawn -> exit known", bare["total"]))
    print(line("agent addTask -> running", agent["add_to_running"]))
    print(line("agent addTask -> reply", agent["add_to_reply"]))
    print(line("agent exit -> client has completed", agent["exit_to_completed"]))
    print(line("agent exit known (endTime) -> client", agent["known_to_completed"]))
    print(line("agent addTask -> completed", agent["total"]))
    print(f"  floor (round trip + bare spawn->exit known) p50 {ms(floor):8.3f}")
    print(f"  ratio addTask->completed / floor  p50 {p50(agent['total']) / floor:6.2f}x  (goal <= 2x)")
    print(f"  agent's task processes already reaped when the bench asked for their exit: {clock.late}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=2000, help="tasks (and round trips, bare spawns) measured")
    parser.add_argument("--agent-loop", default="asyncio", help="the agent's NODE_AGENT_EVENT_LOOP: asyncio or uvloop")
    parser.add_argument("--log-level", default="info", help="the agent's NODE_AGENT_LOG_LEVEL (default info)")
    parser.add_argument("--uvloop", action="store_true", help="run this bench's own loop on uvloop")
    parser.add_argument("--timeout", type=float, default=900, help="hard limit for the whole run, in seconds")
    args = parser.parse_args()
    run_bounded(lambda: main(args), args.timeout, uvloop=args.uvloop)
