"""Task user names and what an unprivileged agent (development mode) honours of a userIdentity."""

from __future__ import annotations

import pytest

from node_agent.errors import TaskFailure
from node_agent.identity.names import is_valid_user_name, pool_user_name, task_comment, task_user_name
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
