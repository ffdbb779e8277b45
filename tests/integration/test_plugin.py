"""The pytest plugin as another project gets it: loaded by its entry point into a fresh pytest run (pytester)."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import psutil
import pytest

pytest_plugins = ["pytester"]

# A downstream project's settings: pytest-asyncio's default strict mode, so each test carries its mark.
INI = """\
[pytest]
asyncio_default_fixture_loop_scope = function
"""

PASSING = """
import pytest
from node_agent.wire.specs import Job, TaskSpec
from node_agent.wire.status import TaskResult


@pytest.mark.asyncio
async def test_three_nodes_run_a_task_each(node_pool, batch_client):
    nodes = await node_pool(n=3, task_slots=2)
    assert [node.node_id for node in nodes] == ["node1", "node2", "node3"]
    await batch_client.create_job(Job(id="j1"))
    for node in nodes:
        await batch_client.add_task("j1", TaskSpec(id=f"on-{node.node_id}", command_line="true"), node_id=node.node_id)
    tasks = await batch_client.wait_for_tasks("j1", timeout_s=20)
    assert [t.execution_info.result for t in tasks] == [TaskResult.SUCCESS] * 3
"""

# Writes every process it can see the pool start (agents, and the task a SIGKILLed agent leaves behind), then fails.
FAILING = """
import json
import psutil
import pytest
from node_agent.wire.specs import Job, TaskSpec
from node_agent.wire.status import TaskState


def with_children(pid):
    process = psutil.Process(pid)
    return [process, *process.children(recursive=True)]


@pytest.mark.asyncio
async def test_fails_with_a_pool_running(node_pool, batch_client):
    node1, node2 = await node_pool(n=2)
    await batch_client.create_job(Job(id="j1"))
    for node in (node1, node2):
        await batch_client.add_task("j1", TaskSpec(id=node.node_id, command_line="sleep 300"), node_id=node.node_id)
    await batch_client.wait_until(
        lambda: all((t := batch_client.view.tasks.get(("j1", n.node_id))) and t.state == TaskState.RUNNING
                    for n in (node1, node2)),
        20,
    )
    seen = [p for node in (node1, node2) for p in with_children(node.pid)]
    with open(PIDS_FILE, "w") as out:
        json.dump([[p.pid, p.create_time()] for p in seen], out)
    await node2.kill()  # its task is orphaned: teardown must end it too
    assert False, "fails on purpose"
"""


def is_alive(pid: int, create_time: float) -> bool:
    """Whether this pid still names the process that started at ``create_time`` (zombies count as gone)."""
    try:
        process = psutil.Process(pid)
        return process.create_time() == create_time and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_a_downstream_test_using_node_pool_passes(pytester: pytest.Pytester) -> None:
    pytester.makeini(INI)
    pytester.makepyfile(test_downstream=PASSING)

    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")

    result.assert_outcomes(passed=1)


def test_a_failing_test_still_ends_every_process_the_pool_started(pytester: pytest.Pytester, tmp_path: Path) -> None:
    pids_file = tmp_path / "pids.json"
    pytester.makeini(INI)
    pytester.makepyfile(test_downstream=f"PIDS_FILE = {str(pids_file)!r}\n" + textwrap.dedent(FAILING))

    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")

    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*fails on purpose*"])
    seen = json.loads(pids_file.read_text())
    assert len(seen) >= 4, seen  # two agents and at least their two tasks
    assert [pid for pid, started in seen if is_alive(pid, started)] == []
