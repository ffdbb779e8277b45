"""A completed, published TaskRun keeps only its final JSON, and answers as before."""

from __future__ import annotations

from node_agent.agent.runs import TaskRun
from node_agent.wire.base import utcnow
from node_agent.wire.specs import TaskSpec
from node_agent.wire.status import NodeInfo, Task, TaskExecutionInfo, TaskResult, TaskState


def completed_run(published: bool = True) -> TaskRun:
    spec = TaskSpec(id="t1", command_line="/bin/true")
    node = NodeInfo(node_id="n1", pool_id="p1", task_root_directory="/root/workitems/j/job-1/t1")
    task = Task(**dict(spec), state=TaskState.ACTIVE, state_transition_time=utcnow(), node_info=node)
    run = TaskRun(job_id="j", task=task, published=published)
    now = utcnow()
    info = TaskExecutionInfo(start_time=now, end_time=now, exit_code=0, retry_count=0, result=TaskResult.SUCCESS)
    run.update(state=TaskState.COMPLETED, state_transition_time=now, execution_info=info)
    return run


def test_compacted_run_answers_with_the_same_task() -> None:
    run = completed_run()
    before = run.task.to_json()
    run.compact()
    assert run.worker is None and run.recorded.is_set()
    assert run.is_finished and not run.is_running
    assert run.task.to_json() == before
    assert run.spec.command_line == "/bin/true"


def test_unpublished_or_unfinished_runs_are_not_compacted() -> None:
    unpublished = completed_run(published=False)
    unpublished.compact()
    assert unpublished.task is unpublished.task  # still the model, not parsed again on each access
    active = TaskRun(job_id="j", task=completed_run().task.model_copy(update={"state": TaskState.ACTIVE}))
    active.compact()
    assert not active.is_finished and not active.kill.is_set()


def test_a_compacted_run_changed_again_holds_its_model() -> None:
    run = completed_run()
    run.compact()
    changed = run.update(state=TaskState.ACTIVE)
    assert run.task is changed and not run.is_finished
