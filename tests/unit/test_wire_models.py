"""The pydantic models of PROTOCOL.md: ids, job rules, ISO 8601 durations, RFC 3339 times, Command union."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone

import pytest
from pydantic import ValidationError

from node_agent.agent.dispatch import _validation_error
from node_agent.ids import ID_RULE, is_valid_id, sanitize_id
from node_agent.wire.base import add_capped
from node_agent.wire.commands import (
    COMMANDS,
    GET_FILE_MAX_LENGTH,
    AddTask,
    DisableScheduling,
    EnableScheduling,
    GetFile,
    ListFiles,
    Reply,
    TerminateTask,
)
from node_agent.wire.specs import (
    EnvironmentSetting,
    Job,
    JobPreparationTask,
    JobReleaseTask,
    JobState,
    ResourceFile,
    TaskConstraints,
    TaskSpec,
    UserIdentity,
)
from node_agent.wire.status import Task, TaskState

# -- ids -----------------------------------------------------------------------------------------------------

GOOD_IDS = ["a", "A-z_0", "x" * 64, "job-2024_01", "-", "_"]
BAD_IDS = ["", "x" * 65, "ab\n", "a/b", "../x", "..", "+", "#", "a b", "a.b", "ünï", "a\x00b", "a\nb"]


@pytest.mark.parametrize("value", GOOD_IDS)
def test_id_pattern_accepts_azure_batch_ids(value: str) -> None:
    assert is_valid_id(value)
    assert TaskSpec(id=value, command_line="x").id == value
    assert Job(id=value).id == value


@pytest.mark.parametrize("value", BAD_IDS)
def test_id_pattern_refuses_anything_that_could_inject_a_topic_level_or_path(value: str) -> None:
    assert not is_valid_id(value)
    with pytest.raises(ValidationError):
        TaskSpec(id=value, command_line="x")
    with pytest.raises(ValidationError):
        Job(id=value)


def test_non_string_is_not_a_valid_id() -> None:
    assert not is_valid_id(5)
    assert not is_valid_id(None)


def test_sanitize_id_turns_a_host_name_into_a_valid_id() -> None:
    assert sanitize_id("node.example.com") == "node-example-com"
    assert sanitize_id("") == "node"
    assert is_valid_id(sanitize_id("x" * 100 + ".local"))


# -- jobs and their preparation and release tasks ------------------------------------------------------------


def test_job_defaults_follow_azure_batch() -> None:
    job = Job.model_validate(
        {"id": "j", "jobPreparationTask": {"commandLine": "p"}, "jobReleaseTask": {"commandLine": "r"}}
    )
    assert job.state == JobState.ACTIVE
    assert job.job_preparation_task is not None and job.job_release_task is not None
    prep, release = job.job_preparation_task, job.job_release_task
    assert (prep.id, prep.wait_for_success, prep.rerun_on_node_reboot_after_success) == (
        "jobpreparation",
        True,
        True,
    )
    assert (release.id, release.max_wall_clock_time) == ("jobrelease", timedelta(minutes=15))


def test_release_task_needs_a_preparation_task() -> None:
    with pytest.raises(ValidationError, match="jobPreparationTask"):
        Job.model_validate({"id": "j", "jobReleaseTask": {"commandLine": "r"}})


def test_preparation_and_release_need_different_ids() -> None:
    with pytest.raises(ValidationError, match="different ids"):
        Job.model_validate(
            {
                "id": "j",
                "jobPreparationTask": {"id": "same", "commandLine": "p"},
                "jobReleaseTask": {"id": "same", "commandLine": "r"},
            }
        )


@pytest.mark.parametrize("limit", ["PT15M", "PT1S", "PT14M59S"])
def test_release_max_wall_clock_time_up_to_15_minutes_is_accepted(limit: str) -> None:
    release = JobReleaseTask.model_validate({"commandLine": "r", "maxWallClockTime": limit})
    assert release.max_wall_clock_time <= timedelta(minutes=15)


@pytest.mark.parametrize("limit", ["PT15M1S", "PT1H", "P1D", "PT0S"])
def test_release_max_wall_clock_time_over_15_minutes_or_zero_is_refused(limit: str) -> None:
    with pytest.raises(ValidationError, match="PT15M"):
        JobReleaseTask.model_validate({"commandLine": "r", "maxWallClockTime": limit})


def test_empty_command_line_is_refused() -> None:
    with pytest.raises(ValidationError):
        TaskSpec(id="t", command_line="")
    with pytest.raises(ValidationError):
        JobPreparationTask(command_line="")


@pytest.mark.parametrize(
    "sources",
    [
        {},
        {"httpUrl": "http://a", "storageContainerUrl": "http://b"},
        {"autoStorageContainerName": "c", "httpUrl": "x"},
    ],
)
def test_resource_file_needs_exactly_one_source(sources: dict[str, str]) -> None:
    with pytest.raises(ValidationError, match="exactly one"):
        ResourceFile.model_validate({**sources, "filePath": "x"})


def test_resource_file_mode_is_octal() -> None:
    assert ResourceFile.model_validate({"httpUrl": "http://a", "fileMode": "0755"}).file_mode == "0755"
    with pytest.raises(ValidationError):
        ResourceFile.model_validate({"httpUrl": "http://a", "fileMode": "0999"})


def test_user_identity_takes_user_name_or_auto_user_not_both() -> None:
    with pytest.raises(ValidationError, match="not both"):
        UserIdentity.model_validate({"userName": "u", "autoUser": {"elevationLevel": "admin"}})
    auto = UserIdentity.model_validate({"autoUser": {}}).auto_user
    assert auto is not None and (auto.scope, auto.elevation_level) == ("pool", "nonadmin")


def test_max_task_retry_count_is_minus_one_or_more() -> None:
    assert TaskConstraints(max_task_retry_count=-1).max_task_retry_count == -1
    with pytest.raises(ValidationError):
        TaskConstraints(max_task_retry_count=-2)


def test_environment_setting_names_are_shell_names() -> None:
    spec = TaskSpec.model_validate({"id": "t", "commandLine": "x", "environmentSettings": [{"name": "A_1"}]})
    assert spec.environment_settings[0].value == ""
    for name in ("1A", "A-B", "", "A B", "A=B"):
        with pytest.raises(ValidationError):
            TaskSpec.model_validate({"id": "t", "commandLine": "x", "environmentSettings": [{"name": name}]})


# -- durations and times on the wire -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (timedelta(minutes=15), "PT15M"),
        (timedelta(seconds=1), "PT1S"),
        (timedelta(seconds=1.5), "PT1.5S"),
        (timedelta(0), "PT0S"),
        (timedelta(hours=2, minutes=3, seconds=4), "PT2H3M4S"),
        (timedelta(days=7), "P7D"),
        (timedelta(days=1, hours=2), "P1DT2H"),
    ],
)
def test_durations_serialise_as_iso_8601_and_read_back(value: timedelta, text: str) -> None:
    constraints = TaskConstraints(max_wall_clock_time=value)
    dumped = constraints.model_dump(mode="json", by_alias=True)
    assert dumped["maxWallClockTime"] == text
    assert TaskConstraints.model_validate(dumped).max_wall_clock_time == value


def test_timestamps_serialise_as_rfc_3339_utc_with_z() -> None:
    local = datetime(2024, 5, 1, 14, 30, 15, 123456, tzinfo=timezone(timedelta(hours=2)))
    task = Task(id="t", command_line="x", state=TaskState.ACTIVE, state_transition_time=local)
    text = json.loads(task.to_json())["stateTransitionTime"]
    assert text == "2024-05-01T12:30:15.123Z"
    assert Task.model_validate_json(task.to_json()).state_transition_time == datetime(
        2024, 5, 1, 12, 30, 15, 123000, tzinfo=UTC
    )


def test_payloads_use_camel_case_and_omit_none() -> None:
    task = Task(id="t", command_line="x", state=TaskState.ACTIVE, state_transition_time=datetime.now(UTC))
    dumped = json.loads(task.to_json())
    assert {"id", "commandLine", "state", "stateTransitionTime", "executionInfo", "constraints"} <= set(dumped)
    assert "nodeInfo" not in dumped and "userIdentity" not in dumped
    assert all("_" not in key for key in dumped)


def test_unknown_fields_are_ignored() -> None:
    spec = TaskSpec.model_validate({"id": "t", "commandLine": "x", "futureField": {"a": 1}, "priority": 5})
    assert spec.id == "t"
    job = Job.model_validate({"id": "j", "onAllTasksComplete": "terminatejob", "metadata": []})
    assert job.id == "j"
    command = COMMANDS.validate_json(b'{"type": "listFiles", "requestId": "r", "newOption": true}')
    assert isinstance(command, ListFiles)


# -- the Command union ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "model"),
    [
        ({"type": "addTask", "jobId": "j", "task": {"id": "t", "commandLine": "x"}}, AddTask),
        ({"type": "terminateTask", "jobId": "j", "taskId": "t"}, TerminateTask),
        ({"type": "listFiles"}, ListFiles),
        ({"type": "getFile", "path": "shared/x"}, GetFile),
        ({"type": "disableScheduling"}, DisableScheduling),
        ({"type": "enableScheduling"}, EnableScheduling),
    ],
)
def test_command_type_selects_the_model(body: dict[str, object], model: type) -> None:
    command = COMMANDS.validate_json(json.dumps({**body, "requestId": "r1"}))
    assert type(command) is model
    assert command.request_id == "r1" and command.reply_to is None


def test_command_defaults() -> None:
    listing = COMMANDS.validate_python({"type": "listFiles", "requestId": "r"})
    assert isinstance(listing, ListFiles) and (listing.path, listing.recursive) == ("", False)
    read = COMMANDS.validate_python({"type": "getFile", "requestId": "r", "path": "p"})
    assert isinstance(read, GetFile) and (read.offset, read.length) == (0, GET_FILE_MAX_LENGTH)


@pytest.mark.parametrize(
    "body",
    [
        {"type": "frobnicate", "requestId": "r"},
        {"requestId": "r"},
        {"type": "listFiles"},  # no requestId
        {"type": "listFiles", "requestId": ""},
        {"type": "listFiles", "requestId": "r", "replyTo": "batch/clients/+/replies"},
        {"type": "listFiles", "requestId": "r", "replyTo": "batch/#"},
        {"type": "getFile", "requestId": "r", "path": "p", "length": GET_FILE_MAX_LENGTH + 1},
        {"type": "getFile", "requestId": "r", "path": "p", "offset": -1},
        {"type": "getFile", "requestId": "r", "path": ""},
    ],
)
def test_invalid_command_is_refused(body: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        COMMANDS.validate_python(body)


def test_validation_error_of_an_id_maps_to_invalid_id_with_the_rule() -> None:
    for body, where in [
        ({"jobId": "a/b", "task": {"id": "t", "commandLine": "x"}}, "addTask.jobId"),
        ({"jobId": "j", "task": {"id": "../x", "commandLine": "x"}}, "addTask.task.id"),
    ]:
        with pytest.raises(ValidationError) as error:
            COMMANDS.validate_python({"type": "addTask", "requestId": "r", **body})
        code, message = _validation_error(error.value)
        assert code == "InvalidId"
        assert message.startswith(where) and ID_RULE in message


def test_validation_error_of_another_field_maps_to_invalid_command_naming_it() -> None:
    with pytest.raises(ValidationError) as error:
        COMMANDS.validate_python({"type": "addTask", "requestId": "r", "jobId": "j", "task": {"id": "t"}})
    code, message = _validation_error(error.value)
    assert code == "InvalidCommand"
    assert "addTask.task.commandLine" in message


def test_reply_round_trips() -> None:
    reply = Reply(request_id="r", ok=False, error={"code": "FileNotFound", "message": "no such file"})
    dumped = json.loads(reply.to_json())
    assert dumped == {
        "requestId": "r",
        "ok": False,
        "error": {"code": "FileNotFound", "message": "no such file"},
    }
    assert Reply.model_validate(dumped) == reply


# Found while widening the hostile-input property test: refused at the edge instead of failing a task later.


@pytest.mark.parametrize("duration", ["-PT1S", "-P1D"])
def test_a_negative_duration_is_refused(duration: str) -> None:
    with pytest.raises(ValidationError, match="must not be negative"):
        TaskConstraints.model_validate({"retentionTime": duration})


def test_a_nul_in_a_command_line_or_environment_value_is_refused() -> None:
    with pytest.raises(ValidationError, match="commandLine"):
        TaskSpec.model_validate({"id": "t", "commandLine": "/bin/echo a\x00b"})
    with pytest.raises(ValidationError, match="value"):
        EnvironmentSetting.model_validate({"name": "A", "value": "a\x00b"})


def test_a_retention_past_year_9999_means_never_instead_of_overflowing() -> None:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    assert add_capped(start, timedelta(days=99_999_999)) == datetime.max.replace(tzinfo=UTC)
    assert add_capped(start, timedelta(days=1)) == datetime(2026, 1, 2, tzinfo=UTC)
