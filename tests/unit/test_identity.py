"""Task user names and what an unprivileged agent (development mode) honours of a userIdentity."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from node_agent.errors import TaskFailure
from node_agent.identity.names import is_valid_user_name, pool_user_name, task_comment, task_user_name
from node_agent.identity.ownership import prepare_task_dir
from node_agent.identity.users import RunAs, TaskUsers, UserKind, UserMode, UserRequest

LONGEST = "A" * 64


def test_derived_names_are_valid_linux_user_names_for_any_valid_ids() -> None:
    names = [pool_user_name(LONGEST), pool_user_name("p_-1"), task_user_name(LONGEST, LONGEST, LONGEST)]
    assert all(is_valid_user_name(name) and len(name) <= 32 for name in names)
    assert pool_user_name("Pool") != pool_user_name("pool")  # the hash keeps case-only differences apart
    assert task_user_name("n", "j", "t1") != task_user_name("n2", "j", "t1")


def test_comment_of_a_job_is_a_prefix_of_its_tasks_but_not_of_a_longer_job_id() -> None:
    assert task_comment("n", "j", "t").startswith(task_comment("n", "j"))
    assert not task_comment("n", "j2", "t").startswith(task_comment("n", "j"))


@pytest.mark.parametrize(
    "request_", [UserRequest(UserKind.ADMIN), UserRequest(UserKind.TASK), UserRequest(UserKind.NAMED, "someone-else")]
)
async def test_development_mode_refuses_what_it_cannot_honour(request_: UserRequest) -> None:
    users = TaskUsers("n", "p", is_root=False)
    assert users.mode == UserMode.AGENT_USER
    with pytest.raises(TaskFailure) as failure:
        await users.resolve(request_, "j", "t")
    assert failure.value.code == "UserIdentityNotSupported" and "development mode" in failure.value.message


async def test_development_mode_runs_the_default_and_its_own_name_as_the_agent_user() -> None:
    users = TaskUsers("n", "p", is_root=False)
    own = UserRequest(UserKind.NAMED, users.agent_user)
    assert await users.resolve(UserRequest(), "j", "t") == RunAs(users.agent_user, None, None, None)
    assert await users.resolve(own, "j", "t") == RunAs(users.agent_user, None, None, None)
    assert await users.remove_task_users("j") == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a directory to another user needs root")
def test_task_dir_is_given_to_its_user_whether_new_or_left_by_an_earlier_attempt(tmp_path: Path) -> None:
    task_dir = tmp_path / "workitems" / "j" / "job-1" / "t1"
    working_dir = prepare_task_dir(task_dir, 65534, 65534)  # new: the two folders are the whole tree
    assert [(os.lstat(path).st_uid, os.lstat(path).st_mode & 0o777) for path in (task_dir, working_dir)] == [
        (65534, 0o750),
        (65534, 0o750),
    ]
    for path in (task_dir, working_dir):
        os.chown(path, 0, 0)
    (working_dir / "left.txt").write_text("an earlier attempt's file")
    (working_dir / "link").symlink_to(tmp_path)
    prepare_task_dir(task_dir, 65534, 65534)  # existing: the whole tree, links not followed
    owners = {path.name: os.lstat(path).st_uid for path in (task_dir, working_dir, *working_dir.iterdir())}
    assert owners == {"t1": 65534, "wd": 65534, "left.txt": 65534, "link": 65534}
    assert os.lstat(tmp_path).st_uid == 0
