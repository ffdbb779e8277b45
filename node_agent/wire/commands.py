"""Commands a client sends to P/nodes/{nodeId}/commands and the replies the agent sends back."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, TypeAdapter

from node_agent.ids import Id
from node_agent.wire.base import Timestamp, WireModel
from node_agent.wire.specs import TaskSpec

GET_FILE_MAX_LENGTH = 512 * 1024
PATH_MAX_LENGTH = 4096  # Linux's PATH_MAX: a longer path names no file
OFFSET_MAX = (1 << 63) - 1  # the largest file offset Linux has


class CommandBase(WireModel):
    request_id: str = Field(min_length=1, max_length=128)
    reply_to: str | None = Field(default=None, pattern=r"^[^#+]+$", max_length=512)


class AddTask(CommandBase):
    type: Literal["addTask"]
    job_id: Id
    task: TaskSpec


class TerminateTask(CommandBase):
    type: Literal["terminateTask"]
    job_id: Id
    task_id: Id


class ListFiles(CommandBase):
    type: Literal["listFiles"]
    path: str = Field(default="", max_length=PATH_MAX_LENGTH)
    recursive: bool = False


class GetFile(CommandBase):
    type: Literal["getFile"]
    path: str = Field(min_length=1, max_length=PATH_MAX_LENGTH)
    offset: int = Field(default=0, ge=0, le=OFFSET_MAX)
    length: int = Field(default=GET_FILE_MAX_LENGTH, ge=0, le=GET_FILE_MAX_LENGTH)


SchedulingOption = Literal["requeue", "terminate", "taskcompletion"]
RebootOption = Literal["requeue", "terminate", "taskcompletion", "retaineddata"]


class DisableScheduling(CommandBase):
    type: Literal["disableScheduling"]
    node_disable_scheduling_option: SchedulingOption = "requeue"  # Azure Batch's default


class EnableScheduling(CommandBase):
    type: Literal["enableScheduling"]


class DrainNode(CommandBase):
    """Stop taking tasks (scheduling disabled, taskcompletion) and reply once none is left on the node."""

    type: Literal["drain"]


class RebootNode(CommandBase):
    type: Literal["reboot"]
    node_reboot_option: RebootOption = "requeue"


class ReimageNode(CommandBase):
    type: Literal["reimage"]
    node_reimage_option: RebootOption = "requeue"


Command = Annotated[
    AddTask
    | TerminateTask
    | ListFiles
    | GetFile
    | DisableScheduling
    | EnableScheduling
    | DrainNode
    | RebootNode
    | ReimageNode,
    Field(discriminator="type"),
]
# cache_strings="keys": pydantic would otherwise keep every task id and requestId it parsed in its string cache
# (up to 16,384 of them, about 2 MB an agent holds for its life); field names are few and still cached.
COMMANDS: TypeAdapter[Command] = TypeAdapter(Command, config=ConfigDict(cache_strings="keys"))


class ErrorInfo(WireModel):
    code: str
    message: str


class Reply(WireModel):
    request_id: str
    ok: bool
    result: Any = None
    error: ErrorInfo | None = None


class FileProperties(WireModel):
    last_modified: Timestamp
    content_length: int
    file_mode: str


class NodeFile(WireModel):
    name: str
    is_directory: bool
    properties: FileProperties
