"""Node lifecycle pieces without a broker: the commands' options, the start task setting, admission."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from node_agent.agent.admission import Admission
from node_agent.agent.starttask import configured_start_task
from node_agent.config import load_settings
from node_agent.errors import ConfigError, InputError
from node_agent.wire.commands import COMMANDS, DisableScheduling, DrainNode, RebootNode, ReimageNode
from node_agent.wire.specs import Pool


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No NODE_AGENT_* variable of the developer's shell may leak into these tests."""
    for name in list(os.environ):
        if name.startswith("NODE_AGENT_"):
            monkeypatch.delenv(name)


@pytest.mark.parametrize(
    ("body", "model", "option"),
    [
        ({"type": "disableScheduling"}, DisableScheduling, "requeue"),
        ({"type": "disableScheduling", "nodeDisableSchedulingOption": "terminate"}, DisableScheduling, "terminate"),
        ({"type": "reboot"}, RebootNode, "requeue"),
        ({"type": "reboot", "nodeRebootOption": "retaineddata"}, RebootNode, "retaineddata"),
        ({"type": "reimage", "nodeReimageOption": "taskcompletion"}, ReimageNode, "taskcompletion"),
        ({"type": "drain"}, DrainNode, None),
    ],
)
def test_node_commands_and_their_azure_defaults(body: dict[str, str], model: type, option: str | None) -> None:
    command = COMMANDS.validate_json(json.dumps({**body, "requestId": "r"}))
    assert type(command) is model
    values = command.model_dump()
    assert option is None or option in values.values()


@pytest.mark.parametrize(
    "body",
    [
        {"type": "disableScheduling", "nodeDisableSchedulingOption": "retaineddata"},  # a reboot option only
        {"type": "reboot", "nodeRebootOption": "now"},
        {"type": "reimage", "nodeReimageOption": ""},
    ],
)
def test_unknown_options_are_refused(body: dict[str, str]) -> None:
    with pytest.raises(ValidationError):
        COMMANDS.validate_json(json.dumps({**body, "requestId": "r"}))


def test_pool_document_and_its_start_task_defaults() -> None:
    pool = Pool.model_validate({"id": "p1", "startTask": {"commandLine": "setup.sh"}, "vmSize": "x"})
    assert pool.start_task is not None
    assert (pool.start_task.wait_for_success, pool.start_task.max_task_retry_count) == (True, 0)
    with pytest.raises(ValidationError):
        Pool.model_validate({"id": "p/1"})


def test_start_task_setting_from_the_environment_as_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NODE_AGENT_START_TASK", '{"commandLine": "setup.sh", "waitForSuccess": false}')
    start = configured_start_task(load_settings().start_task)
    assert start is not None and (start.command_line, start.wait_for_success) == ("setup.sh", False)


def test_start_task_setting_from_a_toml_table(tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    config.write_text('[start_task]\ncommandLine = "setup.sh"\nmaxTaskRetryCount = 2\n')
    start = configured_start_task(load_settings(config).start_task)
    assert start is not None and start.max_task_retry_count == 2


def test_invalid_start_task_setting_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="start_task.*commandLine"):
        configured_start_task({"waitForSuccess": True})


@pytest.mark.parametrize("command", ["", "   ", "reboot 'now"])
def test_reboot_command_must_split_into_words(command: str) -> None:
    with pytest.raises(ConfigError, match="reboot_command"):
        load_settings(reboot_command=command)


def test_reboot_is_off_by_default() -> None:
    settings = load_settings()
    assert (settings.allow_reboot, settings.reboot_command) == (False, "systemctl reboot")


def test_admission_reports_the_first_reason_and_lifts_each() -> None:
    admission = Admission()
    admission.check()
    admission.block("scheduling", "NodeSchedulingDisabled", "disabled")
    admission.block("reboot", "NodeRebooting", "rebooting")
    with pytest.raises(InputError) as refused:
        admission.check()
    assert refused.value.code == "NodeSchedulingDisabled"
    admission.lift("scheduling")
    with pytest.raises(InputError) as refused:
        admission.check()
    assert refused.value.code == "NodeRebooting"
    admission.lift("reboot")
    admission.check()
