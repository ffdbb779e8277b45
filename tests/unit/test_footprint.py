"""The agent daemon imports only what it uses: heavy libraries stay out of a `node-agent run` process.

Each of these is loaded on demand instead: rich by the client's commands (structlog is imported without it), aiohttp
and azure by the first resource file to stage, prometheus-client by the metrics endpoint, uvloop when chosen.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

KEPT_OUT = ("rich", "aiohttp", "azure", "prometheus_client", "uvloop", "node_agent.client", "node_agent.testing")

# What `node-agent run` does up to reading its settings (here a missing file: exit 2), then both log formats.
AGENT_RUN = """
import sys
from node_agent.cli import main

sys.argv = ["node-agent", "run", "--config", sys.argv[1]]
try:
    main()
except SystemExit as exc:
    print("exit", exc.code, file=sys.stderr)
from node_agent.agent.supervisor import serve
from node_agent.log import configure_logging

configure_logging("info", "json")
configure_logging("info", "console")
print(" ".join(sorted(sys.modules)))
import rich.console  # only hidden while structlog loaded
"""


def loaded_modules(code: str, *args: str) -> tuple[set[str], str]:
    done = subprocess.run(  # noqa: S603 (our own interpreter and code)
        [sys.executable, "-c", code, *args], capture_output=True, text=True, check=True, timeout=60
    )
    return set(done.stdout.split()), done.stderr


def heavy(modules: set[str]) -> set[str]:
    return {name for name in modules if any(name == top or name.startswith(top + ".") for top in KEPT_OUT)}


def test_agent_run_leaves_client_rich_and_staging_libraries_unloaded(tmp_path: Path) -> None:
    modules, stderr = loaded_modules(AGENT_RUN, str(tmp_path / "missing.toml"))
    assert "exit 2" in stderr, stderr  # it got as far as reading its settings
    assert "node_agent.agent.supervisor" in modules and "structlog" in modules
    assert not heavy(modules)
