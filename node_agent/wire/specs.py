"""Task definitions as a client sends them: jobs, their preparation and release tasks, tasks."""

from __future__ import annotations

from datetime import timedelta
from enum import StrEnum
from typing import Literal

from pydantic import Field, field_validator, model_validator

from node_agent.ids import Id
from node_agent.wire.base import Duration, Timestamp, WireModel

DEFAULT_RETENTION = timedelta(days=7)
RELEASE_MAX_WALL_CLOCK = timedelta(minutes=15)


NO_NUL = r"^[^\x00]*$"  # a NUL cannot be passed to a process (argv, environment): refused here, not at exec


class EnvironmentSetting(WireModel):
    name: str = Field(min_length=1, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    value: str = Field(default="", pattern=NO_NUL)


class ResourceFile(WireModel):
    http_url: str | None = None
    storage_container_url: str | None = None
    auto_storage_container_name: str | None = None
    blob_prefix: str | None = None
    file_path: str | None = None
    file_mode: str | None = Field(default=None, pattern=r"^0?[0-7]{3}$")

    @model_validator(mode="after")
    def _exactly_one_source(self) -> ResourceFile:
        sources = [self.http_url, self.storage_container_url, self.auto_storage_container_name]
        if sum(s is not None for s in sources) != 1:
            raise ValueError(
                "a resourceFile needs exactly one of httpUrl, storageContainerUrl, autoStorageContainerName"
            )
        return self


class AutoUserSpecification(WireModel):
    scope: Literal["task", "pool"] = "pool"
    elevation_level: Literal["nonadmin", "admin"] = "nonadmin"


class UserIdentity(WireModel):
    # An account name as Linux spells it; checked here so no odd byte reaches a lookup or a log line.
    user_name: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,31}$")
    auto_user: AutoUserSpecification | None = None

    @model_validator(mode="after")
    def _one_of(self) -> UserIdentity:
        if self.user_name is not None and self.auto_user is not None:
            raise ValueError("userIdentity takes userName or autoUser, not both")
        return self


class TaskConstraints(WireModel):
    max_wall_clock_time: Duration | None = None
    retention_time: Duration | None = None
    max_task_retry_count: int = Field(default=0, ge=-1)


class JobPreparationTask(WireModel):
    id: Id = "jobpreparation"
    command_line: str = Field(min_length=1, pattern=NO_NUL)
    resource_files: list[ResourceFile] = []
    environment_settings: list[EnvironmentSetting] = []
    constraints: TaskConstraints = TaskConstraints()
    wait_for_success: bool = True
    user_identity: UserIdentity | None = None
    rerun_on_node_reboot_after_success: bool = True


class JobReleaseTask(WireModel):
    id: Id = "jobrelease"
    command_line: str = Field(min_length=1, pattern=NO_NUL)
    resource_files: list[ResourceFile] = []
    environment_settings: list[EnvironmentSetting] = []
    max_wall_clock_time: Duration = RELEASE_MAX_WALL_CLOCK
    retention_time: Duration | None = None
    user_identity: UserIdentity | None = None

    @field_validator("max_wall_clock_time")
    @classmethod
    def _at_most_15_minutes(cls, value: timedelta) -> timedelta:
        if value > RELEASE_MAX_WALL_CLOCK or value <= timedelta(0):
            raise ValueError("a release task's maxWallClockTime must be more than 0 and at most PT15M")
        return value


class JobState(StrEnum):
    ACTIVE = "active"
    TERMINATING = "terminating"
    COMPLETED = "completed"
    DELETING = "deleting"


class Job(WireModel):
    id: Id
    pool_id: Id | None = None
    state: JobState = JobState.ACTIVE
    state_transition_time: Timestamp | None = None
    terminate_reason: str | None = None
    common_environment_settings: list[EnvironmentSetting] = []
    job_preparation_task: JobPreparationTask | None = None
    job_release_task: JobReleaseTask | None = None

    @model_validator(mode="after")
    def _release_needs_preparation(self) -> Job:
        if self.job_release_task is not None and self.job_preparation_task is None:
            raise ValueError("a job with a jobReleaseTask must also have a jobPreparationTask")
        prep, release = self.job_preparation_task, self.job_release_task
        if prep is not None and release is not None and prep.id == release.id:
            raise ValueError("jobPreparationTask and jobReleaseTask must have different ids")
        return self


class TaskSpec(WireModel):
    """The add parameter of a task (CloudTask as a client submits it)."""

    id: Id
    command_line: str = Field(min_length=1, pattern=NO_NUL)
    resource_files: list[ResourceFile] = []
    environment_settings: list[EnvironmentSetting] = []
    constraints: TaskConstraints = TaskConstraints()
    user_identity: UserIdentity | None = None


class StartTask(WireModel):
    """The pool's start task (Azure Batch StartTask): run on each node when it joins and after every reboot."""

    command_line: str = Field(min_length=1)
    resource_files: list[ResourceFile] = []
    environment_settings: list[EnvironmentSetting] = []
    user_identity: UserIdentity | None = None
    max_task_retry_count: int = Field(default=0, ge=-1)
    wait_for_success: bool = True


class Pool(WireModel):
    """The pool's document on P/pools/{poolId} (retained): what every node of the pool shares."""

    id: Id
    start_task: StartTask | None = None
