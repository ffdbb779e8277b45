"""Which boot of the node this is: the kernel's boot id, or a file tests rewrite to simulate a reboot."""

from __future__ import annotations

from pathlib import Path

from node_agent.errors import ConfigError


def read_boot_id(path: Path) -> str:
    try:
        boot_id = path.read_text().strip()
    except OSError as exc:
        raise ConfigError(f"cannot read boot id from {path}: {exc}; set NODE_AGENT_BOOT_ID_FILE") from exc
    if not boot_id:
        raise ConfigError(f"boot id file {path} is empty")
    return boot_id
