"""The container image is configured by NODE_AGENT_* variables: those the Dockerfile and compose.yaml set
are settings the agent knows and accepts, and they are what the agent in the container runs with."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import yaml

from node_agent.config import AgentSettings, load_settings

REPO = Path(__file__).resolve().parents[2]


def dockerfile_env() -> dict[str, str]:
    """The ENV of the final stage (continuation lines joined)."""
    text = (REPO / "Dockerfile").read_text().replace("\\\n", " ")
    final = text.rsplit("\nFROM ", 1)[1]
    env: dict[str, str] = {}
    for line in final.splitlines():
        if line.startswith("ENV "):
            env.update(re.findall(r"(\w+)=(\S+)", line))
    return env


def settings_from(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> AgentSettings:
    for name in [name for name in os.environ if name.startswith("NODE_AGENT_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        if name.startswith("NODE_AGENT_"):
            monkeypatch.setenv(name, value)
    return load_settings()


def test_every_variable_the_image_and_compose_set_is_a_setting() -> None:
    compose = yaml.safe_load((REPO / "compose.yaml").read_text())
    names = set(dockerfile_env())
    for service in compose["services"].values():
        names |= set(service.get("environment", {}))
    known = {f"NODE_AGENT_{field.upper()}" for field in AgentSettings.model_fields}
    assert {name for name in names if name.startswith("NODE_AGENT_")} <= known


def test_image_defaults_give_an_agent_configured_for_the_container(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = settings_from(dockerfile_env(), monkeypatch)
    assert settings.root == Path("/var/lib/node-agent")
    assert settings.resolved_state_dir == Path("/var/lib/node-agent-state")
    assert settings.log_format == "json"
    assert settings.brokers[0].host == "mosquitto"


def test_compose_agent_environment_wins_over_the_image(monkeypatch: pytest.MonkeyPatch) -> None:
    compose = yaml.safe_load((REPO / "compose.yaml").read_text())
    env = {**dockerfile_env(), **compose["services"]["agent"]["environment"]}
    settings = settings_from(env, monkeypatch)
    assert (settings.pool_id, settings.task_slots) == ("compose", 2)
    assert settings.brokers[0].port == 1883


def test_entrypoint_runs_the_agent_and_healthcheck_asks_it() -> None:
    text = (REPO / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["node-agent"]' in text and 'CMD ["run"]' in text
    assert 'CMD ["node-agent", "health"]' in text
    assert text.startswith("#") and "ARG BASE=python:3.12-slim" in text
