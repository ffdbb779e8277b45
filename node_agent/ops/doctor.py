"""``node-agent doctor``: what stands between this node and a working agent, and how to fix each thing."""

from __future__ import annotations

import asyncio
import os
import shutil
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import aiomqtt

from node_agent.config import AgentSettings, BrokerAddress, load_settings
from node_agent.errors import ConfigError

CONNECT_TIMEOUT_S = 5.0
BAD_LOGIN, NOT_AUTHORISED = "bad user name or password", "not authorised"
REFUSED_LOGIN = {4: BAD_LOGIN, 5: NOT_AUTHORISED, 134: BAD_LOGIN, 135: NOT_AUTHORISED}  # MQTT 3.1.1 and 5 codes


@dataclass(frozen=True, slots=True)
class Finding:
    check: str
    is_ok: bool
    message: str
    fix: str = ""


async def examine(config_file: Path | None) -> list[Finding]:
    """Every check, in order; a configuration that does not load ends the list (nothing else can be checked)."""
    try:
        settings = await asyncio.to_thread(load_settings, config_file)
    except ConfigError as exc:
        where = f"edit {config_file}" if config_file else "fix the NODE_AGENT_* variable"
        return [Finding("config", False, str(exc), f"{where}; docs/operations.md lists every setting")]
    shown = config_file or "defaults and NODE_AGENT_* variables"
    findings = [Finding("config", True, f"{shown}: node {settings.node_id}, pool {settings.pool_id}")]
    for broker in settings.brokers:
        findings.append(await _broker(broker, settings.tls_ca_file))
    findings += await asyncio.to_thread(_node_checks, settings)
    return findings


def _node_checks(settings: AgentSettings) -> list[Finding]:
    return [
        _directory("node root", settings.root),
        _directory("state dir", settings.resolved_state_dir),
        _free_disk(settings),
        _task_users(os.geteuid, shutil.which),
    ]


async def _broker(broker: BrokerAddress, ca_file: Path | None) -> Finding:
    where = f"{'mqtts' if broker.tls else 'mqtt'}://{broker.host}:{broker.port}"
    name = f"broker {where}"
    try:
        tls = ssl.create_default_context(cafile=ca_file) if broker.tls else None
        client = aiomqtt.Client(
            broker.host, broker.port, username=broker.username, password=broker.password, tls_context=tls,
            timeout=CONNECT_TIMEOUT_S, identifier=f"node-agent-doctor-{os.getpid()}",
        )  # fmt: skip
        async with asyncio.timeout(CONNECT_TIMEOUT_S * 2), client:
            pass
    except aiomqtt.MqttCodeError as exc:
        reason = REFUSED_LOGIN.get(exc.rc if isinstance(exc.rc, int) else getattr(exc.rc, "value", -1))
        if reason is not None:
            login = f"as {broker.username!r}" if broker.username else "anonymously"
            fix = "put the right login in broker_url (mqtt://user:password@host:port), or ask the broker's admin"
            return Finding(name, False, f"the broker refused the login {login}: {reason}", fix)
        return Finding(name, False, f"the broker refused the connection: {exc}", "read the broker's log")
    except (aiomqtt.MqttError, OSError, TimeoutError) as exc:
        return Finding(name, False, f"cannot connect: {exc or 'timed out'}", _unreachable_fix(broker, ca_file))
    login = f"as {broker.username!r}" if broker.username else "anonymously"
    return Finding(name, True, f"connected {login}")


def _unreachable_fix(broker: BrokerAddress, ca_file: Path | None) -> str:
    if broker.tls:
        trust = f"the CA in {ca_file}" if ca_file else "the system's CAs (or set tls_ca_file)"
        where = f"{broker.host}:{broker.port}"
        return f"check that the broker listens on {where} and that its certificate is trusted by {trust}"
    return f"check that the broker runs and listens on {broker.host}:{broker.port}, and that no firewall is in the way"


def _directory(name: str, path: Path) -> Finding:
    existing = next((p for p in (path, *path.parents) if p.exists()), Path("/"))
    if not existing.is_dir():
        return Finding(name, False, f"{existing} is not a directory", f"remove {existing} or choose another path")
    if not os.access(existing, os.W_OK | os.X_OK):
        fix = "run the agent as root (the systemd unit does), or point the setting at a directory this user owns"
        return Finding(name, False, f"{existing} is not writable by uid {os.geteuid()}", fix)
    if existing == path:
        return Finding(name, True, f"{path} is writable")
    return Finding(name, True, f"{path} does not exist yet; the agent will create it under {existing}")


def _free_disk(settings: AgentSettings) -> Finding:
    existing = next((p for p in (settings.root, *settings.root.parents) if p.exists()), Path("/"))
    free = shutil.disk_usage(existing).free
    threshold = settings.disk_free_threshold_bytes
    message = f"{free} bytes free on the file system of {existing} (disk_free_threshold_bytes {threshold})"
    if free < threshold:
        fix = "free space there (`node-agent gc --dry-run` shows what the agent would remove) or lower the threshold"
        return Finding("free disk", False, message, fix)
    return Finding("free disk", True, message)


def _task_users(geteuid: Callable[[], int], which: Callable[[str], str | None]) -> Finding:
    """Tasks with a userIdentity run as users the agent creates: it must be root, with useradd at hand."""
    if geteuid() != 0:
        fix = "run the agent as root (the systemd unit and the container image do)"
        return Finding("task users", False, f"running as uid {geteuid()}: cannot create task users", fix)
    missing = [tool for tool in ("useradd", "userdel", "groupadd") if which(tool) is None]
    if missing:
        fix = "install them (Debian: apt-get install passwd) and put /usr/sbin on PATH"
        return Finding("task users", False, f"{', '.join(missing)} not found on PATH", fix)
    return Finding("task users", True, "root, with useradd, userdel and groupadd")
