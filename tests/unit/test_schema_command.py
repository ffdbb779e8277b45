"""``node-agent schema`` prints the JSON Schema of the wire contract, for drivers in other languages."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest


@pytest.fixture(scope="module")
def schema() -> dict[str, object]:
    result = subprocess.run(
        [sys.executable, "-m", "node_agent", "schema"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    document: dict[str, object] = json.loads(result.stdout)
    return document


def test_schema_is_json_with_every_payload(schema: dict[str, object]) -> None:
    definitions = schema["$defs"]
    assert isinstance(definitions, dict)
    assert {"Job", "TaskSpec", "Task", "NodeState", "Event", "Reply", "Command"} <= set(definitions)


def test_schema_uses_the_wire_names(schema: dict[str, object]) -> None:
    definitions = schema["$defs"]
    assert isinstance(definitions, dict)
    job = definitions["Job"]["properties"]
    assert {
        "id",
        "poolId",
        "state",
        "commonEnvironmentSettings",
        "jobPreparationTask",
        "jobReleaseTask",
    } <= set(job)
    node_state = definitions["NodeState"]["properties"]
    assert {"nodeId", "runningTaskSlotsCount", "bootId", "lastHeartbeat"} <= set(node_state)


def test_command_schema_is_a_union_discriminated_by_type(schema: dict[str, object]) -> None:
    definitions = schema["$defs"]
    assert isinstance(definitions, dict)
    command = definitions["Command"]
    assert command["discriminator"]["propertyName"] == "type"
    mapping = command["discriminator"]["mapping"]
    assert set(mapping) == {
        "addTask",
        "terminateTask",
        "listFiles",
        "getFile",
        "disableScheduling",
        "enableScheduling",
        "drain",
        "reboot",
        "reimage",
    }


def test_every_reference_resolves_from_the_document_root(schema: dict[str, object]) -> None:
    definitions = schema["$defs"]
    assert isinstance(definitions, dict)
    refs = set(re.findall(r'"\$ref": "([^"]+)"', json.dumps(schema)))
    assert refs
    unresolved = sorted(ref for ref in refs if not ref.startswith("#/$defs/") or ref[8:] not in definitions)
    assert unresolved == []
