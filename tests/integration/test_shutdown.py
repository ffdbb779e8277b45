"""Stopping the agent: SIGTERM (idle and with a running task), SIGKILL (the last will), and refusing to start
on bad configuration (PROTOCOL.md "Running an agent")."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from node_agent.client.pool import BatchClient
from node_agent.localpool import make_searchable
from node_agent.testing.nodes import FakeNode
from node_agent.wire.specs import Job
from node_agent.wire.status import Event, NodeStateName, Task, TaskState
from tests.processes import Fifo, has_exited, open_pidfd

TIMEOUT_S = 20.0


def node_state(client: BatchClient, node: FakeNode, state: NodeStateName) -> bool:
    current = client.view.nodes.get(node.node_id)
    return current is not None and current.state == state


# -- SIGTERM and SIGKILL -------------------------------------------------------------------------------------


async def test_sigterm_stops_an_idle_agent_with_status_0_and_state_offline(pool, client: BatchClient) -> None:
    [node] = await pool(1)
    assert node_state(client, node, NodeStateName.IDLE)
    assert await node.stop(timeout_s=TIMEOUT_S) == 0
    await client.wait_until(lambda: node_state(client, node, NodeStateName.OFFLINE), TIMEOUT_S)
    assert '"agent.stopped"' in node.log_file.read_text()


async def test_sigterm_during_a_task_kills_its_tree_and_hands_back_running_and_waiting_tasks(
    pool, client: BatchClient, tmp_path: Path
) -> None:
    [node] = await pool(1, env={"NODE_AGENT_SHUTDOWN_GRACE": "PT1S", "NODE_AGENT_TASKS_ON_STOP": "handback"})
    events: list[Event] = []
    client.on_event = events.append
    await client.create_job(Job(id="j"))
    fifo = Fifo(tmp_path / "grandchild.pid")
    inner = f"sleep 300 & echo $! > {shlex.quote(str(fifo.path))}; wait"
    command_line = shlex.join(["/bin/sh", "-c", f"/bin/sh -c {shlex.quote(inner)}; exit $?"])
    try:
        # A raw command, not client.add_task: the client would try to place the handed-back task again.
        body = {"type": "addTask", "jobId": "j", "task": {"id": "long", "commandLine": command_line}}
        await client.command(node.node_id, body)
        grandchild = open_pidfd(int(await fifo.read_line()))
    finally:
        fifo.close()
    # a second task waits for the only slot
    body = {"type": "addTask", "jobId": "j", "task": {"id": "queued", "commandLine": "/bin/true"}}
    assert (await client.command(node.node_id, body))["state"] == TaskState.ACTIVE

    assert await node.stop(timeout_s=TIMEOUT_S) == 0

    assert has_exited(grandchild)
    handed_back = await client.wait_until(
        lambda: found if len(found := [e for e in events if e.type == "taskHandedBack"]) >= 2 else None,
        TIMEOUT_S,
    )
    assert sorted((e.task_id, e.code, e.state) for e in handed_back) == [
        ("long", "NodeAgentStopped", TaskState.ACTIVE),
        ("queued", "NodeAgentStopped", TaskState.ACTIVE),
    ]

    def retained(task_id: str) -> Task | None:
        task = client.view.tasks.get(("j", task_id))
        return task if task is not None and task.state == TaskState.ACTIVE and task.node_info is None else None

    for task_id in ("long", "queued"):
        task = await client.wait_until(lambda task_id=task_id: retained(task_id), TIMEOUT_S)
        assert task.execution_info.requeue_count == 1
    await client.wait_until(lambda: node_state(client, node, NodeStateName.OFFLINE), TIMEOUT_S)
    # handed back, not ended: no completion was ever published, and the queued task never ran
    assert not any(e.state == TaskState.COMPLETED for e in events)
    assert not any(e.state == TaskState.RUNNING for e in events if e.task_id == "queued")


async def test_sigkill_leaves_the_last_will_offline_state(pool, client: BatchClient) -> None:
    [node] = await pool(1)
    assert node_state(client, node, NodeStateName.IDLE)
    await node.kill()
    await client.wait_until(lambda: node_state(client, node, NodeStateName.OFFLINE), TIMEOUT_S)
    assert node.process is not None and node.process.returncode == -9


# -- bad configuration ---------------------------------------------------------------------------------------


def run_agent(tmp_path: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """``python -m node_agent run`` with a valid base configuration overridden by ``env``; no broker is up."""
    (tmp_path / "boot_id").write_text("boot-1\n")
    make_searchable(tmp_path)  # as root the agent refuses a node root its task users cannot reach
    base = {name: value for name, value in os.environ.items() if not name.startswith("NODE_AGENT_")}
    base.update(
        {
            "NODE_AGENT_BROKER_URL": "mqtt://127.0.0.1:9",
            "NODE_AGENT_NODE_ID": "cfg",
            "NODE_AGENT_ROOT": str(tmp_path / "root"),
            "NODE_AGENT_STATE_DIR": str(tmp_path / "state"),
            "NODE_AGENT_BOOT_ID_FILE": str(tmp_path / "boot_id"),
        }
    )
    base.update(env)
    return subprocess.run(
        [sys.executable, "-m", "node_agent", "run", *args],
        env=base,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
    )


# The full range of invalid values is in tests/unit/test_config.py; these prove the process exits cleanly.
BAD_SETTINGS = [
    ({"NODE_AGENT_TASK_SLOTS": "0"}, "task_slots"),
    ({"NODE_AGENT_NODE_ID": "a/b"}, "node_id"),
    ({"NODE_AGENT_TOPIC_PREFIX": "batch/#"}, "topic_prefix"),
    ({"NODE_AGENT_BROKER_URL": "http://127.0.0.1:1883"}, "broker"),
    ({"NODE_AGENT_SHUTDOWN_GRACE": "soon"}, "shutdown_grace"),
    ({"NODE_AGENT_BOOT_ID_FILE": "/nonexistent/boot_id"}, "boot id"),
    ({"NODE_AGENT_BOOT_ID_FILE": "/"}, "boot id"),  # a directory: unreadable as a file, even for root
    ({"NODE_AGENT_ROOT": "/etc/passwd/root"}, "node directories"),
]


@pytest.mark.parametrize(("env", "reason"), BAD_SETTINGS, ids=[reason for _, reason in BAD_SETTINGS])
def test_bad_configuration_exits_2_with_a_one_line_reason(tmp_path: Path, env: dict[str, str], reason: str) -> None:
    result = run_agent(tmp_path, env)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("node-agent: ") and reason in lines[0], lines[0]


def test_empty_boot_id_file_exits_2(tmp_path: Path) -> None:
    (tmp_path / "empty").write_text("\n")
    result = run_agent(tmp_path, {"NODE_AGENT_BOOT_ID_FILE": str(tmp_path / "empty")})
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and "empty" in result.stderr


def test_state_dir_inside_the_node_root_exits_2(tmp_path: Path) -> None:
    result = run_agent(tmp_path, {"NODE_AGENT_STATE_DIR": str(tmp_path / "root" / "state")})
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and "state_dir" in result.stderr


def test_staging_cache_inside_the_node_root_exits_2(tmp_path: Path) -> None:
    result = run_agent(tmp_path, {"NODE_AGENT_STAGING_CACHE_DIR": str(tmp_path / "root" / "cache")})
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and "staging_cache_dir" in result.stderr


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ("task_slots = ", "cannot read config file"),
        ('unknown_key = "x"', "unknown_key"),
        ("task_slots = -1", "task_slots"),
    ],
    ids=["not-toml", "unknown-key", "out-of-range"],
)
def test_bad_config_file_exits_2(tmp_path: Path, content: str, reason: str) -> None:
    config = tmp_path / "agent.toml"
    config.write_text(content + "\n")
    result = run_agent(tmp_path, {}, "--config", str(config))
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and reason in lines[0], result.stderr


def test_missing_config_file_exits_2(tmp_path: Path) -> None:
    result = run_agent(tmp_path, {}, "--config", str(tmp_path / "missing.toml"))
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and "missing.toml" in result.stderr


async def test_sigterm_leaves_running_tasks_to_their_supervisors_and_the_next_start_adopts_them(
    pool, client: BatchClient
) -> None:
    """The default (tasks_on_stop = keep): an upgrade or ``systemctl restart`` does not stop running tasks."""
    [node] = await pool(1)
    events: list[Event] = []
    client.on_event = events.append
    await client.create_job(Job(id="j"))
    gate = node.root / "shared/gate"
    os.mkfifo(gate)
    script = f"echo $$ > {node.root}/shared/pid; read line < {gate}; exit 4"
    with Fifo(node.root / "shared/pid") as pids:
        body = {"type": "addTask", "jobId": "j", "task": {"id": "long", "commandLine": f"/bin/sh -c '{script}'"}}
        await client.command(node.node_id, body)
        pid = int(await pids.read_line())
        task_process = open_pidfd(pid)
    shim = psutil.Process(pid).parent()
    server = shim.parent() if shim is not None else None
    assert server is not None and "node_agent.runner.forkserver" in server.cmdline()
    shim_process, server_process = open_pidfd(shim.pid), open_pidfd(server.pid)

    assert await node.stop(timeout_s=TIMEOUT_S) == 0
    assert has_exited(server_process), "the fork server ends with its agent"
    assert not has_exited(task_process, timeout_s=0) and not has_exited(shim_process, timeout_s=0)
    await node.start()
    gate.write_text("go\n")

    task = await client.wait_until(
        lambda: t if (t := client.view.tasks.get(("j", "long"))) and t.state == TaskState.COMPLETED else None,
        TIMEOUT_S,
    )
    assert task.execution_info.exit_code == 4
    assert not [e for e in events if e.type == "taskHandedBack"]
