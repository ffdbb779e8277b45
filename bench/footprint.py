"""Footprint of one agent: idle RSS and CPU with heartbeats on, and RSS as tasks pass through it.

    python bench/footprint.py [--idle 60] [--count 10000] [--rounds 2] [--heartbeat PT5S]

Idle: the agent's RSS and CPU share (user + system time over wall time) during ``--idle`` seconds with
nothing to do but its heartbeat (``--heartbeat``, shorter than the shipped 30 s so that several fall in).
Goals: RSS <= 40 MB, CPU <= 0.5 %.

Per task: ``--rounds`` jobs of ``--count`` ``/bin/true`` tasks each, one after another, each job deleted
when its tasks completed. A job's tasks are kept in memory until it is deleted (a repeated addTask must be
answered), so the figure that tells a leak is the RSS growth from the end of one round to the end of the
next: with the first round's memory free for reuse, anything the second adds stays behind per task.
"""

from __future__ import annotations

import argparse
import asyncio
import time

import psutil
from harness import local_pool, machine, run_bounded
from throughput import agent_run

MB = 1 << 20


def cpu_seconds(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return float(times.user + times.system)


async def settled_rss(proc: psutil.Process, quiet_s: float = 1.0, limit_s: float = 10.0) -> int:
    """The RSS once it has held still for ``quiet_s``: the agent finishes a deletion (its job records removed,
    its last log lines written) after the client has seen the job's statuses cleared."""
    rss, since, end = proc.memory_info().rss, time.monotonic(), time.monotonic() + limit_s
    while time.monotonic() < end and time.monotonic() - since < quiet_s:
        await asyncio.sleep(0.1)  # sampling a figure that has no event of its own
        if (now := proc.memory_info().rss) != rss:
            rss, since = now, time.monotonic()
    return rss


async def main(args: argparse.Namespace) -> None:
    extra = {"NODE_AGENT_HEARTBEAT_INTERVAL": args.heartbeat, "NODE_AGENT_JOB_WAIT": "PT60S"}
    async with local_pool(1, task_slots=args.slots, extra=extra) as pool:
        assert pool.agents[0].process is not None
        agent = psutil.Process(pool.agents[0].process.pid)
        await asyncio.sleep(2)  # past start-up: the first heartbeat and sweep are done
        rss_idle_start = agent.memory_info().rss
        cpu_start, wall_start = cpu_seconds(agent), time.perf_counter()
        await asyncio.sleep(args.idle)  # the measurement is of doing nothing, so waiting is the point
        idle_cpu = (cpu_seconds(agent) - cpu_start) / (time.perf_counter() - wall_start)
        rss_idle = agent.memory_info().rss
        uss_idle = agent.memory_full_info().uss  # what is this process's alone (no shared library pages)
        after_round = []
        for round_number in range(args.rounds):
            job_id = f"footprint{round_number}"
            rate, failed = await agent_run(pool.client, "/bin/true", args.count, args.window, job_id)
            rss_full = agent.memory_info().rss
            await pool.client.delete_job(job_id, timeout_s=600)
            after_round.append((rate, failed, rss_full, await settled_rss(agent)))
    print(f"footprint of one agent; {machine()}")
    print(f"  idle {args.idle:g} s, heartbeat {args.heartbeat}: RSS {rss_idle / MB:.1f} MB", end="")
    print(f" (at its start {rss_idle_start / MB:.1f} MB), USS {uss_idle / MB:.1f} MB")
    print(f"  idle CPU: {idle_cpu * 100:.3f} % of one core (goal <= 0.5 %); RSS goal <= 40 MB")
    for number, (rate, failed, full, deleted) in enumerate(after_round, 1):
        print(
            f"  round {number}: {args.count} tasks at {rate:.0f}/s ({failed} not succeeded): RSS {full / MB:.1f} MB "
            f"with the job, {deleted / MB:.1f} MB after deleting it"
        )
    base = after_round[0][3]
    for number, (_, _, _, deleted) in enumerate(after_round[1:], 2):
        growth = deleted - base
        print(
            f"  growth round {number - 1} -> {number} (deleted): {growth / MB:+.2f} MB, "
            f"{growth / args.count:+.0f} bytes per task"
        )
        base = deleted


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--idle", type=float, default=60, help="seconds of idle measurement")
    parser.add_argument("--heartbeat", default="PT5S", help="the agent's NODE_AGENT_HEARTBEAT_INTERVAL")
    parser.add_argument("--count", type=int, default=10000, help="tasks per round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--slots", type=int, default=8)
    parser.add_argument("--window", type=int, default=256, help="addTask commands in flight at most")
    parser.add_argument("--timeout", type=float, default=2400, help="hard limit for the whole run, in seconds")
    args = parser.parse_args()
    run_bounded(lambda: main(args), args.timeout)
