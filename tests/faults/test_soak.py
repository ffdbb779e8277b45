"""The fault soak at CI size: random SIGKILLs of agents and restarts of the broker while tasks run
(tests/faults/soak.py; run it by hand at the issue's size: 2,000 tasks over 5 agents)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import SUMMARY
from tests.faults.soak import soak

TASKS = int(os.environ.get("SOAK_TASKS", "200"))
AGENTS = int(os.environ.get("SOAK_AGENTS", "3"))


@pytest.mark.timeout(300)
async def test_every_task_has_one_result_and_ran_once_through_random_kills(
    tmp_path: Path, record_property: Callable[[str, object], None]
) -> None:
    report = await soak(TASKS, AGENTS, tmp_path, timeout_s=240)
    record_property(SUMMARY, "soak: " + "; ".join(report.lines()))  # printed at the end of the run
    assert report.completed == TASKS
    assert report.ran_twice == [] and report.never_ran == 0
    assert all(n <= 1 for n in report.completion_events.values())
    assert set(report.prep_runs.values()) <= {0, 1}  # once per node and boot (a node may get no task)
