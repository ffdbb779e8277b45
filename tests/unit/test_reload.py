"""SIGHUP's reload: the log settings change at once, other changes wait for a restart, a bad file changes nothing."""

from __future__ import annotations

import structlog
from structlog.testing import capture_logs

from node_agent.config import load_settings
from node_agent.errors import ConfigError
from node_agent.ops.reload import reload_settings


async def test_log_settings_apply_and_other_changes_are_reported(tmp_path) -> None:  # type: ignore[no-untyped-def]
    current = load_settings(None, root=str(tmp_path / "root"), log_level="info", task_slots=2)

    def load():  # type: ignore[no-untyped-def]
        return load_settings(None, root=str(tmp_path / "root"), log_level="debug", task_slots=4)

    with capture_logs() as logs:
        in_force = await reload_settings(current, load)
    assert (in_force.log_level, in_force.task_slots) == ("debug", 2)
    [event] = [log for log in logs if log["event"] == "agent.reloaded"]
    assert event["applied"] == ["log_level"] and event["needs_restart"] == ["task_slots"]
    structlog.reset_defaults()


async def test_a_file_that_does_not_load_changes_nothing(tmp_path) -> None:  # type: ignore[no-untyped-def]
    current = load_settings(None, root=str(tmp_path / "root"))

    def load():  # type: ignore[no-untyped-def]
        raise ConfigError("invalid setting task_slots (NODE_AGENT_TASK_SLOTS): bad")

    with capture_logs() as logs:
        assert await reload_settings(current, load) is current
    assert [log["event"] for log in logs] == ["agent.reload_failed"]
