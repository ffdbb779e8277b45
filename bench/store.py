"""The record store alone: the writes of many tasks through RecordStore against one put per thread job.

    python bench/store.py [--count 1000] [--concurrency 8] [--dir DIR]

Each simulated task writes what the agent writes for one task: its record when accepted, when running,
when completed and once its result is published (durable puts), and its process record
(``put_unsynced``), one after another; ``--concurrency`` tasks do so at a time. The baseline, in the same
run and on the same disk, is the store as it was before group commit: every put a write, fsync, rename
and fsync of the directory (making the directory first) in a thread-pool job of its own, and the process
record written the same way. Reports tasks/s of both and their ratio, fsyncs per task (os.fsync counted)
and the p50/p99 latency of one durable put.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from harness import machine, ms, p50, pct, run_bounded

from node_agent.store.records import RecordStore

FSYNCS = itertools.count()
_real_fsync = os.fsync


def _counting_fsync(fd: int) -> None:
    next(FSYNCS)
    _real_fsync(fd)


def _write_each(path: Path, data: bytes) -> None:
    """The store's write before group commit."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class OnePutPerThread:
    def __init__(self, root: Path) -> None:
        self.root = root

    async def put(self, key: tuple[str, ...], document: dict[str, Any]) -> None:
        path = self.root.joinpath(*key[:-1], key[-1] + ".json")
        await asyncio.to_thread(_write_each, path, json.dumps(document, separators=(",", ":")).encode())

    put_unsynced = put


Put = Callable[[tuple[str, ...], dict[str, Any]], Awaitable[None]]


async def run_tasks(durable: Put, unsynced: Put, count: int, concurrency: int) -> tuple[float, list[float]]:
    """Tasks per second, and the latency of each durable put."""
    latencies: list[float] = []
    ids = iter(range(count))

    async def timed(key: tuple[str, ...], document: dict[str, Any]) -> None:
        start = time.perf_counter()
        await durable(key, document)
        latencies.append(time.perf_counter() - start)

    async def worker() -> None:
        for n in ids:
            task = ("jobs", "bench", "tasks", f"t{n}")
            document = {"id": f"t{n}", "commandLine": "/bin/true", "state": "active", "padding": "x" * 600}
            await timed(task, document)
            await timed(task, {**document, "state": "running"})
            await unsynced(("processes", "bench", f"t{n}"), {"pid": n, "createTime": 1.0})
            await timed(task, {**document, "state": "completed", "published": False})
            await timed(task, {**document, "state": "completed", "published": True})

    start = time.perf_counter()
    async with asyncio.TaskGroup() as group:
        for _ in range(concurrency):
            group.create_task(worker())
    return count / (time.perf_counter() - start), latencies


async def one_round(name: str, root: Path, args: argparse.Namespace) -> tuple[float, float, list[float]]:
    """Tasks/s, fsyncs per task and durable put latencies of one round of ``name``."""
    before = next(FSYNCS)
    if name == "RecordStore":
        store = RecordStore(root)
        rate, latencies = await run_tasks(store.put, store.put_unsynced, args.count, args.concurrency)
    else:
        plain = OnePutPerThread(root)
        rate, latencies = await run_tasks(plain.put, plain.put_unsynced, args.count, args.concurrency)
    fsyncs = (next(FSYNCS) - before - 1) / args.count
    await asyncio.to_thread(shutil.rmtree, root, ignore_errors=True)
    return rate, fsyncs, latencies


async def main(args: argparse.Namespace) -> None:
    base = Path(tempfile.mkdtemp(prefix="node-agent-bench-store-", dir=args.dir))
    os.fsync = _counting_fsync  # the store's modules look it up at each call
    names = ("one put per thread", "RecordStore")
    rates: dict[str, list[float]] = {name: [] for name in names}
    fsyncs: dict[str, list[float]] = {name: [] for name in names}
    latencies: dict[str, list[float]] = {name: [] for name in names}
    try:
        print(
            f"record store, {args.count} tasks x 4 durable puts + 1 unsynced, concurrency {args.concurrency}, "
            f"{args.rounds} rounds of each, interleaved"
        )
        print(f"  {machine()}; files in {base}")
        for round_no in range(args.rounds):
            for name in names if round_no % 2 == 0 else reversed(names):
                rate, per_task, samples = await one_round(name, base / f"{round_no}-{name.replace(' ', '-')}", args)
                rates[name].append(rate)
                fsyncs[name].append(per_task)
                latencies[name].extend(samples)
        for name in names:
            print(
                f"  {name:20}: {p50(rates[name]):8.1f} tasks/s (median of {args.rounds}), "
                f"fsync {p50(fsyncs[name]):5.2f} per task, durable put p50 {ms(p50(latencies[name])):6.2f} ms "
                f"p99 {ms(pct(latencies[name], 99)):6.2f} ms"
            )
        ratios = [new / old for new, old in zip(rates["RecordStore"], rates["one put per thread"], strict=True)]
        print(f"  ratio RecordStore / one put per thread: {p50(ratios):.2f} (median of rounds)")
    finally:
        os.fsync = _real_fsync
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3, help="rounds of each, interleaved")
    parser.add_argument("--dir", default=None, help="where to write (default: the temporary directory)")
    parser.add_argument("--timeout", type=float, default=600.0, help="hard limit in seconds (exit 2)")
    arguments = parser.parse_args()
    run_bounded(lambda: main(arguments), arguments.timeout)
