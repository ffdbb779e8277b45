"""Job preparation through the wire: PROTOCOL.md "Semantics the agent guarantees" 1 and 2."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from node_agent.client.pool import BatchClient, CommandError
from node_agent.testing.nodes import FakeNode
from node_agent.wire.specs import Job, JobPreparationTask, JobReleaseTask, TaskConstraints, TaskSpec
from node_agent.wire.status import (
    Event,
    JobPreparationTaskExecutionInformation,
    SubtaskState,
    TaskResult,
    TaskState,
)
from tests.conftest import count_lines, restart

TIMEOUT_S = 20.0
SHARED = '"$AZ_BATCH_NODE_SHARED_DIR"'
COUNT_PREP = f"echo x >> {SHARED}/prep-count"
# The preparation holds until the test creates shared/go: the test waits on a retained state, then opens it.
GATE = f"while [ ! -e {SHARED}/go ]; do sleep 0.05; done"


def sh(script: str) -> str:
    """A command line running ``script`` (no single quotes in it) through /bin/sh, as Azure Batch users do."""
    assert "'" not in script
    return f"/bin/sh -c '{script}'"


def open_gate(agent: FakeNode) -> None:
    (agent.root / "shared" / "go").touch()


async def prep_info(
    client: BatchClient, job_id: str, node_id: str, *, completed: bool = True
) -> JobPreparationTaskExecutionInformation:
    """The node's retained preparation info once it is (or, completed=False, once it exists)."""

    def found() -> JobPreparationTaskExecutionInformation | None:
        info = client.view.prep_release.get((job_id, node_id))
        prep = info.job_preparation_task_execution_info if info else None
        if prep is None or (completed and prep.state != SubtaskState.COMPLETED):
            return None
        return prep

    return await client.wait_until(found, TIMEOUT_S)


def tasks(count: int, script: str, prefix: str = "t") -> list[TaskSpec]:
    return [TaskSpec(id=f"{prefix}{n}", command_line=sh(script)) for n in range(count)]


@pytest.mark.every_broker  # on NATS too (docs/testing.md): preparation, once per node, before its tasks
async def test_prep_runs_once_before_first_task_for_many_tasks(pool, client: BatchClient) -> None:
    [node] = await pool(1, task_slots=2)
    prep = JobPreparationTask(command_line=sh(f"{COUNT_PREP} && touch {SHARED}/prepared"))
    await client.create_job(Job(id="j1", job_preparation_task=prep))
    specs = tasks(20, f"test -e {SHARED}/prepared")
    for spec in specs:
        await client.add_task("j1", spec, node_id=node.node_id)
    await client.add_task("j1", specs[0], node_id=node.node_id)  # a repeated addTask is acknowledged again

    done = await client.wait_for_tasks("j1", timeout_s=TIMEOUT_S)

    assert [t.execution_info.result for t in done] == [TaskResult.SUCCESS] * 20
    info = await prep_info(client, "j1", node.node_id)
    [status] = client.prep_release_status("j1")
    assert status.node_id == node.node_id
    assert (info.exit_code, info.result, info.retry_count) == (0, TaskResult.SUCCESS, 0)
    assert info.failure_info is None
    assert all(t.execution_info.start_time >= info.end_time for t in done)
    assert await count_lines(client, node.node_id, "shared/prep-count") == 1


async def test_no_prep_on_node_that_gets_no_task_of_the_job(pool, client: BatchClient) -> None:
    node1, node2 = await pool(2)
    await client.create_job(
        Job(
            id="j1",
            job_preparation_task=JobPreparationTask(command_line=sh(COUNT_PREP)),
            job_release_task=JobReleaseTask(command_line=sh(f"echo x >> {SHARED}/release-count")),
        )
    )
    for spec in tasks(3, "true"):
        await client.add_task("j1", spec, node_id=node1.node_id)
    await client.wait_for_tasks("j1", timeout_s=TIMEOUT_S)
    await client.terminate_job("j1", timeout_s=TIMEOUT_S)

    # Round trips to node2 after it has seen the job end: anything it ran for the job would be on disk.
    assert await count_lines(client, node2.node_id, "shared/prep-count") == 0
    assert await count_lines(client, node2.node_id, "shared/release-count") == 0
    workitems = await client.list_files(node2.node_id, "workitems")
    assert [f["name"] for f in workitems] == []
    assert [s.node_id for s in client.prep_release_status("j1")] == [node1.node_id]
    assert await count_lines(client, node1.node_id, "shared/prep-count") == 1
    assert await count_lines(client, node1.node_id, "shared/release-count") == 1


async def test_prep_not_rerun_after_agent_restart(pool, client: BatchClient) -> None:
    [node] = await pool(1)
    await client.create_job(Job(id="j1", job_preparation_task=JobPreparationTask(command_line=sh(COUNT_PREP))))
    await client.add_task("j1", TaskSpec(id="t1", command_line="true"), node_id=node.node_id)
    await client.wait_for_tasks("j1", timeout_s=TIMEOUT_S)
    before = await prep_info(client, "j1", node.node_id)

    await restart(node)
    await client.add_task("j1", TaskSpec(id="t2", command_line="true"), node_id=node.node_id)
    [t1, t2] = await client.wait_for_tasks("j1", timeout_s=TIMEOUT_S)

    assert t2.execution_info.result == TaskResult.SUCCESS
    assert await count_lines(client, node.node_id, "shared/prep-count") == 1
    assert await prep_info(client, "j1", node.node_id) == before


async def test_prep_reruns_before_next_task_after_reboot(pool, client: BatchClient) -> None:
    [node] = await pool(1)
    prep = JobPreparationTask(command_line=sh(f"{COUNT_PREP} && touch {SHARED}/prepared"))
    await client.create_job(Job(id="j1", job_preparation_task=prep))
    await client.add_task("j1", TaskSpec(id="t1", command_line="true"), node_id=node.node_id)
    await client.wait_for_tasks("j1", timeout_s=TIMEOUT_S)

    (node.root / "shared" / "prepared").unlink()  # t2 succeeds only if preparation ran again first
    await node.reboot()
    await client.add_task("j1", TaskSpec(id="t2", command_line=sh(f"test -e {SHARED}/prepared")), node_id=node.node_id)
    [_, t2] = await client.wait_for_tasks("j1", timeout_s=TIMEOUT_S)

    assert t2.execution_info.result == TaskResult.SUCCESS
    assert await count_lines(client, node.node_id, "shared/prep-count") == 2


async def test_prep_not_rerun_after_reboot_when_rerun_on_reboot_is_false(pool, client: BatchClient) -> None:
    [node] = await pool(1)
    prep = JobPreparationTask(command_line=sh(COUNT_PREP), rerun_on_node_reboot_after_success=False)
    await client.create_job(Job(id="j1", job_preparation_task=prep))
    await client.add_task("j1", TaskSpec(id="t1", command_line="true"), node_id=node.node_id)
    await client.wait_for_tasks("j1", timeout_s=TIMEOUT_S)

    await node.reboot()
    await client.add_task("j1", TaskSpec(id="t2", command_line="true"), node_id=node.node_id)
    [_, t2] = await client.wait_for_tasks("j1", timeout_s=TIMEOUT_S)

    assert t2.execution_info.result == TaskResult.SUCCESS
    assert await count_lines(client, node.node_id, "shared/prep-count") == 1


async def test_prep_reruns_after_agent_restart_if_it_had_not_completed(pool, client: BatchClient) -> None:
    # handback: the stop kills the preparation (with the default, keep, the next start adopts it instead:
    # tests/faults/test_kills.py)
    [node] = await pool(1, env={"NODE_AGENT_TASKS_ON_STOP": "handback"})
    prep = JobPreparationTask(command_line=sh(f"{COUNT_PREP} && {GATE}"))
    await client.create_job(Job(id="j1", job_preparation_task=prep))
    await client.add_task("j1", TaskSpec(id="t1", command_line="true"), node_id=node.node_id)
    await prep_info(client, "j1", node.node_id, completed=False)  # recorded as running

    await node.stop()  # same boot: only a preparation that completed is remembered
    (node.root / "shared" / "prep-count").unlink(missing_ok=True)  # count the runs after the restart
    open_gate(node)
    restarted = datetime.now(UTC) - timedelta(milliseconds=1)  # wire times carry milliseconds
    await node.start()  # recovery may rerun the preparation before the node reports ready
    await client.add_task("j1", TaskSpec(id="t2", command_line="true"), node_id=node.node_id)
    [t2] = await client.wait_for_tasks("j1", ["t2"], timeout_s=TIMEOUT_S)

    assert t2.execution_info.result == TaskResult.SUCCESS
    info = await prep_info(client, "j1", node.node_id)
    assert info.result == TaskResult.SUCCESS
    assert info.start_time >= restarted
    assert await count_lines(client, node.node_id, "shared/prep-count") == 1


def handed_back(events: list[Event], job_id: str) -> set[str]:
    return {
        e.task_id
        for e in events
        if e.type == "taskHandedBack" and e.job_id == job_id and e.code == "JobPreparationTaskFailed"
    }


async def test_failed_prep_is_retried_then_hands_tasks_back_and_blocks_the_job(pool, client: BatchClient) -> None:
    [node] = await pool(1, task_slots=2)
    events: list[Event] = []
    client.on_event = events.append
    prep = JobPreparationTask(
        command_line=sh(f"{COUNT_PREP} && {GATE} && exit 3"),
        constraints=TaskConstraints(max_task_retry_count=2),
    )
    await client.create_job(Job(id="j1", job_preparation_task=prep))
    specs = tasks(3, f"echo x >> {SHARED}/task-ran")
    for spec in specs:
        await client.add_task("j1", spec, node_id=node.node_id)
    open_gate(node)  # every task is recorded on the node before the preparation can fail

    await client.wait_until(lambda: handed_back(events, "j1") == {"t0", "t1", "t2"}, TIMEOUT_S)

    info = await prep_info(client, "j1", node.node_id)
    assert (info.exit_code, info.retry_count, info.result) == (3, 2, TaskResult.FAILURE)
    assert info.failure_info is not None and info.failure_info.code == "FailureExitCode"
    assert await count_lines(client, node.node_id, "shared/prep-count") == 3

    def all_back() -> bool:
        tasks = client.list_tasks("j1")
        return len(tasks) == 3 and all(t.state == TaskState.ACTIVE and t.node_info is None for t in tasks)

    await client.wait_until(all_back, TIMEOUT_S)
    with pytest.raises(CommandError) as refused:
        await client.add_task("j1", TaskSpec(id="t9", command_line="true"), node_id=node.node_id)
    assert refused.value.code == "JobPreparationTaskFailed"
    assert await count_lines(client, node.node_id, "shared/task-ran") == 0
    assert [e for e in events if e.type == "taskStateChanged" and e.state == TaskState.RUNNING] == []


async def test_node_keeps_serving_other_jobs_after_a_prep_failed(pool, client: BatchClient) -> None:
    [node] = await pool(1)
    await client.create_job(Job(id="bad", job_preparation_task=JobPreparationTask(command_line="false")))
    await client.create_job(Job(id="good"))
    events: list[Event] = []
    client.on_event = events.append
    await client.add_task("bad", TaskSpec(id="t1", command_line="true"), node_id=node.node_id)
    await client.wait_until(lambda: handed_back(events, "bad") == {"t1"}, TIMEOUT_S)

    await client.add_task("good", TaskSpec(id="t1", command_line="true"), node_id=node.node_id)
    [task] = await client.wait_for_tasks("good", timeout_s=TIMEOUT_S)

    assert task.execution_info.result == TaskResult.SUCCESS


async def test_tasks_refused_after_failed_prep_are_placed_on_another_node(pool, client: BatchClient) -> None:
    node1, node2 = await pool(2, task_slots=2)
    prep = JobPreparationTask(command_line=sh(f'{COUNT_PREP} && {GATE} && test "$AZ_BATCH_NODE_ID" != node1'))
    await client.create_job(Job(id="j1", job_preparation_task=prep))
    for spec in tasks(4, f'echo "$AZ_BATCH_NODE_ID" >> {SHARED}/task-ran'):
        await client.add_task("j1", spec, node_id=node1.node_id)
    open_gate(node1)
    open_gate(node2)

    done = await client.wait_for_tasks("j1", timeout_s=TIMEOUT_S)

    assert {t.node_info.node_id for t in done} == {node2.node_id}
    assert [t.execution_info.result for t in done] == [TaskResult.SUCCESS] * 4
    failed = await prep_info(client, "j1", node1.node_id)
    assert failed.result == TaskResult.FAILURE
    assert (await prep_info(client, "j1", node2.node_id)).result == TaskResult.SUCCESS
    assert await count_lines(client, node1.node_id, "shared/task-ran") == 0
    assert await count_lines(client, node2.node_id, "shared/task-ran") == 4
    with pytest.raises(CommandError) as refused:  # the client skips node1 for this job from now on ...
        await client.add_task("j1", TaskSpec(id="t9", command_line="true"), node_id=node1.node_id)
    assert refused.value.code == "JobPreparationTaskFailed"
    placed = await client.add_task("j1", TaskSpec(id="t10", command_line="true"))
    assert placed.node_info is not None and placed.node_info.node_id == node2.node_id


async def test_reboot_lifts_a_prep_failure_and_reruns_the_prep(pool, client: BatchClient) -> None:
    [node] = await pool(1)
    prep = JobPreparationTask(command_line=sh(f"{COUNT_PREP} && test -e {SHARED}/fixed"))
    await client.create_job(Job(id="j1", job_preparation_task=prep))
    events: list[Event] = []
    client.on_event = events.append
    await client.add_task("j1", TaskSpec(id="t1", command_line="true"), node_id=node.node_id)
    await client.wait_until(lambda: handed_back(events, "j1") == {"t1"}, TIMEOUT_S)

    (node.root / "shared" / "fixed").touch()
    await node.reboot()
    await client.add_task("j1", TaskSpec(id="t2", command_line="true"), node_id=node.node_id)
    [t2] = await client.wait_for_tasks("j1", ["t2"], timeout_s=TIMEOUT_S)

    assert t2.execution_info.result == TaskResult.SUCCESS
    assert (await prep_info(client, "j1", node.node_id)).result == TaskResult.SUCCESS
    assert await count_lines(client, node.node_id, "shared/prep-count") == 2


async def test_tasks_run_despite_failed_prep_without_wait_for_success(pool, client: BatchClient) -> None:
    [node] = await pool(1, task_slots=2)
    prep = JobPreparationTask(command_line=sh(f"{COUNT_PREP} && exit 5"), wait_for_success=False)
    await client.create_job(Job(id="j1", job_preparation_task=prep))
    for spec in tasks(3, "true"):
        await client.add_task("j1", spec, node_id=node.node_id)

    done = await client.wait_for_tasks("j1", timeout_s=TIMEOUT_S)
    info = await prep_info(client, "j1", node.node_id)
    await client.add_task("j1", TaskSpec(id="t9", command_line="true"), node_id=node.node_id)
    [late] = await client.wait_for_tasks("j1", ["t9"], timeout_s=TIMEOUT_S)

    assert [t.execution_info.result for t in [*done, late]] == [TaskResult.SUCCESS] * 4
    assert (info.exit_code, info.result) == (5, TaskResult.FAILURE)
    assert info.failure_info is not None and info.failure_info.code == "FailureExitCode"
    assert await count_lines(client, node.node_id, "shared/prep-count") == 1


async def test_tasks_are_preparing_while_prep_runs(pool, client: BatchClient) -> None:
    [node] = await pool(1, task_slots=2)
    prep = JobPreparationTask(command_line=sh(GATE))
    await client.create_job(Job(id="j1", job_preparation_task=prep))
    for spec in tasks(2, "true"):
        await client.add_task("j1", spec, node_id=node.node_id)

    def all_preparing() -> bool:
        states = [t.state for t in client.list_tasks("j1")]
        return states == [TaskState.PREPARING] * 2

    await client.wait_until(all_preparing, TIMEOUT_S)
    running = await prep_info(client, "j1", node.node_id, completed=False)
    assert running.state == SubtaskState.RUNNING
    open_gate(node)
    done = await client.wait_for_tasks("j1", timeout_s=TIMEOUT_S)

    assert [t.execution_info.result for t in done] == [TaskResult.SUCCESS] * 2


async def test_tasks_see_prep_dirs_in_job_prep_variables(pool, client: BatchClient) -> None:
    [node] = await pool(1)
    prep = JobPreparationTask(id="myprep", command_line="touch marker")  # in its working directory
    await client.create_job(Job(id="j1", job_preparation_task=prep))
    script = (
        'echo "$AZ_BATCH_JOB_PREP_DIR"; echo "$AZ_BATCH_JOB_PREP_WORKING_DIR"; '
        'test -e "$AZ_BATCH_JOB_PREP_WORKING_DIR/marker"'
    )
    await client.add_task("j1", TaskSpec(id="t1", command_line=sh(script)), node_id=node.node_id)
    [task] = await client.wait_for_tasks("j1", timeout_s=TIMEOUT_S)

    stdout = await client.get_file(node.node_id, "workitems/j1/job-1/t1/stdout.txt")
    prep_dir, prep_wd = stdout.decode().splitlines()
    expected = node.root / "workitems" / "j1" / "job-1" / "myprep"
    assert (prep_dir, prep_wd) == (str(expected), str(expected / "wd"))
    assert (await prep_info(client, "j1", node.node_id)).task_root_directory == prep_dir
    assert task.execution_info.result == TaskResult.SUCCESS
