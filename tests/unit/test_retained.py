"""A completed task's retention deadline, derived from its task record rather than stored on its own."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from node_agent.agent.retained import completed_task_deadlines, task_deadline
from node_agent.agent.runs import NodeJob, TaskRun
from node_agent.retention.deadlines import DirectoryKind
from node_agent.wire.specs import TaskConstraints
from node_agent.wire.status import Task, TaskExecutionInfo, TaskState

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def task(task_id: str, state: TaskState, retention: str | None = None) -> Task:
    return Task(
        id=task_id,
        command_line="true",
        constraints=TaskConstraints(retention_time=retention),
        state=state,
        state_transition_time=T0 + timedelta(seconds=5),
        execution_info=TaskExecutionInfo(start_time=T0, end_time=T0 + timedelta(seconds=1)),
    )


def test_the_deadline_is_the_end_plus_the_retention_time_seven_days_without_one() -> None:
    kept = task_deadline("j1", task("t1", TaskState.COMPLETED, "PT1H"))
    assert (kept.key, kept.kind, kept.directory) == (("j1", "t1"), DirectoryKind.TASK, "workitems/j1/job-1/t1")
    assert kept.completed_at == T0 + timedelta(seconds=1)
    assert kept.deadline == T0 + timedelta(seconds=1, hours=1)
    assert task_deadline("j1", task("t2", TaskState.COMPLETED)).deadline == T0 + timedelta(days=7, seconds=1)


def test_only_completed_tasks_whose_directory_is_there_get_one(tmp_path: Path) -> None:
    job = NodeJob(id="j1")
    for task_id, state in (("done", TaskState.COMPLETED), ("gone", TaskState.COMPLETED), ("run", TaskState.RUNNING)):
        job.tasks[task_id] = TaskRun(job_id="j1", task=task(task_id, state))
        if task_id != "gone":  # the sweep removed its directory before the restart
            (tmp_path / "workitems" / "j1" / "job-1" / task_id).mkdir(parents=True)
    assert [d.key for d in completed_task_deadlines({"j1": job}, tmp_path)] == [("j1", "done")]
