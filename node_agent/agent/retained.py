"""A completed task's retention deadline, derived from its task record instead of stored as a record of its own.

The record ``_complete`` writes durably holds all the deadline needs (``executionInfo.endTime`` and
``constraints.retentionTime``; PROTOCOL.md guarantee 6), so a second durable write per task would only
repeat it. The deadline is held in memory when the task completes and derived again from the record at
start-up (and by ``node-agent gc``), for each completed task whose directory is still there: once the
sweep has removed a directory, nothing brings its deadline back. A crash between the task record and the
deadline can no longer lose the deadline either.

Directories without a completed task record keep a stored retention record (``retention/deadlines.py``):
a handed-back task's, and the preparation's and release's of an ended job.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from node_agent.agent.runs import NodeJob
from node_agent.agent.sweeper import removal_parts
from node_agent.retention.deadlines import Deadline, DirectoryKind
from node_agent.wire.base import add_capped
from node_agent.wire.specs import DEFAULT_RETENTION
from node_agent.wire.status import Task, TaskState


def task_deadline(job_id: str, task: Task) -> Deadline:
    """When a completed task's directory is due: its end plus its retentionTime (7 days without one)."""
    completed_at = task.execution_info.end_time or task.state_transition_time
    retention = task.constraints.retention_time
    return Deadline(
        job_id=job_id,
        task_id=task.id,
        kind=DirectoryKind.TASK,
        completed_at=completed_at,
        deadline=add_capped(completed_at, DEFAULT_RETENTION if retention is None else retention),
        directory="/".join(("workitems", job_id, "job-1", task.id)),  # as sweeper.removal_parts
    )


def completed_task_deadlines(jobs: Mapping[str, NodeJob], root: Path) -> list[Deadline]:
    """The deadlines of the completed tasks whose directories exist below ``root`` (blocking: stats each)."""
    found = []
    for job in jobs.values():
        for run in job.tasks.values():
            if run.task.state != TaskState.COMPLETED:
                continue
            deadline = task_deadline(job.id, run.task)
            if os.path.lexists(root.joinpath(*removal_parts(deadline))):
                found.append(deadline)
    return found
