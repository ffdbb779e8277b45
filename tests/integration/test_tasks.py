"""Ordinary tasks through the wire: exit codes, environment, retries, limits, slots, repeated adds, refusals.

PROTOCOL.md "Semantics the agent guarantees" 4 and 5, "Transport" (at least once: a repeated addTask runs the
task once) and the addTask error codes.
"""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from node_agent.client.pool import BatchClient, CommandError
from node_agent.testing.nodes import FakeNode
from node_agent.wire.specs import (
    EnvironmentSetting,
    Job,
    JobPreparationTask,
    JobReleaseTask,
    TaskConstraints,
    TaskSpec,
)
from node_agent.wire.status import Event, NodeState, Task, TaskResult, TaskState
from tests.processes import Fifo, has_exited, open_pidfd
from tests.raw_mqtt import RawMqtt

TIMEOUT_S = 20.0


# -- helpers -------------------------------------------------------------------------------------------------


def sh(script: str) -> str:
    """A command line that runs ``script`` through /bin/sh (the task's command line itself has no shell)."""
    return shlex.join(["/bin/sh", "-c", script])


def task_dir(node: FakeNode, job_id: str, task_id: str) -> Path:
    return node.root / "workitems" / job_id / "job-1" / task_id


async def run_task(client: BatchClient, job_id: str, spec: TaskSpec, node: FakeNode) -> Task:
    await client.add_task(job_id, spec, node_id=node.node_id)
    [task] = await client.wait_for_tasks(job_id, [spec.id], timeout_s=TIMEOUT_S)
    return task


# -- exit codes and failureInfo ------------------------------------------------------------------------------


async def test_exit_code_decides_result_and_failure_info(pool, client: BatchClient) -> None:
    [node] = await pool(1, task_slots=4)
    await client.create_job(Job(id="j"))
    specs = {
        "ok": "/bin/true",
        "bad": sh("exit 42"),
        "missing": "/no/such/program --flag",
        "unparseable": "echo 'unbalanced",
    }
    for task_id, command_line in specs.items():
        await client.add_task("j", TaskSpec(id=task_id, command_line=command_line), node_id=node.node_id)
    tasks = {t.id: t for t in await client.wait_for_tasks("j", list(specs), timeout_s=TIMEOUT_S)}

    ok = tasks["ok"].execution_info
    assert (ok.exit_code, ok.result, ok.failure_info) == (0, TaskResult.SUCCESS, None)
    assert ok.start_time is not None and ok.end_time is not None and ok.end_time >= ok.start_time
    assert tasks["ok"].node_info is not None and tasks["ok"].node_info.node_id == node.node_id

    bad = tasks["bad"].execution_info
    assert (bad.exit_code, bad.result) == (42, TaskResult.FAILURE)
    assert bad.failure_info is not None
    assert (bad.failure_info.category, bad.failure_info.code) == ("usererror", "FailureExitCode")
    assert bad.failure_info.details == [{"name": "ExitCode", "value": "42"}]

    # A program that cannot start has no exit code: Azure Batch's CommandProgramNotFound.
    missing = tasks["missing"].execution_info
    assert (missing.exit_code, missing.result) == (None, TaskResult.FAILURE)
    assert missing.failure_info is not None and missing.failure_info.code == "CommandProgramNotFound"
    assert "/no/such/program" in missing.failure_info.message

    unparseable = tasks["unparseable"].execution_info
    assert (unparseable.exit_code, unparseable.result) == (None, TaskResult.FAILURE)
    assert unparseable.failure_info is not None
    assert unparseable.failure_info.code == "CommandLaunchFailed"


# -- command line, output files, environment -----------------------------------------------------------------


async def test_command_line_runs_without_a_shell_and_output_goes_to_task_files(pool, client: BatchClient) -> None:
    [node] = await pool(1, task_slots=2)
    await client.create_job(Job(id="j"))
    literal = TaskSpec(id="echo", command_line="echo $HOME 'a  b' ; `id` > x")
    output = TaskSpec(id="out", command_line=sh("echo to-out; echo to-err >&2"))
    for spec in (literal, output):
        await client.add_task("j", spec, node_id=node.node_id)
    tasks = {t.id: t for t in await client.wait_for_tasks("j", ["echo", "out"], timeout_s=TIMEOUT_S)}

    # no shell: no expansion, no ';', no redirection, no command substitution; shlex-style quoting only
    assert tasks["echo"].execution_info.exit_code == 0
    assert (task_dir(node, "j", "echo") / "stdout.txt").read_text() == "$HOME a  b ; `id` > x\n"
    assert not (task_dir(node, "j", "echo") / "wd" / "x").exists()

    folder = task_dir(node, "j", "out")
    assert tasks["out"].node_info is not None
    assert tasks["out"].node_info.task_root_directory == str(folder)
    assert (folder / "stdout.txt").read_text() == "to-out\n"
    assert (folder / "stderr.txt").read_text() == "to-err\n"
    # and the same bytes over the wire
    assert await client.get_file(node.node_id, "workitems/j/job-1/out/stdout.txt") == b"to-out\n"


# The shell, not this test's Python: as root the task runs as a task user, who may not reach the virtualenv.
DUMP_ENV = "/bin/sh -c 'pwd; env'"


def parse_dump(text: str) -> dict[str, object]:
    cwd, *lines = text.splitlines()
    return {"cwd": cwd, "env": dict(line.split("=", 1) for line in lines if "=" in line)}


async def test_environment_has_batch_variables_and_job_then_task_settings(pool, client: BatchClient) -> None:
    [node] = await pool(1, env={"AGENT_SECRET_TOKEN": "s3cret"})
    job = Job(
        id="envjob",
        common_environment_settings=[
            EnvironmentSetting(name="FROM_JOB", value="job"),
            EnvironmentSetting(name="OVERRIDDEN", value="job"),
        ],
    )
    await client.create_job(job)
    spec = TaskSpec(
        id="env",
        command_line=DUMP_ENV,
        environment_settings=[
            EnvironmentSetting(name="OVERRIDDEN", value="task"),
            EnvironmentSetting(name="FROM_TASK", value="task value with spaces"),
        ],
    )
    task = await run_task(client, "envjob", spec, node)
    assert task.execution_info.exit_code == 0
    folder = task_dir(node, "envjob", "env")
    dump = parse_dump((folder / "stdout.txt").read_text())
    env = dump["env"]
    assert isinstance(env, dict)
    root = str(node.root.absolute())
    expected = {
        "AZ_BATCH_NODE_ID": node.node_id,
        "AZ_BATCH_POOL_ID": "pool1",
        "AZ_BATCH_JOB_ID": "envjob",
        "AZ_BATCH_TASK_ID": "env",
        "AZ_BATCH_TASK_DIR": str(folder.absolute()),
        "AZ_BATCH_TASK_WORKING_DIR": str(folder.absolute() / "wd"),
        "AZ_BATCH_NODE_SHARED_DIR": f"{root}/shared",
        "AZ_BATCH_NODE_ROOT_DIR": root,
    }
    assert {name: env.get(name) for name in expected} == expected
    assert dump["cwd"] == expected["AZ_BATCH_TASK_WORKING_DIR"]
    assert env["FROM_JOB"] == "job"
    assert env["FROM_TASK"] == "task value with spaces"
    assert env["OVERRIDDEN"] == "task"
    assert [name for name in env if name.startswith("NODE_AGENT_")] == []
    assert "AGENT_SECRET_TOKEN" not in env


# -- retries and limits --------------------------------------------------------------------------------------


async def test_failing_task_is_retried_max_task_retry_count_times(pool, client: BatchClient) -> None:
    [node] = await pool(1, task_slots=2)
    await client.create_job(Job(id="j"))
    always = TaskSpec(
        id="always",
        command_line=sh("echo attempt >> attempts; exit 7"),
        constraints=TaskConstraints(max_task_retry_count=2),
    )
    second = TaskSpec(
        id="second",
        command_line=sh('echo attempt >> attempts; [ "$(wc -l < attempts)" -ge 2 ]'),
        constraints=TaskConstraints(max_task_retry_count=5),
    )
    for spec in (always, second):
        await client.add_task("j", spec, node_id=node.node_id)
    tasks = {t.id: t for t in await client.wait_for_tasks("j", ["always", "second"], timeout_s=TIMEOUT_S)}

    info = tasks["always"].execution_info
    assert (info.exit_code, info.retry_count, info.result) == (7, 2, TaskResult.FAILURE)
    assert info.last_retry_time is not None and info.start_time is not None
    assert info.start_time <= info.last_retry_time
    assert info.failure_info is not None and info.failure_info.code == "FailureExitCode"
    assert (task_dir(node, "j", "always") / "wd" / "attempts").read_text().count("attempt") == 3

    # a retry that succeeds ends the retries: success, one retry recorded
    info = tasks["second"].execution_info
    assert (info.exit_code, info.retry_count, info.result) == (0, 1, TaskResult.SUCCESS)
    assert info.failure_info is None and info.last_retry_time is not None
    assert (task_dir(node, "j", "second") / "wd" / "attempts").read_text().count("attempt") == 2


def tree_script(fifo: Path) -> str:
    """A task whose child shell starts a grandchild, reports the grandchild's pid, and waits forever."""
    inner = f"sleep 300 & echo $! > {shlex.quote(str(fifo))}; wait"
    return sh(f"/bin/sh -c {shlex.quote(inner)}; exit $?")


async def test_max_wall_clock_time_ends_the_task_and_kills_its_grandchild(
    pool, client: BatchClient, tmp_path: Path
) -> None:
    [node] = await pool(1)
    await client.create_job(Job(id="j"))
    fifo = Fifo(tmp_path / "grandchild.pid")
    try:
        spec = TaskSpec(
            id="slow",
            command_line=tree_script(fifo.path),
            constraints=TaskConstraints.model_validate({"maxWallClockTime": "PT1S", "maxTaskRetryCount": 3}),
        )
        await client.add_task("j", spec, node_id=node.node_id)
        grandchild = open_pidfd(int(await fifo.read_line()))
    finally:
        fifo.close()
    [task] = await client.wait_for_tasks("j", ["slow"], timeout_s=TIMEOUT_S)
    info = task.execution_info
    assert info.result == TaskResult.FAILURE
    assert info.failure_info is not None and info.failure_info.code == "TaskEnded"
    assert info.retry_count == 0  # a timeout is not retried
    assert has_exited(grandchild)


async def test_terminate_task_ends_running_and_waiting_tasks_with_task_ended(
    pool, client: BatchClient, tmp_path: Path
) -> None:
    [node] = await pool(1, task_slots=1)
    await client.create_job(Job(id="j"))
    fifo = Fifo(tmp_path / "grandchild.pid")
    try:
        await client.add_task("j", TaskSpec(id="long", command_line=tree_script(fifo.path)), node_id=node.node_id)
        grandchild = open_pidfd(int(await fifo.read_line()))
    finally:
        fifo.close()
    # the only slot is taken: this one waits, and is ended before it ever starts
    await client.add_task("j", TaskSpec(id="waiting", command_line=sh("touch ran")), node_id=node.node_id)
    waiting = await client.terminate_task("j", "waiting")
    assert waiting.state == TaskState.COMPLETED
    assert waiting.execution_info.failure_info is not None
    assert waiting.execution_info.failure_info.code == "TaskEnded"
    assert waiting.execution_info.exit_code is None

    running = await client.terminate_task("j", "long")
    assert running.state == TaskState.COMPLETED
    assert running.execution_info.failure_info is not None
    assert running.execution_info.failure_info.code == "TaskEnded"
    assert has_exited(grandchild)
    tasks = await client.wait_for_tasks("j", ["long", "waiting"], timeout_s=TIMEOUT_S)
    assert [t.execution_info.result for t in tasks] == [TaskResult.FAILURE, TaskResult.FAILURE]
    assert not (task_dir(node, "j", "waiting") / "wd" / "ran").exists()

    # terminating it again is harmless and answers the same final state
    assert (await client.terminate_task("j", "long")).state == TaskState.COMPLETED
    # a task this node does not have
    with pytest.raises(CommandError) as refused:
        await client.command(node.node_id, {"type": "terminateTask", "jobId": "j", "taskId": "ghost"})
    assert refused.value.code == "TaskNotFound"


# -- slots ---------------------------------------------------------------------------------------------------


async def test_one_task_slot_runs_tasks_one_at_a_time(pool, client: BatchClient, raw: RawMqtt) -> None:
    [node] = await pool(1, task_slots=1)
    state_topic = f"{raw.prefix}/nodes/{node.node_id}/state"
    await raw.subscribe(state_topic)
    running: set[str] = set()
    most_running = 0
    starts: list[str] = []

    def on_event(event: Event) -> None:
        nonlocal most_running
        if event.type != "taskStateChanged" or event.task_id is None:
            return
        if event.state == TaskState.RUNNING:
            running.add(event.task_id)
            starts.append(event.task_id)
        else:
            running.discard(event.task_id)
        most_running = max(most_running, len(running))

    client.on_event = on_event
    await client.create_job(Job(id="j"))
    # Each task holds a lock directory while it runs: an overlapping task finds it taken and exits 99.
    lock = '"$AZ_BATCH_NODE_SHARED_DIR/lock"'
    script = f"mkdir {lock} || exit 99; sleep 0.2; rmdir {lock}"
    ids = [f"t{n}" for n in range(4)]
    for task_id in ids:
        await client.add_task("j", TaskSpec(id=task_id, command_line=sh(script)), node_id=node.node_id)
    tasks = await client.wait_for_tasks("j", ids, timeout_s=TIMEOUT_S)
    assert [t.execution_info.exit_code for t in tasks] == [0, 0, 0, 0]
    assert sorted(starts) == ids
    assert most_running == 1
    counts = [NodeState.model_validate_json(p).running_task_slots_count for p in raw.on_topic(state_topic)]
    assert counts and max(counts) <= 1, counts


# -- at-least-once delivery: a repeated addTask runs the task once -------------------------------------------

COUNT_RUNS = sh('echo run >> "$AZ_BATCH_NODE_SHARED_DIR/count-$AZ_BATCH_JOB_ID"')


@pytest.mark.every_broker  # on NATS too (docs/testing.md): duplicates, and a job document after its command
async def test_repeated_add_task_runs_the_task_once_and_acks_every_copy(
    pool, client: BatchClient, raw: RawMqtt
) -> None:
    [node] = await pool(1, task_slots=2)
    commands = f"{raw.prefix}/nodes/{node.node_id}/commands"
    await client.create_job(Job(id="known"))

    # the same message delivered twice (MQTT QoS 1 is at least once)
    body = {"type": "addTask", "jobId": "known", "task": {"id": "once", "commandLine": COUNT_RUNS}}
    payload = raw.command(node.node_id, body, "dup-1")
    await raw.publish(commands, payload)
    await raw.publish(commands, payload)
    replies = await raw.wait_until(lambda: found if len(found := raw.replies("dup-1")) == 2 else None)
    assert [reply["ok"] for reply in replies] == [True, True]
    assert {reply["result"]["id"] for reply in replies} == {"once"}
    # the same task id under a new requestId is acknowledged too
    assert (await client.command(node.node_id, body))["id"] == "once"

    # two copies that both wait for a job document the node has not seen yet
    late = {"type": "addTask", "jobId": "late", "task": {"id": "once", "commandLine": COUNT_RUNS}}
    await raw.publish(commands, raw.command(node.node_id, late, "late-1"))
    await raw.publish(commands, raw.command(node.node_id, late, "late-2"))
    await raw.publish(f"{raw.prefix}/jobs/late", Job(id="late").to_json(), retain=True)
    replies = await raw.wait_until(
        lambda: found if len(found := raw.replies("late-1") + raw.replies("late-2")) == 2 else None
    )
    assert [reply["ok"] for reply in replies] == [True, True]

    await client.wait_for_tasks("known", ["once"], timeout_s=TIMEOUT_S)
    await client.wait_for_tasks("late", ["once"], timeout_s=TIMEOUT_S)
    # after completion a late duplicate answers the completed state and does not run it again
    again = Task.model_validate(await client.command(node.node_id, body))
    assert again.state == TaskState.COMPLETED
    assert (node.root / "shared" / "count-known").read_text() == "run\n"
    assert (node.root / "shared" / "count-late").read_text() == "run\n"


# -- what a task may ask for and what the agent refuses ------------------------------------------------------


async def test_task_id_of_the_preparation_or_release_task_is_refused(pool, client: BatchClient) -> None:
    [node] = await pool(1)
    prep_and_release = Job(
        id="named",
        job_preparation_task=JobPreparationTask(id="setup", command_line="/bin/true"),
        job_release_task=JobReleaseTask(id="cleanup", command_line="/bin/true"),
    )
    default_prep = Job(id="default", job_preparation_task=JobPreparationTask(command_line="/bin/true"))
    await client.create_job(prep_and_release)
    await client.create_job(default_prep)
    cases = [
        ("named", "setup", "TaskIdSameAsJobPreparationTask"),
        ("named", "cleanup", "TaskIdSameAsJobReleaseTask"),
        ("default", "jobpreparation", "TaskIdSameAsJobPreparationTask"),
    ]
    for job_id, task_id, code in cases:
        with pytest.raises(CommandError) as refused:
            await client.add_task(job_id, TaskSpec(id=task_id, command_line="/bin/true"), node_id=node.node_id)
        assert (refused.value.code, task_id in refused.value.message) == (code, True)
        assert client.view.tasks.get((job_id, task_id)) is None
    # nothing of either job ran: a refused add changes nothing
    assert not (node.root / "workitems" / "named").exists()
    assert not (node.root / "workitems" / "default").exists()


async def test_add_task_to_a_job_without_document_is_refused_with_job_not_found(pool, client: BatchClient) -> None:
    [node] = await pool(1, env={"NODE_AGENT_JOB_WAIT": "PT1S"})
    with pytest.raises(CommandError) as refused:
        await client.add_task("ghost", TaskSpec(id="t", command_line="/bin/true"), node_id=node.node_id)
    assert refused.value.code == "JobNotFound"
    assert "publish the job" in refused.value.message
    # once the job is published, the same add succeeds
    await client.create_job(Job(id="ghost"))
    task = await run_task(client, "ghost", TaskSpec(id="t", command_line="/bin/true"), node)
    assert task.execution_info.result == TaskResult.SUCCESS


async def test_add_task_to_an_ended_job_is_refused_with_job_not_active(pool, client: BatchClient, raw: RawMqtt) -> None:
    [node] = await pool(1)
    commands = f"{raw.prefix}/nodes/{node.node_id}/commands"
    for state in ("terminating", "completed", "deleting"):
        # Document and command from one connection: the broker delivers them to the agent in that order.
        job = Job.model_validate({"id": state, "state": state})
        await raw.publish(f"{raw.prefix}/jobs/{state}", job.to_json(), retain=True)
        body = {"type": "addTask", "jobId": state, "task": {"id": "t", "commandLine": "/bin/true"}}
        await raw.publish(commands, raw.command(node.node_id, body, f"add-{state}"))
        [reply] = await raw.wait_until(lambda state=state: raw.replies(f"add-{state}"))
        assert reply["ok"] is False
        assert reply["error"]["code"] == "JobNotActive"
        assert state in reply["error"]["message"]
    # the same through the client: a job ended with terminate_job takes no new task. With a release task,
    # terminate_job returns only once the node released, so the node has seen the job end (on NATS a command
    # may overtake a job document sent before it on another topic).
    prep, release = JobPreparationTask(command_line="/bin/true"), JobReleaseTask(command_line="/bin/true")
    await client.create_job(Job(id="j", job_preparation_task=prep, job_release_task=release))
    await run_task(client, "j", TaskSpec(id="first", command_line="/bin/true"), node)
    await client.terminate_job("j", timeout_s=TIMEOUT_S)
    with pytest.raises(CommandError) as refused:
        await client.add_task("j", TaskSpec(id="second", command_line="/bin/true"), node_id=node.node_id)
    assert refused.value.code == "JobNotActive"


async def test_disabled_scheduling_refuses_new_tasks_until_enabled(pool, client: BatchClient) -> None:
    [node] = await pool(1)
    await client.create_job(Job(id="j"))
    assert await client.command(node.node_id, {"type": "disableScheduling"}) == {"schedulingState": "disabled"}
    await client.wait_until(
        lambda: (state := client.view.nodes.get(node.node_id)) and state.scheduling_state == "disabled",
        TIMEOUT_S,
    )
    with pytest.raises(CommandError) as refused:
        await client.add_task("j", TaskSpec(id="t", command_line="/bin/true"), node_id=node.node_id)
    assert refused.value.code == "NodeSchedulingDisabled"
    assert client.view.tasks.get(("j", "t")) is None
    assert await client.command(node.node_id, {"type": "enableScheduling"}) == {"schedulingState": "enabled"}
    task = await run_task(client, "j", TaskSpec(id="t", command_line="/bin/true"), node)
    assert task.execution_info.result == TaskResult.SUCCESS
