"""Throughput: many trivial tasks on one agent against a bare asyncio spawn loop with the same concurrency.

    python bench/throughput.py [--count 10000] [--slots 8] [--profile stacks.txt]

The bare loop runs ``--slots`` workers, each spawning the command and waiting for it until ``--count`` ran.
The agent gets ``--count`` addTask commands from BatchClient (at most ``--window`` unanswered at a time) on a
node with ``--slots`` task slots; its figure is from the first addTask to the last ``completed`` event seen.
The goal is an agent figure of at least half the bare one.

``--syscalls FILE`` counts the agent's fsync, rename, unlink, mkdir and process-creating calls with
``strace -f -c`` (slows the run: use it for the counts, not the rate). ``--loop-syscalls FILE`` counts every
system call of the event loop's thread alone (``strace -c`` without ``-f``) and names the file system calls among
them, which belong in worker threads (none is expected). ``--profile FILE`` records the agent
with py-spy (``pip install py-spy``) during its run and writes collapsed stacks to FILE; ``--top N`` prints
the functions with the most own samples.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import shlex
import shutil
import time
from pathlib import Path

import psutil
from harness import local_pool, machine, run_bounded

from node_agent.client.pool import BatchClient
from node_agent.wire.specs import Job, TaskSpec
from node_agent.wire.status import Event, TaskResult, TaskState


async def bare_loop(command: str, count: int, concurrency: int) -> float:
    """Tasks per second of ``concurrency`` workers spawning ``command`` until ``count`` ran; the CPU this
    process spent per spawn goes to ``BARE_CPU_MS``."""
    argv = shlex.split(command)
    left = count

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
                start_new_session=True,
            )
            await proc.wait()

    me = psutil.Process()
    cpu = sum(me.cpu_times()[:2])
    start = time.perf_counter()
    async with asyncio.TaskGroup() as group:
        for _ in range(concurrency):
            group.create_task(worker())
    BARE_CPU_MS.append((sum(me.cpu_times()[:2]) - cpu) / count * 1000)
    return count / (time.perf_counter() - start)


async def agent_run(client: BatchClient, command: str, count: int, window: int, job_id: str) -> tuple[float, int]:
    """Tasks per second from the first addTask to the last completed event; and how many did not succeed."""
    await client.create_job(Job(id=job_id))
    done = asyncio.Event()
    finished: set[str] = set()
    failed = 0

    def on_event(event: Event) -> None:
        nonlocal failed
        if event.job_id != job_id or event.type != "taskStateChanged" or event.state != TaskState.COMPLETED:
            return
        assert event.task_id is not None
        finished.add(event.task_id)
        if event.task is None or event.task.execution_info.result != TaskResult.SUCCESS:
            failed += 1
        if len(finished) == count:
            done.set()

    client.on_event = on_event
    slots = asyncio.Semaphore(window)

    async def add(number: int) -> None:
        async with slots:
            await client.add_task(job_id, TaskSpec(id=f"t{number}", command_line=command), node_id="node1")

    start = time.perf_counter()
    async with asyncio.TaskGroup() as group:
        for number in range(count):
            group.create_task(add(number))
    await done.wait()
    elapsed = time.perf_counter() - start
    client.on_event = None
    return count / elapsed, failed


async def start_profiler(pid: int, out: Path) -> asyncio.subprocess.Process:
    py_spy = shutil.which("py-spy")
    if py_spy is None:
        raise SystemExit("--profile needs py-spy on PATH (pip install py-spy)")
    return await asyncio.create_subprocess_exec(
        py_spy, "record", "--pid", str(pid), "--format", "raw", "--rate", "200", "--output", str(out),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip


BARE_CPU_MS: list[float] = []

STRACED = "fsync,fdatasync,rename,unlink,mkdir,clone,clone3,vfork"


# System calls that touch the file system (names, inodes or file data): on the event loop's thread they block it.
FILE_CALLS = {
    "open", "openat", "creat", "stat", "lstat", "newfstatat", "statx", "access", "faccessat", "faccessat2",
    "readlink", "readlinkat", "getdents64", "mkdir", "mkdirat", "rmdir", "unlink", "unlinkat", "rename",
    "renameat", "renameat2", "link", "linkat", "chown", "fchown", "fchownat", "chmod", "fchmod", "truncate",
    "ftruncate", "fsync", "fdatasync", "sync_file_range",
}  # fmt: skip


async def start_strace(pid: int, out: Path, *, loop_thread: bool = False) -> asyncio.subprocess.Process:
    """``strace -c`` of the agent: of all its threads, the calls in STRACED; or of its event loop's thread alone
    (the thread whose id is the pid), every call."""
    strace = shutil.which("strace")
    if strace is None:
        raise SystemExit("--syscalls and --loop-syscalls need strace on PATH (apt-get install strace)")
    which = [] if loop_thread else ["-f", "-e", f"trace={STRACED}"]
    return await asyncio.create_subprocess_exec(
        strace, "-c", *which, "-p", str(pid), "-o", str(out),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip


def syscalls_per_task(summary: Path, count: int, names: set[str] | None = None) -> list[tuple[str, float]]:
    """strace -c's table as (syscall, calls per task), most calls first: those in ``names`` (default STRACED)."""
    names = set(STRACED.split(",")) if names is None else names
    rows = []
    for raw in summary.read_text().splitlines():
        fields = raw.split()
        if len(fields) >= 5 and fields[-1] in names and fields[3].isdigit():
            rows.append((fields[-1], int(fields[3]) / count))
    return sorted(rows, key=lambda row: -row[1])


def all_syscalls(summary: Path) -> set[str]:
    """Every system call named in strace -c's table."""
    rows = map(str.split, summary.read_text().splitlines())
    return {fields[-1] for fields in rows if len(fields) >= 5 and fields[-1] != "total"}


def thread_times(proc: psutil.Process) -> dict[int, tuple[float, float]]:
    """Each thread's (user, system) CPU seconds, by thread id."""
    return {thread.id: (thread.user_time, thread.system_time) for thread in proc.threads()}


def cpu_split(pid: int, before: dict[int, tuple[float, float]], after: dict[int, tuple[float, float]]) -> str:
    """User and system CPU of the event loop's thread and of all other threads, between two ``thread_times``."""
    spent = {"loop": [0.0, 0.0], "threads": [0.0, 0.0]}
    for tid, (user, system) in after.items():
        was = before.get(tid, (0.0, 0.0))
        side = spent["loop" if tid == pid else "threads"]
        side[0] += user - was[0]
        side[1] += system - was[1]
    return "; ".join(f"{name} user {u:.2f} s, system {s:.2f} s" for name, (u, s) in spent.items())


def top_functions(stacks: Path, count: int) -> list[tuple[str, float]]:
    """The functions with the most own samples (the last frame of each stack), as shares of all samples."""
    own: collections.Counter[str] = collections.Counter()
    total = 0
    for raw in stacks.read_text().splitlines():
        frames, _, samples = raw.rpartition(" ")
        if not frames:
            continue
        own[frames.split(";")[-1]] += int(samples)
        total += int(samples)
    return [(name, n / total) for name, n in own.most_common(count)]


async def main(args: argparse.Namespace) -> None:
    command = "/bin/true"
    extra = {
        "NODE_AGENT_LOG_LEVEL": args.log_level,
        "NODE_AGENT_JOB_WAIT": "PT60S",
        "NODE_AGENT_EVENT_LOOP": args.agent_loop,
    }
    warm = max(10, args.count // 50)
    async with local_pool(1, task_slots=args.slots, extra=extra) as pool:
        await bare_loop(command, warm, args.slots)
        bare = await bare_loop(command, args.count, args.slots)
        await agent_run(pool.client, command, warm, args.window, "warm")
        assert pool.agents[0].process is not None
        pid = pool.agents[0].process.pid
        profiler = await start_profiler(pid, args.profile) if args.profile is not None else None
        tracer = await start_strace(pid, args.syscalls) if args.syscalls is not None else None
        loop_tracer = None
        if args.loop_syscalls is not None:
            loop_tracer = await start_strace(pid, args.loop_syscalls, loop_thread=True)
        agent_proc, bench_proc = psutil.Process(pid), psutil.Process()
        cpu_before = sum(agent_proc.cpu_times()[:2]), sum(bench_proc.cpu_times()[:2])
        threads_before = thread_times(agent_proc)
        agent, failed = await agent_run(pool.client, command, args.count, args.window, "run")
        agent_cpu = sum(agent_proc.cpu_times()[:2]) - cpu_before[0]
        bench_cpu = sum(bench_proc.cpu_times()[:2]) - cpu_before[1]
        split = cpu_split(pid, threads_before, thread_times(agent_proc))
        for watcher in (profiler, tracer, loop_tracer):
            if watcher is not None:
                watcher.send_signal(2)  # SIGINT: py-spy and strace write their output and exit
                await watcher.wait()
        bare_after = await bare_loop(command, args.count, args.slots)
    print(f"throughput, {args.count} x {command}, concurrency {args.slots}; {machine()}")
    print(f"  bare asyncio spawn loop : {bare:8.1f} tasks/s (after the agent run: {bare_after:.1f})")
    print(f"  agent (addTask->completed): {agent:8.1f} tasks/s, {failed} not succeeded")
    print(
        f"  CPU per task: bare loop {BARE_CPU_MS[1]:.2f} ms; agent {agent_cpu / args.count * 1000:.2f} ms, client "
        f"{bench_cpu / args.count * 1000:.2f} ms"
    )
    print(f"  agent CPU by thread: {split}")
    print(f"  ratio agent / bare      : {agent / bare:8.2f}  (goal >= 0.50)")
    if args.profile is not None and args.profile.exists():
        print(f"  agent profile ({args.profile}), own time:")
        for name, share in top_functions(args.profile, args.top):
            print(f"    {share * 100:5.1f} %  {name}")
    if args.syscalls is not None and args.syscalls.exists():
        calls = ", ".join(f"{name} {per:.2f}" for name, per in syscalls_per_task(args.syscalls, args.count))
        print(f"  agent system calls per task (strace -f -c, during the run): {calls}")
    if args.loop_syscalls is not None and args.loop_syscalls.exists():
        every = syscalls_per_task(args.loop_syscalls, args.count, all_syscalls(args.loop_syscalls))
        print("  event loop thread, system calls per task: " + ", ".join(f"{n} {per:.2f}" for n, per in every))
        on_files = [f"{name} {per:.3f}" for name, per in every if name in FILE_CALLS]
        print(f"  of them on the file system (belong in threads): {', '.join(on_files) or 'none'}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=10000)
    parser.add_argument("--slots", type=int, default=8, help="agent task slots = bare loop concurrency")
    parser.add_argument("--window", type=int, default=256, help="addTask commands in flight at most")
    parser.add_argument("--agent-loop", default="asyncio", help="the agent's NODE_AGENT_EVENT_LOOP: asyncio or uvloop")
    parser.add_argument("--log-level", default="info", help="the agent's NODE_AGENT_LOG_LEVEL (default info)")
    parser.add_argument("--profile", type=Path, help="py-spy the agent during its run; collapsed stacks here")
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--syscalls", type=Path, help="strace -c the agent during its run; its table here")
    parser.add_argument("--loop-syscalls", type=Path, help="strace -c the event loop's thread alone; its table here")
    parser.add_argument("--timeout", type=float, default=1200, help="hard limit for the whole run, in seconds")
    args = parser.parse_args()
    run_bounded(lambda: main(args), args.timeout)
