"""`node-agent demo` end to end, on Mosquitto and on the embedded fallback broker."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import sys
from pathlib import Path

import pytest

NODE = r"node[12]"
HEADER = re.compile(rf"^Contents of shared/job_prep_and_release\.txt on ({NODE}):$")
TASK_LINE = re.compile(r"^  task00[1-8]$")


async def run_demo(env: dict[str, str]) -> tuple[int, list[str], str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "node_agent",
        "demo",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(90):
        out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode().splitlines(), err.decode()


def check_sample_output(lines: list[str]) -> None:
    """The sample's format, line by line: each node's file, then each node's exit codes."""
    seen_tasks: list[str] = []
    index = 0
    nodes = []
    while index < len(lines) and (match := HEADER.match(lines[index])):
        node = match.group(1)
        nodes.append(node)
        assert lines[index + 1] == "-------------------------------------------"
        assert lines[index + 2] == f"{node} tasks:"
        index += 3
        while TASK_LINE.match(lines[index]):
            seen_tasks.append(lines[index].strip())
            index += 1
        assert lines[index] == ""
        index += 1
    assert sorted(seen_tasks) == [f"task{n:03d}" for n in range(1, 9)], "every task appended exactly once"
    for node in nodes:
        assert lines[index : index + 3] == [
            f"{node}:",
            "  Prep task exit code:    0",
            "  Release task exit code: 0",
        ]
        index += 3
    for line in lines[index:]:
        assert re.fullmatch(rf"{NODE} got no task, so it ran no preparation and no release task\.", line)
    assert nodes, "at least one node ran the preparation"


async def test_demo_prints_the_sample_output_with_mosquitto() -> None:
    if shutil.which("mosquitto") is None:
        pytest.skip("mosquitto is not installed")
    status, lines, err = await run_demo(dict(os.environ))
    assert status == 0, err
    assert "started a mosquitto broker" in err
    check_sample_output(lines)


async def test_demo_falls_back_to_the_embedded_broker_without_mosquitto() -> None:
    hidden = os.pathsep.join(
        folder for folder in os.environ["PATH"].split(os.pathsep) if not (Path(folder) / "mosquitto").exists()
    )
    status, lines, err = await run_demo({**os.environ, "PATH": hidden})
    assert status == 0, err
    assert "started an amqtt broker" in err
    check_sample_output(lines)
