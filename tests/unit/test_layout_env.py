"""The node layout of PROTOCOL.md ("Files on a node") and the environment a task gets (guarantee 4)."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from node_agent.agent.layout import NodeLayout
from node_agent.runner.environment import task_environment


@pytest.fixture
def layout(tmp_path: Path) -> NodeLayout:
    return NodeLayout(tmp_path / "root", "node1", "pool1")


def test_directories_follow_the_protocol(layout: NodeLayout) -> None:
    root = layout.root
    assert layout.shared == root / "shared"
    assert layout.startup == root / "startup"
    assert layout.task_dir("job", "task") == root / "workitems" / "job" / "job-1" / "task"


def test_create_makes_the_fixed_directories_and_shared_is_sticky_and_world_writable(
    layout: NodeLayout,
) -> None:
    layout.create()
    layout.create()  # idempotent
    for folder in (layout.root, layout.shared, layout.startup, layout.workitems):
        assert folder.is_dir()
    assert stat.S_IMODE(layout.shared.stat().st_mode) == 0o1777


def test_batch_variables_of_a_task(layout: NodeLayout) -> None:
    task_dir = layout.root / "workitems" / "job" / "job-1" / "task"
    assert layout.batch_variables("job", "task", None) == {
        "AZ_BATCH_NODE_ID": "node1",
        "AZ_BATCH_POOL_ID": "pool1",
        "AZ_BATCH_NODE_ROOT_DIR": str(layout.root),
        "AZ_BATCH_NODE_SHARED_DIR": str(layout.root / "shared"),
        "AZ_BATCH_NODE_STARTUP_DIR": str(layout.root / "startup"),
        "AZ_BATCH_NODE_IS_DEDICATED": "true",
        "AZ_BATCH_JOB_ID": "job",
        "AZ_BATCH_TASK_ID": "task",
        "AZ_BATCH_TASK_DIR": str(task_dir),
        "AZ_BATCH_TASK_WORKING_DIR": str(task_dir / "wd"),
    }


def test_batch_variables_name_the_preparation_directories_when_the_job_has_one(layout: NodeLayout) -> None:
    variables = layout.batch_variables("job", "task", "prep")
    prep_dir = layout.root / "workitems" / "job" / "job-1" / "prep"
    assert variables["AZ_BATCH_JOB_PREP_DIR"] == str(prep_dir)
    assert variables["AZ_BATCH_JOB_PREP_WORKING_DIR"] == str(prep_dir / "wd")


def test_task_environment_layers_batch_variables_then_job_then_task_settings(
    layout: NodeLayout, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", "/opt/bin:/usr/bin")
    env = task_environment(
        layout.batch_variables("job", "task", None),
        [("SHARED", "job"), ("JOB_ONLY", "1")],
        [("SHARED", "task"), ("TASK_ONLY", "2")],
    )
    assert env["PATH"] == "/opt/bin:/usr/bin"
    assert env["AZ_BATCH_TASK_ID"] == "task"
    assert (env["SHARED"], env["JOB_ONLY"], env["TASK_ONLY"]) == ("task", "1", "2")


def test_task_environment_inherits_nothing_but_the_basic_variables(
    layout: NodeLayout, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NODE_AGENT_BROKER_URL", "mqtt://user:secret@broker")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    monkeypatch.setenv("LANG", "C.UTF-8")
    env = task_environment(layout.batch_variables("job", "task", None))
    assert not [name for name in env if name.startswith("NODE_AGENT_")]
    assert "AWS_SECRET_ACCESS_KEY" not in env
    assert env["LANG"] == "C.UTF-8"
    assert set(env) - {name for name in env if name.startswith("AZ_BATCH_")} <= {
        "PATH",
        "LANG",
        "LC_ALL",
        "TZ",
        "HOME",
        "USER",
        "LOGNAME",
        "SHELL",
        "TMPDIR",
    }


def test_task_environment_has_a_default_path(layout: NodeLayout, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PATH", raising=False)
    env = task_environment(layout.batch_variables("job", "task", None))
    assert "/usr/bin" in env["PATH"].split(":") and "/bin" in env["PATH"].split(":")


def test_task_settings_can_set_path(layout: NodeLayout) -> None:
    env = task_environment(layout.batch_variables("job", "task", None), [], [("PATH", "/custom")])
    assert env["PATH"] == "/custom"
