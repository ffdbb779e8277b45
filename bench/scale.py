"""Scale: many agents and tasks through one broker, placed by BatchClient, with the guarantees checked.

    python bench/scale.py [--agents 50 --tasks 10000] [--job-agents 10 --jobs 500 --job-tasks 20]

Part 1: ``--agents`` agents (each its own node root, one Mosquitto), one job with a preparation and a release
task and ``--tasks`` tasks placed by ``BatchClient.add_task`` (at most ``--window`` unanswered), then the job
terminated and deleted. Wall time and tasks/s; checks (read from the node roots): the preparation ran exactly
once on every node that got a task and nowhere else, the release once on each of those nodes, every task ran
exactly once and has exactly one state, completed with success.

Part 2: ``--jobs`` jobs of ``--job-tasks`` tasks each over ``--job-agents`` agents (``--parallel-jobs`` at a
time), each created, filled, waited for, terminated and deleted; against a baseline in the same run of one job
with as many tasks in all. The difference over the number of jobs is the per-job overhead.

Bounded by ``--timeout`` (every agent is stopped on the way out, and dies with this process anyway).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import time
from pathlib import Path

from harness import Pool, local_pool, machine, run_bounded

from node_agent.client.pool import BatchClient
from node_agent.wire.specs import Job, JobPreparationTask, JobReleaseTask, TaskSpec
from node_agent.wire.status import TaskResult, TaskState

SHARED = "$AZ_BATCH_NODE_SHARED_DIR"
PREP = f"/bin/sh -c 'echo $AZ_BATCH_JOB_ID >> {SHARED}/prep.txt'"
RELEASE = f"/bin/sh -c 'echo $AZ_BATCH_JOB_ID >> {SHARED}/release.txt'"
TASK = f"/bin/sh -c 'echo $AZ_BATCH_TASK_ID >> {SHARED}/ran.txt'"


def lines(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


async def add_all(client: BatchClient, job_id: str, task_ids: list[str], window: int) -> None:
    slots = asyncio.Semaphore(window)

    async def add(task_id: str) -> None:
        async with slots:
            await client.add_task(job_id, TaskSpec(id=task_id, command_line=TASK))

    async with asyncio.TaskGroup() as group:
        for task_id in task_ids:
            group.create_task(add(task_id))


def check_tasks(client: BatchClient, job_id: str, task_ids: list[str], roots: dict[str, Path]) -> list[str]:
    """Every task completed with success on a node, and ran exactly once there (its id once in ran.txt)."""
    problems = []
    ran = collections.Counter(line for root in roots.values() for line in lines(root / "shared" / "ran.txt"))
    for task_id in task_ids:
        task = client.view.tasks.get((job_id, task_id))
        if task is None or task.state != TaskState.COMPLETED or task.execution_info.result != TaskResult.SUCCESS:
            problems.append(f"{task_id}: not completed with success: {task and task.state}")
        if ran[task_id] != 1:
            problems.append(f"{task_id}: ran {ran[task_id]} times")
    return problems


async def one_big_job(pool: Pool, count: int, window: int) -> None:
    client = pool.client
    roots = {agent.node_id: agent.root for agent in pool.agents}
    job_id = "scale"
    job = Job(
        id=job_id,
        job_preparation_task=JobPreparationTask(command_line=PREP),
        job_release_task=JobReleaseTask(command_line=RELEASE),
    )
    task_ids = [f"t{number}" for number in range(count)]
    start = time.perf_counter()
    await client.create_job(job)
    await add_all(client, job_id, task_ids, window)
    placed = time.perf_counter()
    await client.wait_for_tasks(job_id, timeout_s=3600)
    completed = time.perf_counter()
    await client.terminate_job(job_id, timeout_s=600)
    terminated = time.perf_counter()
    problems = check_tasks(client, job_id, task_ids, roots)
    holders = collections.Counter(t.node_info.node_id for t in client.list_tasks(job_id) if t.node_info is not None)
    for node_id, root in roots.items():
        want = 1 if node_id in holders else 0
        for what in ("prep", "release"):
            got = len(lines(root / "shared" / f"{what}.txt"))
            if got != want:
                problems.append(f"{node_id}: {what} ran {got} times, expected {want}")
    await client.delete_job(job_id, timeout_s=600)
    deleted = time.perf_counter()
    print(f"part 1: {len(pool.agents)} agents, one job with preparation and release, {count} tasks")
    wall = completed - start
    print(f"  placed in {placed - start:.1f} s; all completed after {wall:.1f} s: {count / wall:.1f} tasks/s")
    print(f"  terminate (release on {len(holders)} nodes) {terminated - completed:.1f} s", end="")
    print(f"; delete {deleted - terminated:.1f} s")
    print(f"  tasks per node: min {min(holders.values(), default=0)}, max {max(holders.values(), default=0)}")
    report(problems)


async def job_round(client: BatchClient, job_id: str, tasks: int, window: int) -> list[str]:
    task_ids = [f"t{number}" for number in range(tasks)]
    await client.create_job(Job(id=job_id))
    await add_all(client, job_id, task_ids, window)
    await client.wait_for_tasks(job_id, timeout_s=3600)
    problems = [
        f"{job_id}/{t.id}: {t.state} {t.execution_info.result}"
        for t in client.list_tasks(job_id)
        if t.state != TaskState.COMPLETED or t.execution_info.result != TaskResult.SUCCESS
    ]
    problems += [f"{job_id}: {len(client.list_tasks(job_id))} tasks, expected {tasks}"] * (
        len(client.list_tasks(job_id)) != tasks
    )
    await client.terminate_job(job_id, timeout_s=600)
    await client.delete_job(job_id, timeout_s=600)
    return problems


async def many_jobs(pool: Pool, jobs: int, tasks: int, parallel: int, window: int) -> None:
    client = pool.client
    total = jobs * tasks
    start = time.perf_counter()
    baseline_problems = await job_round(client, "baseline", total, window)
    baseline = time.perf_counter() - start
    gate = asyncio.Semaphore(parallel)

    async def one(number: int) -> list[str]:
        async with gate:
            return await job_round(client, f"j{number}", tasks, max(1, window // parallel))

    start = time.perf_counter()
    async with asyncio.TaskGroup() as group:
        rounds = [group.create_task(one(number)) for number in range(jobs)]
    elapsed = time.perf_counter() - start
    print(f"part 2: {len(pool.agents)} agents, {jobs} jobs x {tasks} tasks ({parallel} jobs at a time)")
    print(f"  baseline, one job of {total} tasks: {baseline:.1f} s, {total / baseline:.1f} tasks/s")
    print(f"  {jobs} jobs: {elapsed:.1f} s, {total / elapsed:.1f} tasks/s, {jobs / elapsed:.1f} jobs/s")
    overhead_ms = (elapsed - baseline) / jobs * 1000
    print(f"  ratio jobs/baseline time: {elapsed / baseline:.2f}x; per-job overhead {overhead_ms:.0f} ms")
    report(baseline_problems + [problem for job in rounds for problem in job.result()])


def report(problems: list[str]) -> None:
    if problems:
        print(f"  CHECKS FAILED ({len(problems)}):")
        for problem in problems[:20]:
            print(f"    {problem}")
        raise SystemExit(1)
    print("  checks passed")


async def main(args: argparse.Namespace) -> None:
    print(f"scale; {machine()}")
    extra = {"NODE_AGENT_JOB_WAIT": "PT60S", "NODE_AGENT_LOG_LEVEL": "warning"}
    if args.agents > 0 and args.tasks > 0:
        async with local_pool(args.agents, task_slots=args.slots, extra=extra, command_timeout_s=300) as pool:
            await one_big_job(pool, args.tasks, args.window)
    if args.job_agents > 0 and args.jobs > 0:
        async with local_pool(args.job_agents, task_slots=args.slots, extra=extra, command_timeout_s=300) as pool:
            await many_jobs(pool, args.jobs, args.job_tasks, args.parallel_jobs, args.window)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=50, help="agents of part 1 (0 skips it)")
    parser.add_argument("--tasks", type=int, default=10000, help="tasks of part 1's job")
    parser.add_argument("--job-agents", type=int, default=10, help="agents of part 2 (0 skips it)")
    parser.add_argument("--jobs", type=int, default=500, help="jobs of part 2")
    parser.add_argument("--job-tasks", type=int, default=20, help="tasks per job in part 2")
    parser.add_argument("--parallel-jobs", type=int, default=10, help="part 2's jobs under way at once")
    parser.add_argument("--slots", type=int, default=2, help="task slots per agent")
    parser.add_argument("--window", type=int, default=64, help="addTask commands in flight at most")
    parser.add_argument("--timeout", type=float, default=3000, help="hard limit for the whole run, in seconds")
    args = parser.parse_args()
    run_bounded(lambda: main(args), args.timeout)
