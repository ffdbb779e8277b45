"""Supervisor start: how long a task's shim takes to start its command, against a bare spawn in the same run.

    python bench/supervisor_start.py [--count 300]

``--count`` runs of ``run_supervised`` for ``/bin/true``, one after another, through one fork server: the
time from the call to the shim's ``started`` line (spec.json written, fork, shim.json, the command spawned,
started.json written) and to the whole run's end (exit status read). The baseline is a bare
``asyncio.create_subprocess_exec`` of the same command, spawn to exit. A second baseline is what any
forked Python supervisor costs on this machine before it does anything: a process that imports what the
fork server imports forks a child that exits at once, and waits for it. CPU is this process's (the agent's
side); the server and the shims are not counted.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import psutil

from node_agent.runner.forkclient import ForkServer
from node_agent.runner.process import ProcessSpec
from node_agent.runner.supervised import Supervision, run_supervised

COMMAND = "/bin/true"


def _ms(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[round(q * (len(ordered) - 1))] * 1000


async def _note(moments: list[float], pid: int) -> None:
    moments.append(time.perf_counter())


async def bare(count: int) -> list[float]:
    times = []
    for _ in range(count):
        start = time.perf_counter()
        proc = await asyncio.create_subprocess_exec(COMMAND, start_new_session=True)
        await proc.wait()
        times.append(time.perf_counter() - start)
    return times


FORKS = """
import os, time, node_agent.runner.shim
times = []
for _ in range({count}):
    start = time.perf_counter()
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    times.append(time.perf_counter() - start)
print(" ".join(map(str, times)))
"""


def python_forks(count: int) -> list[float]:
    """Fork, exit and wait of a process of the fork server's size (its imports), ``count`` times."""
    out = subprocess.run([sys.executable, "-c", FORKS.format(count=count)], capture_output=True, check=True)
    return [float(value) for value in out.stdout.split()]


async def supervised(count: int, base: Path) -> tuple[list[float], list[float], float]:
    (base / "wd").mkdir(parents=True)
    server = ForkServer()
    starts, wholes = [], []
    me = psutil.Process()
    cpu = sum(me.cpu_times()[:2])
    try:
        for index in range(count):
            spec = ProcessSpec(COMMAND, base / "wd", {"PATH": os.defpath}, base / "out.txt", base / "err.txt")
            moments: list[float] = []

            start = time.perf_counter()
            where = Supervision(base / "sup" / str(index), "boot", server)
            await run_supervised(spec, asyncio.Event(), where, partial(_note, moments))
            wholes.append(time.perf_counter() - start)
            starts.append(moments[0] - start)
    finally:
        await server.close()
    return starts, wholes, (sum(me.cpu_times()[:2]) - cpu) / count * 1000


async def main(count: int) -> None:
    with tempfile.TemporaryDirectory(prefix="node-agent-bench-") as tmp:
        await supervised(min(count, 20), Path(tmp) / "warm")  # the server's own start is not what is measured
        floor = await bare(count)
        forks = await asyncio.to_thread(python_forks, count)
        starts, wholes, cpu_ms = await supervised(count, Path(tmp) / "run")
    print(f"supervisor start, {count} x {COMMAND} one at a time; load average {os.getloadavg()[0]:.1f}")
    print(f"  bare spawn to exit        : p50 {_ms(floor, 0.5):6.1f} ms  p99 {_ms(floor, 0.99):6.1f} ms")
    print(f"  fork+exit, server's size  : p50 {_ms(forks, 0.5):6.1f} ms  p99 {_ms(forks, 0.99):6.1f} ms")
    print(f"  call to started (shim up) : p50 {_ms(starts, 0.5):6.1f} ms  p99 {_ms(starts, 0.99):6.1f} ms")
    print(f"  call to exit status read  : p50 {_ms(wholes, 0.5):6.1f} ms  p99 {_ms(wholes, 0.99):6.1f} ms")
    print(f"  ratio whole / bare (p50)  : {statistics.median(wholes) / statistics.median(floor):6.2f}")
    print(f"  agent-side CPU per task   : {cpu_ms:.2f} ms")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=300)
    asyncio.run(main(parser.parse_args().count))
