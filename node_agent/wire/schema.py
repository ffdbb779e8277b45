"""JSON Schema export of the wire contract, so drivers in other languages can validate payloads."""

from __future__ import annotations

from typing import Any

from pydantic import TypeAdapter
from pydantic.json_schema import models_json_schema

from node_agent.wire.commands import COMMANDS, Reply
from node_agent.wire.specs import Job, Pool, TaskSpec
from node_agent.wire.status import Event, JobPreparationAndReleaseTaskExecutionInformation, NodeState, Task


def contract_schema() -> dict[str, Any]:
    _, models = models_json_schema(
        [
            (model, "validation")
            for model in (
                Job,
                Pool,
                TaskSpec,
                Task,
                NodeState,
                Event,
                Reply,
                JobPreparationAndReleaseTaskExecutionInformation,
            )
        ],
        by_alias=True,
        title="node-agent wire contract v1",
    )
    command: TypeAdapter[Any] = COMMANDS
    union = command.json_schema(by_alias=True)
    models["$defs"].update(union.pop("$defs", {}))  # its "#/$defs/AddTask" refs resolve from the root
    models["$defs"]["Command"] = union
    return models
