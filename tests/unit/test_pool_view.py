"""PoolView.released: when a terminating job's driver may mark it completed (docs/protocol.md, terminate)."""

from __future__ import annotations

from node_agent.client.view import PoolView
from node_agent.wire.base import utcnow
from node_agent.wire.specs import Job, JobPreparationTask, JobReleaseTask
from node_agent.wire.status import (
    JobPreparationAndReleaseTaskExecutionInformation,
    JobPreparationTaskExecutionInformation,
    JobReleaseTaskExecutionInformation,
    NodeInfo,
    SubtaskState,
    Task,
    TaskState,
)

JOB = Job(
    id="j1",
    job_preparation_task=JobPreparationTask(command_line="true"),
    job_release_task=JobReleaseTask(command_line="true"),
)


def task_on_node1(state: TaskState) -> Task:
    return Task(
        id="t1",
        command_line="true",
        state=state,
        state_transition_time=utcnow(),
        node_info=NodeInfo(node_id="node1", pool_id="pool1"),
    )


def node1_status(*, released: bool) -> JobPreparationAndReleaseTaskExecutionInformation:
    now = utcnow()
    release = JobReleaseTaskExecutionInformation(start_time=now, state=SubtaskState.COMPLETED) if released else None
    return JobPreparationAndReleaseTaskExecutionInformation(
        pool_id="pool1",
        node_id="node1",
        job_preparation_task_execution_info=JobPreparationTaskExecutionInformation(
            start_time=now, state=SubtaskState.COMPLETED
        ),
        job_release_task_execution_info=release,
    )


def test_a_job_is_not_released_while_a_node_still_holds_a_task_of_it() -> None:
    view = PoolView()
    view.set_task(("j1", "t1"), task_on_node1(TaskState.PREPARING))
    # The node's preparation status has not arrived: no node is known to owe a release, yet its task runs.
    assert not view.released(JOB)

    view.set_task(("j1", "t1"), task_on_node1(TaskState.COMPLETED))
    view.prep_release[("j1", "node1")] = node1_status(released=False)
    assert not view.released(JOB)  # preparation ran there, release not yet

    view.prep_release[("j1", "node1")] = node1_status(released=True)
    assert view.released(JOB)


def test_a_job_no_node_took_is_released_at_once() -> None:
    assert PoolView().released(JOB)
