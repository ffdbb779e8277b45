"""Each bench in bench/ runs to the end at a tiny size, so the scripts keep up with the code they measure.

Not a timed test: the figures they print are not checked, only that each finishes and prints its summary.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from node_agent.brokers import find_mosquitto

BENCH = Path(__file__).resolve().parents[2] / "bench"
LIMIT = ["--timeout", "100"]  # the benches' own hard limit, below this test's
TINY = {
    "rtt.py": (["--count", "20"], "p50 of mosquitto"),
    "pool_start.py": (["--rounds", "1"], "ratio 3/1"),
    "dispatch.py": (["--count", "20", *LIMIT], "ratio addTask->completed / floor"),
    "throughput.py": (["--count", "20", "--slots", "2", *LIMIT], "ratio agent / bare"),
    "footprint.py": (["--idle", "1", "--count", "20", "--rounds", "2", *LIMIT], "growth round 1 -> 2"),
    "store.py": (["--count", "20", "--rounds", "1", *LIMIT], "ratio RecordStore / one put per thread"),
    "supervisor_start.py": (["--count", "5"], "ratio whole / bare"),
    "scale.py": (
        ["--agents", "2", "--tasks", "20", "--job-agents", "2", "--jobs", "3", "--job-tasks", "3", *LIMIT],
        "per-job overhead",
    ),
}


async def run_bench(script: str, args: list[str]) -> tuple[int | None, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(BENCH / script),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        async with asyncio.timeout(110):
            out, _ = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    return proc.returncode, out.decode(errors="replace")


@pytest.mark.skipif(find_mosquitto() is None, reason="mosquitto binary not installed (scripts/test.sh installs it)")
async def test_every_bench_runs_at_a_tiny_size() -> None:
    gate = asyncio.Semaphore(3)  # all of them at once starve their agents' start-up on a busy 2-core machine

    async def gated(script: str, args: list[str]) -> tuple[int | None, str]:
        async with gate:
            return await run_bench(script, args)

    results = await asyncio.gather(*(gated(script, args) for script, (args, _) in TINY.items()))
    for (script, (_, summary)), (code, output) in zip(TINY.items(), results, strict=True):
        assert code == 0 and summary in output, f"bench/{script} failed (exit {code}):\n{output[-3000:]}"
