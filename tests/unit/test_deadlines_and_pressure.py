"""Retention without a broker: durable deadlines, what is never removed, and the disk-pressure order."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from node_agent.agent.runs import NodeJob, TaskRun
from node_agent.agent.sweeper import is_busy, is_job_ended
from node_agent.errors import StoreCorrupt
from node_agent.retention.deadlines import Deadline, DeadlineBook, DirectoryKind
from node_agent.retention.pressure import Candidate, FreeSpaceProbe, pressure_order, relieve
from node_agent.store.records import RecordStore
from node_agent.wire.specs import Job, JobState
from node_agent.wire.status import (
    JobReleaseTaskExecutionInformation,
    SubtaskState,
    Task,
    TaskState,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def deadline(
    job_id: str, task_id: str, completed_s: float = 0, *, kind: DirectoryKind = DirectoryKind.TASK
) -> Deadline:
    completed = T0 + timedelta(seconds=completed_s)
    return Deadline(
        job_id, task_id, kind, completed, completed + timedelta(days=7), f"workitems/{job_id}/job-1/{task_id}"
    )


def job(job_id: str, state: JobState = JobState.ACTIVE, **tasks: TaskState) -> NodeJob:
    node_job = NodeJob(id=job_id, doc=Job(id=job_id, state=state))
    for task_id, task_state in tasks.items():
        task = Task(id=task_id, command_line="true", state=task_state, state_transition_time=T0)
        node_job.tasks[task_id] = TaskRun(job_id=job_id, task=task)
    return node_job


# -- the disk-pressure order ----------------------------------------------------------------------------


def test_pressure_takes_ended_jobs_first_then_active_ones_each_oldest_first() -> None:
    candidates = [
        Candidate(deadline("active", "a-old", 1), is_job_ended=False),
        Candidate(deadline("ended", "e-new", 30), is_job_ended=True),
        Candidate(deadline("active", "a-new", 20), is_job_ended=False),
        Candidate(deadline("ended", "e-old", 10), is_job_ended=True),
        Candidate(deadline("ended2", "e-mid", 15), is_job_ended=True),
    ]
    assert [d.task_id for d in pressure_order(candidates)] == ["e-old", "e-mid", "e-new", "a-old", "a-new"]


def test_running_and_waiting_tasks_and_an_active_jobs_preparation_are_busy() -> None:
    jobs = {
        "a": job("a", running=TaskState.RUNNING, waiting=TaskState.ACTIVE, done=TaskState.COMPLETED),
        "e": job("e", JobState.TERMINATING, done=TaskState.COMPLETED),
    }
    assert is_busy(jobs, deadline("a", "running"))
    assert is_busy(jobs, deadline("a", "waiting"))
    assert not is_busy(jobs, deadline("a", "done"))
    assert not is_busy(jobs, deadline("a", "handed-back"))  # no longer held here
    assert is_busy(jobs, deadline("a", "jobpreparation", kind=DirectoryKind.PREPARATION))
    assert not is_busy(jobs, deadline("e", "jobpreparation", kind=DirectoryKind.PREPARATION))
    assert not is_busy(jobs, deadline("gone", "t1"))


def test_a_release_is_busy_while_it_runs() -> None:
    ended = job("e", JobState.TERMINATING)
    ended.release = JobReleaseTaskExecutionInformation(start_time=T0, state=SubtaskState.RUNNING)
    release = deadline("e", "jobrelease", kind=DirectoryKind.RELEASE)
    assert is_busy({"e": ended}, release)
    ended.release = ended.release.model_copy(update={"state": SubtaskState.COMPLETED})
    assert not is_busy({"e": ended}, release)


def test_a_job_is_ended_once_it_is_not_active_or_this_node_started_ending_it() -> None:
    assert not is_job_ended({"a": job("a")}, "a")
    assert is_job_ended({"t": job("t", JobState.TERMINATING)}, "t")
    assert is_job_ended({}, "unknown")


async def test_relieve_stops_as_soon_as_free_space_is_back_above_the_threshold() -> None:
    free = 100
    removed: list[str] = []

    async def probe() -> int:
        return free

    async def remove(d: Deadline) -> bool:
        nonlocal free
        removed.append(d.task_id)
        free += 60
        return True

    relief = await relieve([deadline("j", f"t{n}") for n in range(5)], 200, probe, remove)

    assert removed == ["t0", "t1"]
    assert (relief.free_bytes, relief.is_low) == (220, False)


async def test_relieve_reports_low_when_nothing_more_may_go() -> None:
    async def probe() -> int:
        return 0

    async def remove(d: Deadline) -> bool:
        return d.task_id != "in-use"  # refused by the caller: not counted, the next one is tried

    relief = await relieve([deadline("j", "in-use"), deadline("j", "t1")], 10, probe, remove)

    assert relief.is_low
    assert [d.task_id for d in relief.removed] == ["t1"]


async def test_relieve_removes_nothing_when_free_space_is_unknown() -> None:
    async def probe() -> None:
        return None

    async def remove(d: Deadline) -> bool:
        raise AssertionError("nothing may be removed")

    relief = await relieve([deadline("j", "t1")], 10, probe, remove)
    assert (relief.free_bytes, relief.is_low) == (None, False)


def test_the_probe_file_gives_the_free_bytes_for_tests(tmp_path: Path) -> None:
    probe_file = tmp_path / "free"
    probe_file.write_text("12345\n")
    assert FreeSpaceProbe(tmp_path, probe_file).measure() == 12345
    probe_file.write_text("lots")
    assert FreeSpaceProbe(tmp_path, probe_file).measure() is None
    assert (FreeSpaceProbe(tmp_path).measure() or 0) > 0


# -- durable deadlines ----------------------------------------------------------------------------------


async def test_deadlines_survive_a_restart_and_the_earliest_due_comes_first(tmp_path: Path) -> None:
    book = DeadlineBook(RecordStore(tmp_path))
    late, early, future = deadline("j1", "late", 5), deadline("j2", "early", 1), deadline("j1", "future", 9)
    for item in (late, early, future):
        await book.schedule(item)

    reloaded = DeadlineBook(RecordStore(tmp_path))
    await reloaded.load()

    assert reloaded.entries == book.entries
    now = future.deadline - timedelta(seconds=1)
    assert reloaded.due(now) == [early, late]


async def test_keep_existing_keeps_the_first_deadline_and_drop_job_forgets_the_job(tmp_path: Path) -> None:
    book = DeadlineBook(RecordStore(tmp_path))
    first = await book.schedule(deadline("j1", "jobpreparation", 1, kind=DirectoryKind.PREPARATION))
    again = await book.schedule(
        deadline("j1", "jobpreparation", 50, kind=DirectoryKind.PREPARATION), keep_existing=True
    )
    await book.schedule(deadline("j2", "t1"))

    await book.drop_job("j1")

    assert again == first
    assert list(book.entries) == [("j2", "t1")]
    assert not (tmp_path / "retention" / "j1").exists()


async def test_claim_waits_for_a_removal_in_flight_then_forgets_the_deadline(tmp_path: Path) -> None:
    book = DeadlineBook(RecordStore(tmp_path))
    await book.schedule(deadline("j1", "t1"))
    order: list[str] = []
    release = asyncio.Event()

    async def removal() -> None:
        async with book.removing(("j1", "t1")):
            await release.wait()
            order.append("removed")

    remover = asyncio.create_task(removal())
    await asyncio.sleep(0)  # let the removal start (a step of the loop, not a wait for time)
    claimer = asyncio.create_task(book.claim("j1", "t1"))
    await asyncio.sleep(0)
    assert not claimer.done()
    release.set()
    await asyncio.gather(remover, claimer)
    order.append("claimed")

    assert order == ["removed", "claimed"]
    assert book.entries == {}


def test_a_record_that_is_not_its_schema_is_store_corrupt(tmp_path: Path) -> None:
    folder = tmp_path / "retention" / "j1"
    folder.mkdir(parents=True)
    (folder / "t1.json").write_text(json.dumps({"version": 1, "jobId": "j1", "taskId": "t1"}))
    with pytest.raises(StoreCorrupt, match="retention record"):
        asyncio.run(DeadlineBook(RecordStore(tmp_path)).load())
    (folder / "t1.json").write_text(json.dumps({**deadline("j1", "other").record()}))
    with pytest.raises(StoreCorrupt, match="names another task"):
        asyncio.run(DeadlineBook(RecordStore(tmp_path)).load())
