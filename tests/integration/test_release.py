"""Job release and the end of a job through the wire: PROTOCOL.md "Semantics the agent guarantees" 3."""

from __future__ import annotations

import asyncio

import pytest
from pydantic import ValidationError

from node_agent.brokers import BrokerHandle
from node_agent.client.pool import BatchClient
from node_agent.testing.nodes import FakeNode, NodePool
from node_agent.wire.specs import Job, JobPreparationTask, JobReleaseTask, JobState, TaskSpec
from node_agent.wire.status import (
    Event,
    JobReleaseTaskExecutionInformation,
    SubtaskState,
    TaskResult,
    TaskState,
)
from tests.conftest import count_lines, restart
from tests.raw_mqtt import RawMqtt

TIMEOUT_S = 20.0
SHARED = '"$AZ_BATCH_NODE_SHARED_DIR"'
GATE = f"while [ ! -e {SHARED}/go ]; do sleep 0.05; done"  # held until the test creates shared/go
LONG = "sleep 60"  # ended by the job's end long before it would exit


def sh(script: str) -> str:
    """A command line running ``script`` (no single quotes in it) through /bin/sh, as Azure Batch users do."""
    assert "'" not in script
    return f"/bin/sh -c '{script}'"


def counted_job(job_id: str, release_script: str = "true", *, prep_script: str = "true", **release: object) -> Job:
    """A job whose preparation and release each append a line to a counter file in the shared dir."""
    return Job(
        id=job_id,
        job_preparation_task=JobPreparationTask(command_line=sh(f"echo x >> {SHARED}/prep-count; {prep_script}")),
        job_release_task=JobReleaseTask(
            command_line=sh(f"echo x >> {SHARED}/release-count && {release_script}"), **release
        ),
    )


def release_info(client: BatchClient, job_id: str, node_id: str) -> JobReleaseTaskExecutionInformation:
    info = client.view.prep_release[(job_id, node_id)].job_release_task_execution_info
    assert info is not None, f"no release on {node_id}"
    return info


async def wait_running(client: BatchClient, job_id: str, task_ids: list[str]) -> None:
    def running() -> bool:
        tasks = [client.view.tasks.get((job_id, task_id)) for task_id in task_ids]
        return all(t is not None and t.state == TaskState.RUNNING for t in tasks)

    await client.wait_until(running, TIMEOUT_S)


async def hand_back_after_failed_prep(pool: NodePool, client: BatchClient) -> FakeNode:
    """One node whose preparation of job j1 failed, and task t1 handed back by it; returns the node."""
    [node] = await pool(1)
    await client.create_job(counted_job("j1", prep_script="false"))
    handed_back: list[Event] = []
    client.on_event = lambda e: handed_back.append(e) if e.type == "taskHandedBack" else None
    await client.add_task("j1", TaskSpec(id="t1", command_line="true"), node_id=node.node_id)
    await client.wait_until(lambda: handed_back, TIMEOUT_S)
    return node


@pytest.mark.every_broker  # on NATS too (docs/testing.md): release on nodes of different brokers
async def test_terminate_ends_tasks_then_releases_once_on_every_prepared_node(
    pool, client: BatchClient, mqtt_broker: BrokerHandle
) -> None:
    node1, node2 = await pool(2, task_slots=1)
    await client.create_job(counted_job("j1"))
    await client.add_task("j1", TaskSpec(id="run1", command_line=LONG), node_id=node1.node_id)
    await client.add_task("j1", TaskSpec(id="wait1", command_line="true"), node_id=node1.node_id)
    await client.add_task("j1", TaskSpec(id="run2", command_line=LONG), node_id=node2.node_id)
    await wait_running(client, "j1", ["run1", "run2"])
    assert client.view.tasks[("j1", "wait1")].state == TaskState.ACTIVE  # queued behind run1's slot

    job = await client.terminate_job("j1", timeout_s=TIMEOUT_S)

    tasks = await client.wait_for_tasks("j1", timeout_s=TIMEOUT_S)
    assert {t.id: t.execution_info.failure_info.code for t in tasks} == dict.fromkeys(
        ["run1", "run2", "wait1"], "TaskEnded"
    )
    for node, task_ids in ((node1, ["run1", "wait1"]), (node2, ["run2"])):
        release = release_info(client, "j1", node.node_id)
        assert (release.state, release.result, release.exit_code) == (SubtaskState.COMPLETED, "success", 0)
        ended = [t.execution_info.end_time for t in tasks if t.id in task_ids]
        assert all(release.start_time >= end for end in ended)
        assert await count_lines(client, node.node_id, "shared/release-count") == 1
    assert job.state == JobState.COMPLETED
    async with BatchClient(mqtt_broker.url, topic_prefix=client.topics.prefix, command_timeout_s=20) as observer:
        retained = await observer.wait_until(lambda: observer.get_job("j1"), TIMEOUT_S)
    assert retained.state == JobState.COMPLETED


async def test_delete_after_terminate_does_not_rerun_release_and_removes_job(pool, client: BatchClient) -> None:
    [node] = await pool(1)
    await client.create_job(counted_job("j1"))
    await client.add_task("j1", TaskSpec(id="t1", command_line="true"), node_id=node.node_id)
    await client.wait_for_tasks("j1", timeout_s=TIMEOUT_S)
    await client.terminate_job("j1", timeout_s=TIMEOUT_S)

    await client.delete_job("j1", timeout_s=TIMEOUT_S)

    assert client.list_tasks("j1") == []
    assert client.prep_release_status("j1") == []
    assert [f["name"] for f in await client.list_files(node.node_id, "workitems")] == []
    assert not (node.root / "workitems" / "j1").exists()
    assert await count_lines(client, node.node_id, "shared/release-count") == 1


async def test_delete_of_active_job_ends_tasks_releases_once_and_removes_job(pool, client: BatchClient) -> None:
    [node] = await pool(1)
    await client.create_job(counted_job("j1"))
    await client.add_task("j1", TaskSpec(id="t1", command_line=LONG), node_id=node.node_id)
    await wait_running(client, "j1", ["t1"])
    ended: list[Event] = []
    client.on_event = lambda e: (
        ended.append(e) if e.type == "taskStateChanged" and e.state == TaskState.COMPLETED else None
    )

    await client.delete_job("j1", timeout_s=TIMEOUT_S)

    [event] = ended
    assert event.task is not None and event.task.execution_info.failure_info.code == "TaskEnded"
    assert client.list_tasks("j1") == []
    assert client.prep_release_status("j1") == []
    assert not (node.root / "workitems" / "j1").exists()
    assert await count_lines(client, node.node_id, "shared/release-count") == 1


@pytest.mark.every_broker  # on NATS too (docs/testing.md): a command held for a node that is away
async def test_node_offline_at_terminate_releases_when_it_returns(pool, client: BatchClient) -> None:
    [node] = await pool(1)
    await client.create_job(counted_job("j1"))
    await client.add_task("j1", TaskSpec(id="t1", command_line="true"), node_id=node.node_id)
    await client.wait_for_tasks("j1", timeout_s=TIMEOUT_S)
    await node.stop()

    terminating = asyncio.create_task(client.terminate_job("j1", timeout_s=TIMEOUT_S))
    await client.wait_until(lambda: client.get_job("j1").state == JobState.TERMINATING, TIMEOUT_S)
    assert not terminating.done()
    await node.start()
    job = await terminating

    assert job.state == JobState.COMPLETED
    assert release_info(client, "j1", node.node_id).result == TaskResult.SUCCESS
    assert await count_lines(client, node.node_id, "shared/release-count") == 1


async def test_release_not_rerun_by_agent_restart_or_delete(pool, client: BatchClient) -> None:
    [node] = await pool(1)
    await client.create_job(counted_job("j1"))
    await client.add_task("j1", TaskSpec(id="t1", command_line="true"), node_id=node.node_id)
    await client.wait_for_tasks("j1", timeout_s=TIMEOUT_S)
    await client.terminate_job("j1", timeout_s=TIMEOUT_S)

    await restart(node)
    await client.delete_job("j1", timeout_s=TIMEOUT_S)

    assert not (node.root / "workitems" / "j1").exists()
    assert await count_lines(client, node.node_id, "shared/prep-count") == 1
    assert await count_lines(client, node.node_id, "shared/release-count") == 1


async def test_release_takes_no_task_slot(pool, client: BatchClient) -> None:
    [node] = await pool(1, task_slots=1)
    await client.create_job(counted_job("j1"))
    await client.add_task("j1", TaskSpec(id="t1", command_line="true"), node_id=node.node_id)
    await client.wait_for_tasks("j1", timeout_s=TIMEOUT_S)
    await client.create_job(Job(id="other"))
    await client.add_task("other", TaskSpec(id="busy", command_line=sh(GATE)), node_id=node.node_id)
    await wait_running(client, "other", ["busy"])

    await client.terminate_job("j1", timeout_s=TIMEOUT_S)  # would wait for the slot if release took one

    assert client.view.tasks[("other", "busy")].state == TaskState.RUNNING
    assert await count_lines(client, node.node_id, "shared/release-count") == 1
    (node.root / "shared" / "go").touch()
    [busy] = await client.wait_for_tasks("other", timeout_s=TIMEOUT_S)
    assert busy.execution_info.result == TaskResult.SUCCESS


async def test_failed_release_is_not_retried_and_job_completes(pool, client: BatchClient) -> None:
    [node] = await pool(1)
    await client.create_job(counted_job("j1", "exit 4"))
    await client.add_task("j1", TaskSpec(id="t1", command_line="true"), node_id=node.node_id)
    await client.wait_for_tasks("j1", timeout_s=TIMEOUT_S)

    job = await client.terminate_job("j1", timeout_s=TIMEOUT_S)

    release = release_info(client, "j1", node.node_id)
    assert (release.exit_code, release.result) == (4, TaskResult.FAILURE)
    assert release.failure_info is not None and release.failure_info.code == "FailureExitCode"
    assert job.state == JobState.COMPLETED
    assert await count_lines(client, node.node_id, "shared/release-count") == 1


async def test_release_is_killed_at_its_max_wall_clock_time(pool, client: BatchClient) -> None:
    [node] = await pool(1)
    await client.create_job(counted_job("j1", LONG, max_wall_clock_time="PT1S"))
    await client.add_task("j1", TaskSpec(id="t1", command_line="true"), node_id=node.node_id)
    await client.wait_for_tasks("j1", timeout_s=TIMEOUT_S)

    job = await client.terminate_job("j1", timeout_s=TIMEOUT_S)

    release = release_info(client, "j1", node.node_id)
    assert release.result == TaskResult.FAILURE
    assert release.failure_info is not None and release.failure_info.code == "TaskEnded"
    assert job.state == JobState.COMPLETED


async def test_release_runs_on_node_whose_prep_failed(pool, client: BatchClient) -> None:
    node = await hand_back_after_failed_prep(pool, client)

    await client.terminate_job("j1", timeout_s=TIMEOUT_S)

    assert release_info(client, "j1", node.node_id).result == TaskResult.SUCCESS
    assert await count_lines(client, node.node_id, "shared/release-count") == 1


async def test_terminate_during_prep_ends_its_tasks_instead_of_handing_them_back(pool, client: BatchClient) -> None:
    [node] = await pool(1, task_slots=2)
    await client.create_job(counted_job("j1", prep_script=GATE))  # the gate is never opened
    events: list[Event] = []
    client.on_event = events.append
    for task_id in ("t1", "t2"):
        await client.add_task("j1", TaskSpec(id=task_id, command_line="true"), node_id=node.node_id)
    await client.wait_until(lambda: [t.state for t in client.list_tasks("j1")] == [TaskState.PREPARING] * 2, TIMEOUT_S)

    await client.terminate_job("j1", timeout_s=TIMEOUT_S)

    tasks = await client.wait_for_tasks("j1", timeout_s=TIMEOUT_S)
    assert [t.execution_info.failure_info.code for t in tasks] == ["TaskEnded"] * 2
    assert [t.node_info.node_id for t in tasks] == [node.node_id] * 2
    assert [e for e in events if e.type == "taskHandedBack"] == []
    assert await count_lines(client, node.node_id, "shared/release-count") == 1


async def test_release_sees_the_prep_working_dir(pool, client: BatchClient) -> None:
    [node] = await pool(1)
    job = Job(
        id="j1",
        job_preparation_task=JobPreparationTask(command_line="touch made-by-prep"),
        job_release_task=JobReleaseTask(command_line=sh('rm "$AZ_BATCH_JOB_PREP_WORKING_DIR/made-by-prep"')),
    )
    await client.create_job(job)
    await client.add_task("j1", TaskSpec(id="t1", command_line="true"), node_id=node.node_id)
    await client.wait_for_tasks("j1", timeout_s=TIMEOUT_S)

    await client.terminate_job("j1", timeout_s=TIMEOUT_S)

    release = release_info(client, "j1", node.node_id)
    assert release.result == TaskResult.SUCCESS
    assert release.task_root_directory == str(node.root / "workitems" / "j1" / "job-1" / "jobrelease")


async def test_delete_clears_tasks_handed_back_after_failed_prep(pool, client: BatchClient) -> None:
    await hand_back_after_failed_prep(pool, client)

    await client.delete_job("j1", timeout_s=TIMEOUT_S)

    assert client.prep_release_status("j1") == []
    await client.wait_until(lambda: not client.list_tasks("j1"), TIMEOUT_S)  # cleared by the client


async def test_terminate_completes_tasks_handed_back_after_failed_prep(pool, client: BatchClient) -> None:
    node = await hand_back_after_failed_prep(pool, client)

    await client.terminate_job("j1", timeout_s=TIMEOUT_S)
    await client.list_files(node.node_id, "shared")  # a round trip: whatever the node sent has arrived

    [task] = client.list_tasks("j1")
    assert task.state == TaskState.COMPLETED, "the driver ends a terminated job's tasks that no node holds"
    assert task.execution_info.failure_info.code == "TaskEnded"


async def test_recreated_job_with_same_id_runs_prep_again(pool, client: BatchClient) -> None:
    [node] = await pool(1)
    await client.create_job(counted_job("j1"))
    await client.add_task("j1", TaskSpec(id="old", command_line="true"), node_id=node.node_id)
    await client.wait_for_tasks("j1", timeout_s=TIMEOUT_S)
    await client.delete_job("j1", timeout_s=TIMEOUT_S)

    await client.create_job(counted_job("j1"))
    await client.add_task("j1", TaskSpec(id="new", command_line="true"))
    [task] = await client.wait_for_tasks("j1", timeout_s=TIMEOUT_S)  # the deleted job's tasks are forgotten

    assert (task.id, task.execution_info.result) == ("new", TaskResult.SUCCESS)
    assert await count_lines(client, node.node_id, "shared/prep-count") == 2
    assert await count_lines(client, node.node_id, "shared/release-count") == 1


def test_job_with_release_but_no_prep_is_invalid() -> None:
    with pytest.raises(ValidationError, match="jobPreparationTask"):
        Job(id="j1", job_release_task=JobReleaseTask(command_line="true"))
    with pytest.raises(ValidationError, match="jobPreparationTask"):
        Job.model_validate_json(b'{"id": "j1", "jobReleaseTask": {"commandLine": "true"}}')


async def test_job_created_again_while_its_deletion_runs_on_the_node_starts_after_it(
    pool, client: BatchClient, raw: RawMqtt
) -> None:
    """A driver may create a job again before it has seen a node clear the deleted one (a broker that keeps order
    per topic only can show it the task results before the node's preparation status): the node finishes the
    deletion, then takes the new job."""
    [node] = await pool(1)
    job = counted_job("j1", GATE)
    await client.create_job(job)
    await client.add_task("j1", TaskSpec(id="old", command_line="true"), node_id=node.node_id)
    await client.wait_for_tasks("j1", timeout_s=TIMEOUT_S)
    topic = f"{raw.prefix}/jobs/j1"
    await raw.publish(topic, job.model_copy(update={"state": JobState.DELETING}).to_json(), retain=True)
    await client.wait_until(
        lambda: (
            (info := client.view.prep_release.get(("j1", node.node_id))) is not None
            and info.job_release_task_execution_info is not None
        ),
        TIMEOUT_S,
    )  # the release runs, held by its gate: the deletion is under way
    await raw.publish(topic, b"", retain=True)
    await raw.publish(topic, counted_job("j1").model_copy(update={"state": JobState.ACTIVE}).to_json(), retain=True)
    (node.root / "shared" / "go").touch()
    await client.wait_until(lambda: ("j1", node.node_id) not in client.view.prep_release, TIMEOUT_S)  # deleted

    await client.add_task("j1", TaskSpec(id="new", command_line="true"), node_id=node.node_id)
    [task] = await client.wait_for_tasks("j1", ["new"], timeout_s=TIMEOUT_S)
    assert task.execution_info.result == TaskResult.SUCCESS
    assert await count_lines(client, node.node_id, "shared/prep-count") == 2  # the new job's preparation ran
