"""Running under a supervisor, through real agent processes: sd_notify datagrams, metrics scraped, log lines."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import urllib.request
import uuid
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from node_agent.brokers import free_port
from node_agent.client.pool import BatchClient
from node_agent.wire.specs import Job, JobPreparationTask, JobReleaseTask, TaskSpec

TIMEOUT_S = 20.0
MARKER = "task-output-never-in-the-agent-log"


class NotifySocket:
    """A real AF_UNIX datagram socket, as systemd gives a Type=notify service in NOTIFY_SOCKET."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + address[1:] if address.startswith("@") else address)
        self.sock.setblocking(False)
        self.seen: list[str] = []

    async def wait_for(self, predicate, timeout_s: float = TIMEOUT_S) -> str:  # type: ignore[no-untyped-def]
        """Receive datagrams until one satisfies ``predicate``; all are kept in ``seen``, in order."""
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(timeout_s):
            while True:
                message = (await loop.sock_recv(self.sock, 4096)).decode()
                self.seen.append(message)
                if predicate(message):
                    return message

    def close(self) -> None:
        self.sock.close()


async def test_sd_notify_ready_status_watchdog_in_order(pool, client: BatchClient, tmp_path: Path) -> None:
    notify = NotifySocket(str(tmp_path / "notify"))
    try:
        env = {"NOTIFY_SOCKET": notify.address, "WATCHDOG_USEC": "400000"}  # pings every 0.2 s
        [node] = await pool(1, env=env)
        await notify.wait_for(lambda m: "READY=1" in m.splitlines())
        assert "STATUS=0 tasks running, scheduling enabled" in notify.seen[-1].splitlines()
        await notify.wait_for(lambda m: m.startswith("WATCHDOG=1"))
        await client.create_job(Job(id="j1"))
        await client.add_task("j1", TaskSpec(id="t1", command_line="/bin/sleep 30"))
        await notify.wait_for(lambda m: "STATUS=1 tasks running, scheduling enabled" in m.splitlines())
        await client.terminate_task("j1", "t1")
        await notify.wait_for(lambda m: "STATUS=0 tasks running, scheduling enabled" in m.splitlines())
        assert await node.stop() == 0
        await notify.wait_for(lambda m: "STOPPING=1" in m.splitlines())
    finally:
        notify.close()
    kinds = [line.split("=")[0] for message in notify.seen for line in message.splitlines()]
    ready = kinds.index("READY")
    assert "WATCHDOG" in kinds[ready:] and kinds.index("STOPPING") > ready
    assert kinds.count("READY") == 1


async def test_sd_notify_abstract_socket_and_sighup_reload(pool) -> None:
    notify = NotifySocket(f"@node-agent-test-{uuid.uuid4().hex}")
    try:
        [node] = await pool(1, env={"NOTIFY_SOCKET": notify.address, "NODE_AGENT_LOG_LEVEL": "info"})
        await notify.wait_for(lambda m: "READY=1" in m.splitlines())
        assert node.pid is not None
        os.kill(node.pid, signal.SIGHUP)  # no --config: reload reads the environment again, nothing changes
        await notify.wait_for(lambda m: "RELOADING=1" in m.splitlines())
        await notify.wait_for(lambda m: "READY=1" in m.splitlines())
    finally:
        notify.close()
    events = [line["event"] for line in _log_lines(node.log_file)]
    assert "agent.reloaded" in events


def _log_lines(path: Path) -> list[dict]:  # type: ignore[type-arg]
    return [json.loads(line) for line in path.read_text().splitlines() if line.startswith("{")]


def _scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:  # noqa: S310
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def test_metrics_count_what_ran_and_logs_name_each_happening(pool, client: BatchClient) -> None:
    port = free_port()
    [node] = await pool(1, env={"NODE_AGENT_METRICS_PORT": str(port)})
    job = Job(
        id="m1",
        job_preparation_task=JobPreparationTask(command_line="/bin/true"),
        job_release_task=JobReleaseTask(command_line="/bin/sh -c 'exit 4'"),
    )
    await client.create_job(job)
    for task_id, command in (("ok1", f"/bin/echo {MARKER}"), ("ok2", "/bin/true"), ("bad", "/bin/false")):
        await client.add_task("m1", TaskSpec(id=task_id, command_line=command))
    await client.wait_for_tasks("m1", timeout_s=TIMEOUT_S)
    await client.terminate_job("m1", timeout_s=TIMEOUT_S)
    figures = await client.wait_until(
        lambda: next((n for n in client.list_nodes() if n.total_memory_bytes and n.cpu_percent is not None), None),
        timeout_s=TIMEOUT_S,
    )
    assert figures.total_disk_bytes and figures.free_memory_bytes

    metrics = await asyncio.to_thread(_scrape, port)
    assert metrics[("node_agent_tasks_completed_total", (("result", "success"),))] == 2
    assert metrics[("node_agent_tasks_completed_total", (("result", "failure"),))] == 1
    assert metrics[("node_agent_tasks", (("state", "completed"),))] == 3
    assert metrics[("node_agent_tasks", (("state", "running"),))] == 0
    assert metrics[("node_agent_task_duration_seconds_count", (("result", "success"),))] == 2
    prep = (("kind", "preparation"), ("result", "success"))
    release = (("kind", "release"), ("result", "failure"))
    assert metrics[("node_agent_subtask_duration_seconds_count", prep)] == 1
    assert metrics[("node_agent_subtask_duration_seconds_count", release)] == 1
    assert metrics[("node_agent_command_duration_seconds_count", (("command", "addTask"), ("outcome", "ok")))] == 3
    assert metrics[("node_agent_broker_connects_total", ())] == 1
    assert metrics[("node_agent_broker_reconnects_total", ())] == 0
    assert metrics[("node_agent_node_memory_total_bytes", ())] > 0
    assert metrics[("node_agent_node_disk_free_bytes", ())] > 0
    assert ("node_agent_staging_bytes_total", ()) in metrics

    assert await node.stop() == 0
    lines = _log_lines(node.log_file)
    assert MARKER not in node.log_file.read_text()  # task output goes to stdout.txt, never the agent's log
    by_event = {}
    for line in lines:
        assert line.get("node_id") == node.node_id, line
        by_event.setdefault(line["event"], []).append(line)
    assert {line["task_id"] for line in by_event["task.started"]} == {"ok1", "ok2", "bad"}
    assert {line["task_id"] for line in by_event["task.succeeded"]} == {"ok1", "ok2"}
    [failed] = by_event["task.failed"]
    assert (failed["job_id"], failed["task_id"], failed["code"]) == ("m1", "bad", "FailureExitCode")
    for event, task_id in (("prep.started", "jobpreparation"), ("prep.succeeded", "jobpreparation")):
        assert [(line["job_id"], line["task_id"]) for line in by_event[event]] == [("m1", task_id)]
    [release_failed] = by_event["release.failed"]
    assert (release_failed["job_id"], release_failed["task_id"], release_failed["exit_code"]) == ("m1", "jobrelease", 4)
