"""SIGHUP: read the configuration again and apply what can change without a restart (the log settings)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import structlog

from node_agent.config import AgentSettings
from node_agent.errors import ConfigError
from node_agent.log import configure_logging
from node_agent.ops.sdnotify import notify

log = structlog.get_logger(__name__)

RELOADABLE = frozenset(("log_level", "log_format"))


async def reload_settings(current: AgentSettings, load: Callable[[], AgentSettings]) -> AgentSettings:
    """Return the settings now in force: ``current`` with the reloadable keys of the file's new values.

    A file that does not load leaves everything as it was (logged as ``agent.reload_failed``)."""
    notify("RELOADING=1")
    try:
        return await _reload(current, load)
    finally:
        notify("READY=1")  # once the new settings are in force, as systemd expects of a reload


async def _reload(current: AgentSettings, load: Callable[[], AgentSettings]) -> AgentSettings:
    try:
        fresh = await asyncio.to_thread(load)
    except ConfigError as exc:
        log.error("agent.reload_failed", error=str(exc))
        return current
    changed = {key for key in AgentSettings.model_fields if getattr(current, key) != getattr(fresh, key)}
    applied = {key: getattr(fresh, key) for key in changed & RELOADABLE}
    log.info("agent.reloaded", applied=sorted(applied), needs_restart=sorted(changed - RELOADABLE))
    configure_logging(fresh.log_level, fresh.log_format)  # after the line above, which the old level lets out
    return current.model_copy(update=applied)
