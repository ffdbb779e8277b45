"""What the agent publishes: task state, per-node preparation/release info, node state, events."""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

from node_agent.ids import Id
from node_agent.wire.base import Timestamp, WireModel
from node_agent.wire.specs import TaskSpec


class TaskState(StrEnum):
    ACTIVE = "active"
    PREPARING = "preparing"
    RUNNING = "running"
    COMPLETED = "completed"


class TaskResult(StrEnum):
    SUCCESS = "success"
    FAILURE = "failure"


class FailureInfo(WireModel):
    category: Literal["usererror", "servererror"]
    code: str
    message: str
    details: list[dict[str, str]] | None = None


class TaskExecutionInfo(WireModel):
    start_time: Timestamp | None = None
    end_time: Timestamp | None = None
    exit_code: int | None = None
    retry_count: int = 0
    last_retry_time: Timestamp | None = None
    requeue_count: int = 0
    result: TaskResult | None = None
    failure_info: FailureInfo | None = None


class NodeInfo(WireModel):
    node_id: Id
    pool_id: Id
    task_root_directory: str | None = None


class Task(TaskSpec):
    """CloudTask as published on P/jobs/{jobId}/tasks/{taskId}."""

    state: TaskState
    state_transition_time: Timestamp
    node_info: NodeInfo | None = None
    execution_info: TaskExecutionInfo = TaskExecutionInfo()


class SubtaskState(StrEnum):
    RUNNING = "running"
    COMPLETED = "completed"


class JobPreparationTaskExecutionInformation(WireModel):
    start_time: Timestamp
    end_time: Timestamp | None = None
    state: SubtaskState
    task_root_directory: str | None = None
    exit_code: int | None = None
    retry_count: int = 0
    last_retry_time: Timestamp | None = None
    result: TaskResult | None = None
    failure_info: FailureInfo | None = None


class JobReleaseTaskExecutionInformation(WireModel):
    start_time: Timestamp
    end_time: Timestamp | None = None
    state: SubtaskState
    task_root_directory: str | None = None
    exit_code: int | None = None
    result: TaskResult | None = None
    failure_info: FailureInfo | None = None


class JobPreparationAndReleaseTaskExecutionInformation(WireModel):
    pool_id: Id
    node_id: Id
    job_preparation_task_execution_info: JobPreparationTaskExecutionInformation | None = None
    job_release_task_execution_info: JobReleaseTaskExecutionInformation | None = None


class NodeStateName(StrEnum):
    STARTING = "starting"
    IDLE = "idle"
    RUNNING = "running"
    UNUSABLE = "unusable"
    OFFLINE = "offline"
    WAITING_FOR_START_TASK = "waitingforstarttask"
    START_TASK_FAILED = "starttaskfailed"
    REBOOTING = "rebooting"
    REIMAGING = "reimaging"


class StartTaskInformation(WireModel):
    """Azure Batch's startTaskInfo of a compute node: the start task's last run in this node's current boot."""

    state: SubtaskState
    start_time: Timestamp
    end_time: Timestamp | None = None
    exit_code: int | None = None
    retry_count: int = 0
    last_retry_time: Timestamp | None = None
    result: TaskResult | None = None
    failure_info: FailureInfo | None = None


TaskUserMode = Literal["taskUsers", "agentUser"]


class NodeState(WireModel):
    node_id: Id
    pool_id: Id
    state: NodeStateName
    scheduling_state: Literal["enabled", "disabled"] = "enabled"
    task_slots: int
    running_task_slots_count: int = 0
    agent_version: str
    boot_id: str
    is_privileged: bool
    task_user_mode: TaskUserMode = "agentUser"  # agentUser: development mode, every task runs as the agent's user
    state_transition_time: Timestamp
    last_heartbeat: Timestamp
    free_disk_bytes: int | None = None
    free_memory_bytes: int | None = None
    total_memory_bytes: int | None = None
    total_disk_bytes: int | None = None  # of the node root's file system
    cpu_percent: float | None = None  # the whole node's CPU use since the previous heartbeat, percent of all CPUs
    is_low_on_disk: bool = False
    start_task_info: StartTaskInformation | None = None


EventType = Literal[
    "taskStateChanged",
    "taskHandedBack",
    "commandRejected",
    "jobPreparationTaskStateChanged",
    "jobReleaseTaskStateChanged",
    "taskDirectoryRemoved",
    "nodeRebooted",
    "nodeReimaged",
]
RemovalReason = Literal["retention", "diskPressure"]


class Event(WireModel):
    """One task state change, a rejected command or a removed task directory, on P/nodes/{nodeId}/events."""

    type: EventType
    time: Timestamp
    node_id: Id
    job_id: Id | None = None
    task_id: Id | None = None
    state: TaskState | None = None
    request_id: str | None = None
    code: str | None = None
    message: str | None = None
    task: Task | None = None
    reason: RemovalReason | None = None
    bytes_freed: int | None = None
