"""Retention and disk pressure through the wire: PROTOCOL.md guarantee 6 and the taskDirectoryRemoved event."""

from __future__ import annotations

import asyncio
import sys
from datetime import timedelta
from pathlib import Path

from node_agent.client.pool import BatchClient
from node_agent.testing.nodes import FakeNode
from node_agent.wire.base import utcnow
from node_agent.wire.specs import Job, JobPreparationTask, JobReleaseTask, TaskConstraints, TaskSpec
from node_agent.wire.status import Event, TaskState
from tests.integration.test_release import GATE, release_info, sh, wait_running

TIMEOUT_S = 20.0
FAST_SWEEP = {"NODE_AGENT_RETENTION_SWEEP_INTERVAL": "PT0.2S"}
NO_SWEEP_AFTER_START = {"NODE_AGENT_RETENTION_SWEEP_INTERVAL": "PT1H"}  # one pass at start, then none


def kept_for(retention: str) -> TaskConstraints:
    return TaskConstraints(retention_time=retention)


def task_dir(node: FakeNode, job_id: str, task_id: str) -> Path:
    return node.root / "workitems" / job_id / "job-1" / task_id


class Removals:
    """The taskDirectoryRemoved events this client sees, in arrival order."""

    def __init__(self, client: BatchClient) -> None:
        self.events: list[Event] = []
        self.client = client
        client.on_event = lambda e: self.events.append(e) if e.type == "taskDirectoryRemoved" else None

    def of(self, job_id: str, task_id: str) -> Event | None:
        return next((e for e in self.events if (e.job_id, e.task_id) == (job_id, task_id)), None)

    async def wait(self, job_id: str, task_id: str) -> Event:
        return await self.client.wait_until(lambda: self.of(job_id, task_id), TIMEOUT_S)

    def order(self) -> list[tuple[str | None, str | None]]:
        return [(e.job_id, e.task_id) for e in self.events]


async def test_task_directory_goes_after_its_retention_time_not_before(pool, client: BatchClient) -> None:
    [node] = await pool(1, env=FAST_SWEEP)
    removals = Removals(client)
    await client.create_job(Job(id="j1"))
    await client.add_task("j1", TaskSpec(id="t1", command_line="true", constraints=kept_for("PT1S")))
    [task] = await client.wait_for_tasks("j1", timeout_s=TIMEOUT_S)
    assert (task_dir(node, "j1", "t1") / "stdout.txt").exists()  # completed: still there

    event = await removals.wait("j1", "t1")

    assert task.execution_info.end_time is not None
    assert event.time >= task.execution_info.end_time + timedelta(seconds=1)
    assert (event.reason, event.node_id) == ("retention", node.node_id)
    assert event.bytes_freed is not None and event.bytes_freed > 0
    assert not task_dir(node, "j1", "t1").exists()
    assert (node.root / "shared").is_dir()


async def test_deadline_survives_an_agent_restart(pool, client: BatchClient) -> None:
    [node] = await pool(1, env=FAST_SWEEP)
    removals = Removals(client)
    await client.create_job(Job(id="j1"))
    await client.add_task("j1", TaskSpec(id="t1", command_line="true", constraints=kept_for("PT2S")))
    [task] = await client.wait_for_tasks("j1", timeout_s=TIMEOUT_S)
    assert task.execution_info.end_time is not None
    deadline = task.execution_info.end_time + timedelta(seconds=2)

    await node.stop()
    if utcnow() < deadline:  # stopped in time (the usual case): the first run did not remove it
        assert task_dir(node, "j1", "t1").exists()
    await node.start()
    event = await removals.wait("j1", "t1")

    assert event.time >= deadline
    assert event.time >= node.started_at
    assert not task_dir(node, "j1", "t1").exists()


async def test_deadline_that_passed_while_the_agent_was_down_is_cleaned_on_start(pool, client: BatchClient) -> None:
    # PT0S makes the deadline pass at completion; with one sweep an hour the running agent does not
    # look again, so the deadline is already in the past when the agent next starts, as after a long
    # downtime (without waiting through one).
    [node] = await pool(1, env=NO_SWEEP_AFTER_START)
    removals = Removals(client)
    await client.create_job(Job(id="j1"))
    await client.add_task("j1", TaskSpec(id="t1", command_line="true", constraints=kept_for("PT0S")))
    [task] = await client.wait_for_tasks("j1", timeout_s=TIMEOUT_S)
    await node.stop()
    assert task_dir(node, "j1", "t1").exists()
    assert removals.events == []

    await node.start()
    event = await removals.wait("j1", "t1")

    assert task.execution_info.end_time is not None and event.time >= task.execution_info.end_time
    assert event.time >= node.started_at
    assert not task_dir(node, "j1", "t1").exists()


async def test_preparation_directory_is_kept_while_the_job_runs_then_retained_from_its_end(
    pool, client: BatchClient
) -> None:
    [node] = await pool(1, env=FAST_SWEEP)
    removals = Removals(client)
    job = Job(
        id="j1",
        job_preparation_task=JobPreparationTask(command_line="touch made-by-prep", constraints=kept_for("PT0S")),
        job_release_task=JobReleaseTask(
            command_line=sh('test -e "$AZ_BATCH_JOB_PREP_WORKING_DIR/made-by-prep"'), retention_time="PT0S"
        ),
    )
    await client.create_job(job)
    await client.add_task("j1", TaskSpec(id="t1", command_line="true", constraints=kept_for("PT0S")))
    await client.wait_for_tasks("j1", timeout_s=TIMEOUT_S)
    await removals.wait("j1", "t1")  # a sweep after the preparation's own PT0S had long passed

    assert (task_dir(node, "j1", "jobpreparation") / "wd" / "made-by-prep").exists()
    await client.terminate_job("j1", timeout_s=TIMEOUT_S)
    prep_removed = await removals.wait("j1", "jobpreparation")
    await removals.wait("j1", "jobrelease")

    release = release_info(client, "j1", node.node_id)
    assert release.result == "success"  # it found the preparation's file: the directory was still there
    assert release.end_time is not None and prep_removed.time >= release.end_time
    assert not task_dir(node, "j1", "jobpreparation").exists()
    assert not task_dir(node, "j1", "jobrelease").exists()


async def test_cleanup_removes_planted_links_not_their_targets(pool, client: BatchClient, tmp_path: Path) -> None:
    # A directory of the test stands in for /etc: a bug here must not cost the machine its /etc.
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious.txt").write_text("keep me")
    [node] = await pool(1, env=FAST_SWEEP)
    removals = Removals(client)
    await client.create_job(Job(id="j1"))
    await client.add_task("j1", TaskSpec(id="keeper", command_line="touch kept.txt"))  # 7 days
    await client.wait_for_tasks("j1", timeout_s=TIMEOUT_S)
    plant = (
        f"ln -s {outside} outside-link; ln -s {outside}/precious.txt file-link; "
        'ln -s "$AZ_BATCH_TASK_DIR/../keeper" keeper-link; ln -s "$AZ_BATCH_NODE_SHARED_DIR" shared-link; '
        "mkdir -p locked/sub && touch locked/sub/f && (chown -R 65534:65534 locked 2>/dev/null || true) && "
        "chmod 000 locked/sub && chmod 500 locked"
    )
    await client.add_task("j1", TaskSpec(id="planter", command_line=sh(plant), constraints=kept_for("PT0S")))
    [planter] = await client.wait_for_tasks("j1", ["planter"], timeout_s=TIMEOUT_S)
    assert planter.execution_info.result == "success"

    await removals.wait("j1", "planter")

    assert not task_dir(node, "j1", "planter").exists()
    assert (outside / "precious.txt").read_text() == "keep me"
    assert (task_dir(node, "j1", "keeper") / "wd" / "kept.txt").exists()
    assert (node.root / "shared").is_dir()


async def test_disk_pressure_removes_ended_jobs_first_oldest_first_and_reports_low(
    pool, client: BatchClient, tmp_path: Path
) -> None:
    free = tmp_path / "free-bytes"
    free.write_text(str(1 << 40))
    env = {
        **FAST_SWEEP,
        "NODE_AGENT_DISK_FREE_THRESHOLD_BYTES": str(1 << 20),
        "NODE_AGENT_DISK_FREE_PROBE_FILE": str(free),
    }
    [node] = await pool(1, task_slots=2, env=env)
    removals = Removals(client)
    prep = JobPreparationTask(command_line="true")
    await client.create_job(Job(id="active", job_preparation_task=prep))
    await client.add_task("active", TaskSpec(id="done", command_line="true"), node_id=node.node_id)
    await client.wait_for_tasks("active", timeout_s=TIMEOUT_S)  # completed before everything of "ended"
    await client.create_job(
        Job(id="ended", job_preparation_task=prep, job_release_task=JobReleaseTask(command_line="true"))
    )
    for task_id in ("t1", "t2"):
        await client.add_task("ended", TaskSpec(id=task_id, command_line="true"), node_id=node.node_id)
        await client.wait_for_tasks("ended", [task_id], timeout_s=TIMEOUT_S)
    await client.terminate_job("ended", timeout_s=TIMEOUT_S)
    await client.add_task("active", TaskSpec(id="gate", command_line=sh(GATE)), node_id=node.node_id)
    await wait_running(client, "active", ["gate"])
    assert removals.events == []

    free.write_text("0")  # the disk is full
    await client.wait_until(lambda: client.view.nodes[node.node_id].is_low_on_disk, TIMEOUT_S)

    assert removals.order() == [
        ("ended", "jobpreparation"),
        ("ended", "t1"),
        ("ended", "t2"),
        ("ended", "jobrelease"),
        ("active", "done"),
    ]
    assert {e.reason for e in removals.events} == {"diskPressure"}
    assert all(e.bytes_freed and e.bytes_freed > 0 for e in removals.events)
    assert task_dir(node, "active", "gate").exists()  # running
    assert task_dir(node, "active", "jobpreparation").exists()  # its job can still run tasks
    assert (node.root / "shared").is_dir()
    assert client.view.nodes[node.node_id].free_disk_bytes == 0

    (node.root / "shared" / "go").touch()  # the running task completes: now it may go too
    await removals.wait("active", "gate")
    free.write_text(str(1 << 40))
    await client.wait_until(lambda: not client.view.nodes[node.node_id].is_low_on_disk, TIMEOUT_S)
    assert task_dir(node, "active", "jobpreparation").exists()


async def run_gc(node: FakeNode, *args: str) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "node_agent", "gc", *args, env=node.agent.env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    output, _ = await process.communicate()
    return process.returncode or 0, output.decode()


async def test_gc_dry_run_shows_what_would_go_and_why_and_removes_nothing(
    pool, client: BatchClient, tmp_path: Path
) -> None:
    free = tmp_path / "free-bytes"
    free.write_text(str(1 << 40))
    env = {
        **NO_SWEEP_AFTER_START,
        "NODE_AGENT_DISK_FREE_THRESHOLD_BYTES": str(1 << 30),
        "NODE_AGENT_DISK_FREE_PROBE_FILE": str(free),
    }
    [node] = await pool(1, env=env)
    await client.create_job(Job(id="j1"))
    await client.add_task("j1", TaskSpec(id="expired", command_line="true", constraints=kept_for("PT0S")))
    await client.add_task("j1", TaskSpec(id="kept", command_line="true"))
    await client.wait_for_tasks("j1", timeout_s=TIMEOUT_S)

    status, output = await run_gc(node)  # the agent runs: only a dry run is allowed
    assert status == 1 and "in use" in output
    await node.stop()
    free.write_text("0")
    status, output = await run_gc(node, "--dry-run")

    assert status == 0, output
    lines = [line.split() for line in output.splitlines() if line.startswith("  ")]
    assert [(words[0], words[1]) for words in lines] == [
        ("retention", "workitems/j1/job-1/expired"),
        ("diskPressure", "workitems/j1/job-1/kept"),
    ]
    assert "still below the threshold" in output
    assert task_dir(node, "j1", "expired").exists() and task_dir(node, "j1", "kept").exists()

    free.write_text(str(1 << 40))
    status, output = await run_gc(node)

    assert status == 0, output
    assert "removed:" in output and "workitems/j1/job-1/expired" in output
    assert not task_dir(node, "j1", "expired").exists()
    assert task_dir(node, "j1", "kept").exists()
    assert client.view.tasks[("j1", "kept")].state == TaskState.COMPLETED
