"""Task users through the wire (as root): who a task runs as, what it may touch, and when its user goes."""

from __future__ import annotations

import os
import pwd
from pathlib import Path

import psutil
import pytest

from node_agent.client.pool import BatchClient
from node_agent.identity.names import pool_user_name, task_user_name
from node_agent.testing.nodes import FakeNode
from node_agent.wire.specs import (
    AutoUserSpecification,
    Job,
    JobPreparationTask,
    JobReleaseTask,
    TaskSpec,
    UserIdentity,
)
from node_agent.wire.status import Task
from tests.faults.conftest import SHARED, Gate
from tests.integration.test_release import release_info, sh
from tests.integration.test_retention import FAST_SWEEP, Removals, kept_for, task_dir

needs_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="task users need an agent running as root (CI runs as root; run the tests as root)"
)

TIMEOUT_S = 20.0
ADMIN = UserIdentity(auto_user=AutoUserSpecification(elevation_level="admin"))
TASK_SCOPE = UserIdentity(auto_user=AutoUserSpecification(scope="task"))


async def run(client: BatchClient, job_id: str, spec: TaskSpec) -> Task:
    await client.add_task(job_id, spec)
    [task] = await client.wait_for_tasks(job_id, [spec.id], timeout_s=TIMEOUT_S)
    return task


def stdout(node: FakeNode, job_id: str, task_id: str) -> str:
    return (task_dir(node, job_id, task_id) / "stdout.txt").read_text().strip()


def user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


@needs_root
async def test_nonadmin_task_cannot_touch_root_files_or_agent_state_but_admin_can(
    pool, client: BatchClient, tmp_path: Path
) -> None:
    [node] = await pool(1)
    owned = tmp_path / "root-owned"
    owned.mkdir(mode=0o755)
    owned.chmod(0o755)
    target = owned / "file.txt"
    target.write_text("root's\n")
    target.chmod(0o644)
    state = node.agent.state_dir
    assert state.stat().st_mode & 0o777 == 0o700
    await client.create_job(Job(id="j"))
    probe = f"echo more >> {target} ; w=$? ; ls {state} > /dev/null ; r=$? ; echo $w $r ; id -u"

    plain = await run(client, "j", TaskSpec(id="plain", command_line=sh(probe)))
    admin = await run(client, "j", TaskSpec(id="admin", command_line=sh(probe), user_identity=ADMIN))

    assert plain.execution_info.result == "success" and admin.execution_info.result == "success"
    write_status, read_status, uid = stdout(node, "j", "plain").split()
    assert (write_status != "0", read_status != "0", uid != "0") == (True, True, True)
    assert stdout(node, "j", "admin").split() == ["0", "0", "0"]
    assert target.read_text() == "root's\nmore\n"  # only the admin task's line


@needs_root
async def test_pool_user_is_shared_task_user_is_not_and_goes_with_the_task_files(pool, client: BatchClient) -> None:
    [node] = await pool(1, env=FAST_SWEEP)
    removals = Removals(client)
    await client.create_job(Job(id="j"))
    who = sh("id -un; id -G")
    first = await run(client, "j", TaskSpec(id="a", command_line=who))
    second = await run(client, "j", TaskSpec(id="b", command_line=who))
    mine = await run(
        client, "j", TaskSpec(id="c", command_line=who, user_identity=TASK_SCOPE, constraints=kept_for("PT1S"))
    )
    assert {t.execution_info.result for t in (first, second, mine)} == {"success"}

    pool_user = pool_user_name("pool1")
    task_user = task_user_name(node.node_id, "j", "c")
    assert stdout(node, "j", "a").splitlines()[0] == stdout(node, "j", "b").splitlines()[0] == pool_user
    assert stdout(node, "j", "c").splitlines()[0] == task_user != pool_user
    group = str(pwd.getpwnam(pool_user).pw_gid)
    assert stdout(node, "j", "a").splitlines()[1] == group  # supplementary groups dropped: its own group only
    assert user_exists(task_user)

    await removals.wait("j", "c")

    assert not user_exists(task_user)
    assert user_exists(pool_user)


@needs_root
async def test_task_directory_and_output_belong_to_the_task_user(pool, client: BatchClient) -> None:
    [node] = await pool(1)
    await client.create_job(Job(id="j"))
    task = await run(client, "j", TaskSpec(id="t", command_line=sh("echo out; touch made.txt; umask")))
    assert task.execution_info.result == "success"
    uid = pwd.getpwnam(pool_user_name("pool1")).pw_uid
    folder = task_dir(node, "j", "t")
    owners = {path.name: path.stat().st_uid for path in (folder, folder / "wd", folder / "stdout.txt")}
    owners["made.txt"] = (folder / "wd" / "made.txt").stat().st_uid
    assert owners == dict.fromkeys(owners, uid)
    assert (folder / "stdout.txt").read_text().split() == ["out", "0007"]
    assert (folder / "wd" / "made.txt").stat().st_mode & 0o007 == 0  # the umask keeps others out


@needs_root
async def test_release_removes_what_the_preparation_created(pool, client: BatchClient) -> None:
    [node] = await pool(1)
    make = 'mkdir -p "$AZ_BATCH_NODE_SHARED_DIR/prep-j/sub" && echo x > "$AZ_BATCH_NODE_SHARED_DIR/prep-j/sub/f"'
    make += " && echo y > made.txt && chmod 600 made.txt"
    clean = 'rm -r "$AZ_BATCH_NODE_SHARED_DIR/prep-j" "$AZ_BATCH_JOB_PREP_WORKING_DIR/made.txt"'
    job = Job(
        id="j",
        job_preparation_task=JobPreparationTask(command_line=sh(make)),
        job_release_task=JobReleaseTask(command_line=sh(clean)),
    )
    await client.create_job(job)
    task = await run(client, "j", TaskSpec(id="t", command_line="true"))
    assert task.execution_info.result == "success"
    assert (node.root / "shared" / "prep-j" / "sub" / "f").exists()

    await client.terminate_job("j", timeout_s=TIMEOUT_S)

    assert release_info(client, "j", node.node_id).result == "success"
    assert not (node.root / "shared" / "prep-j").exists()
    assert not (task_dir(node, "j", "jobpreparation") / "wd" / "made.txt").exists()


@needs_root
async def test_user_name_runs_as_that_account_and_an_unknown_one_fails(pool, client: BatchClient) -> None:
    [node] = await pool(1)
    await client.create_job(Job(id="j"))
    known = await run(
        client, "j", TaskSpec(id="k", command_line="id -un", user_identity=UserIdentity(user_name="nobody"))
    )
    unknown = await run(
        client, "j", TaskSpec(id="u", command_line="id -un", user_identity=UserIdentity(user_name="no-such-user"))
    )
    assert known.execution_info.result == "success" and stdout(node, "j", "k") == "nobody"
    failure = unknown.execution_info.failure_info
    assert failure is not None and failure.code == "TaskUserNotFound" and "no-such-user" in failure.message
    assert unknown.execution_info.exit_code is None  # never started under another user


async def test_node_state_says_whether_tasks_run_as_task_users(pool, client: BatchClient) -> None:
    [node] = await pool(1)
    state = client.view.nodes[node.node_id]
    is_root = os.geteuid() == 0
    assert (state.is_privileged, state.task_user_mode) == (is_root, "taskUsers" if is_root else "agentUser")
    warned = '"event": "agent.development_mode"' in node.log_file.read_text()
    assert warned != is_root  # an unprivileged agent says at start-up that every task runs as its user


def _groups(pid: int) -> list[int]:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Groups:"):
            return [int(group) for group in line.split()[1:]]
    raise AssertionError(f"no Groups line for {pid}")


@needs_root
async def test_supervised_task_runs_as_the_pool_user_under_a_root_shim_and_outlives_an_agent_kill(
    pool, client: BatchClient
) -> None:
    [node] = await pool(1)
    gate = Gate(node, "g")
    state = node.agent.state_dir
    supervised = state / "supervised"
    probe = f"id -u; id -g; umask; ls {state} > /dev/null 2>&1; echo $?; ls {supervised} > /dev/null 2>&1; echo $?"
    wait = f"echo $$ > {SHARED}/g.pid; read line < {SHARED}/g.gate; exit 5"
    await client.create_job(Job(id="j"))
    await client.add_task("j", TaskSpec(id="t", command_line=sh(f"{probe}; {wait}")))
    pid = await gate.running()

    account = pwd.getpwnam(pool_user_name("pool1"))
    task = psutil.Process(pid)
    shim = task.parent()
    # A fork of the agent's fork server: the server's command line, a name of its own.
    assert shim is not None and "node_agent.runner.forkserver" in shim.cmdline() and shim.name() == "node-agent-shim"
    assert tuple(shim.uids()) == (0, 0, 0), "the shim keeps the agent's identity to write its status"
    assert tuple(task.uids()) == (account.pw_uid,) * 3 and tuple(task.gids()) == (account.pw_gid,) * 3
    assert _groups(pid) == []  # no supplementary group
    folder = supervised / "j" / "t"
    assert folder.stat().st_uid == 0 and folder.stat().st_mode & 0o077 == 0
    assert state.stat().st_mode & 0o777 == 0o700

    await node.kill()
    await node.start()
    assert task.is_running(), "the task runs on while no agent watches it"
    await gate.open()
    [done] = await client.wait_for_tasks("j", ["t"], timeout_s=TIMEOUT_S)

    assert done.execution_info.exit_code == 5
    assert done.execution_info.failure_info is not None
    assert done.execution_info.failure_info.code == "FailureExitCode"
    uid, gid, umask, state_status, supervised_status = stdout(node, "j", "t").split()
    assert (uid, gid, umask) == (str(account.pw_uid), str(account.pw_gid), "0007")
    assert state_status != "0" and supervised_status != "0", "a task must not reach the agent's state directory"
    assert (task_dir(node, "j", "t") / "stdout.txt").stat().st_uid == account.pw_uid
