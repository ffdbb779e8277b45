"""The systemd unit and the starting configuration that ``node-agent install-service`` lays down.

Why each setting is what it is: docs/operations.md, "Running under systemd".
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

UNIT_PATH = Path("etc/systemd/system/node-agent.service")
CONFIG_PATH = Path("etc/node-agent/agent.toml")
DEFAULT_EXEC = Path("/usr/local/bin/node-agent")

UNIT = """\
# node-agent as a systemd service. Written by `node-agent install-service`; see docs/operations.md.
[Unit]
Description=node-agent: Azure Batch style compute-node agent over MQTT
After=network-online.target
Wants=network-online.target
# Five failed starts within five minutes and systemd gives up (systemctl reset-failed node-agent to retry).
StartLimitIntervalSec=300
StartLimitBurst=5

[Service]
# READY=1 once subscribed to its commands, STATUS= with the running task count, WATCHDOG=1 every
# WatchdogSec/2 from the event loop: a stuck loop is killed and restarted.
Type=notify
NotifyAccess=main
ExecStart={exec_path} run --config /{config}
# SIGHUP re-reads the configuration: log_level and log_format change at once; other changes are logged
# (agent.reloaded, needs_restart=[...]) and take effect at the next restart.
ExecReload=/bin/kill -HUP $MAINPID
Restart=on-failure
RestartSec=5
# Exit status 2 is a configuration error: restarting cannot help until someone fixes the file.
RestartPreventExitStatus=2
WatchdogSec=60
# The first start waits for the broker (READY comes once subscribed); a broker that stays away fails it.
TimeoutStartSec=300
# SIGTERM goes to the agent alone, never to the task processes (KillMode=process): the agent decides
# what happens to its tasks (ADR 0001), and a restart (an upgrade) must not kill running tasks once the
# agent keeps them across restarts. An agent killed outright leaves them to its next start (ADR 0006).
KillMode=process
# shutdown_grace (10 s by default) for running tasks, then up to 5 s to flush messages to the broker.
TimeoutStopSec=60
# A task killed by the kernel's OOM killer is the task's failure, not a reason to stop the agent.
OOMPolicy=continue
TasksMax=infinity
LimitNOFILE=65536
# /var/lib/node-agent is the node root, /var/lib/node-agent-state the agent's own state (0700).
StateDirectory=node-agent node-agent-state
LogsDirectory=node-agent
Environment=NODE_AGENT_LOG_FORMAT=json

# Hardening that still lets the agent, as root, create task users (useradd writes /etc) and run tasks
# as them (setuid/setgid, which NoNewPrivileges would not stop, but it would be inherited by every task
# and break the setuid programs tasks use, such as sudo for elevated tasks). Everything here is
# inherited by the tasks too, which is why /tmp, /home and namespaces are left alone: PrivateTmp would
# also vanish under tasks that outlive an agent restart.
ProtectSystem=true
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectClock=yes
ProtectHostname=yes
LockPersonality=yes
RestrictRealtime=yes
SystemCallArchitectures=native
CapabilityBoundingSet=~CAP_SYS_MODULE CAP_SYS_BOOT CAP_SYS_TIME CAP_WAKE_ALARM CAP_SYS_RAWIO CAP_SYS_PACCT
UMask=0022

[Install]
WantedBy=multi-user.target
"""

CONFIG = """\
# node-agent configuration (docs/operations.md has every key; a NODE_AGENT_* variable wins over a key here).
# Mode 0600: the broker URL may carry a password. `systemctl reload node-agent` applies log_* changes.
broker_url = "{broker_url}"
# node_id = "node1"        # default: the host name
# pool_id = "default"
root = "/var/lib/node-agent"
state_dir = "/var/lib/node-agent-state"
log_level = "info"
log_format = "json"
# metrics_port = 9464      # Prometheus endpoint on metrics_host (127.0.0.1 unless set)
"""


def render_unit(exec_path: Path = DEFAULT_EXEC) -> str:
    return UNIT.format(exec_path=exec_path, config=CONFIG_PATH)


@dataclass(frozen=True, slots=True)
class Installed:
    unit: Path
    config: Path
    is_config_kept: bool  # an existing configuration is never overwritten (an upgrade keeps it)


def install(destdir: Path, exec_path: Path, broker_url: str) -> Installed:
    """Write the unit (always) and the configuration (only if absent) under ``destdir`` ("/" on a node)."""
    unit = destdir / UNIT_PATH
    unit.parent.mkdir(parents=True, exist_ok=True)
    unit.write_text(render_unit(exec_path))
    unit.chmod(0o644)
    config = destdir / CONFIG_PATH
    config.parent.mkdir(parents=True, exist_ok=True)
    if config.exists():
        return Installed(unit, config, is_config_kept=True)
    fd = os.open(config, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write(CONFIG.format(broker_url=broker_url))
    return Installed(unit, config, is_config_kept=False)
