"""The operator's commands: ``install-service``, ``doctor`` and ``health`` (registered on the main typer app)."""

from __future__ import annotations

import asyncio
import shutil
import sys
from pathlib import Path
from typing import Annotated

import typer

from node_agent.config import load_settings
from node_agent.errors import ConfigError

ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="TOML settings file; NODE_AGENT_* variables win over it."),
]


def install_service(
    root: Annotated[Path, typer.Option("--root", help="Install under this directory instead of / (packaging).")] = Path(
        "/"
    ),
    exec_path: Annotated[
        Path | None, typer.Option("--exec", help="The node-agent executable the unit runs (default: this one).")
    ] = None,
    broker: Annotated[
        str, typer.Option("--broker", help="broker_url written into a new configuration file.")
    ] = "mqtt://127.0.0.1:1883",
) -> None:
    """Lay down the systemd unit and, unless one exists, /etc/node-agent/agent.toml."""
    from node_agent.ops.service import install

    executable = exec_path or _this_executable()
    installed = install(root, executable.absolute(), broker)
    typer.echo(f"wrote {installed.unit} (ExecStart={executable.absolute()} run)")
    verb = "kept the existing" if installed.is_config_kept else "wrote"
    typer.echo(f"{verb} {installed.config}")
    if root == Path("/"):
        typer.echo("next: edit the configuration, then systemctl daemon-reload && systemctl enable --now node-agent")


def _this_executable() -> Path:
    found = shutil.which("node-agent")
    if found:
        return Path(found)
    candidate = Path(sys.argv[0])
    return candidate if candidate.name == "node-agent" else Path(sys.executable).parent / "node-agent"


def doctor(config: ConfigOption = None) -> None:
    """Check configuration, broker (reachability and login), directories, free disk and task users."""
    from node_agent.ops.doctor import examine

    findings = asyncio.run(examine(config))
    for finding in findings:
        typer.echo(f"{'ok  ' if finding.is_ok else 'FAIL'} {finding.check}: {finding.message}")
        if finding.fix:
            typer.echo(f"     fix: {finding.fix}")
    problems = sum(not finding.is_ok for finding in findings)
    if problems:
        typer.echo(f"{problems} problem(s) found")
        raise typer.Exit(1)
    typer.echo("no problems found")


def health(config: ConfigOption = None) -> None:
    """Exit 0 when the agent on this node is alive and connected (for a container's HEALTHCHECK)."""
    from node_agent.ops.health import HEALTH_NAME, check_health

    try:
        settings = load_settings(config)
    except ConfigError as exc:
        typer.echo(f"node-agent: {exc}", err=True)
        raise typer.Exit(2) from None
    problem = check_health(settings.resolved_state_dir / HEALTH_NAME)
    if problem is not None:
        typer.echo(f"unhealthy: {problem}", err=True)
        raise typer.Exit(1)
    typer.echo("healthy")


def sample(
    nodes: Annotated[int, typer.Option("--nodes", help="Wait for this many idle nodes, then run on them.")] = 1,
    timeout_s: Annotated[float, typer.Option("--timeout", help="Seconds to wait for the nodes.")] = 120,
) -> None:
    """Run the JobPrepRelease sample on the nodes of a running pool (compose's one-shot `sample` service)."""
    from node_agent.ops.pool_sample import run_on_pool

    try:
        codes = asyncio.run(run_on_pool(nodes, timeout_s, typer.echo))
    except TimeoutError:
        typer.echo(f"node-agent: fewer than {nodes} idle nodes after {timeout_s:g} s", err=True)
        raise typer.Exit(1) from None
    if any(code != (0, 0) for code in codes.values()):
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command("sample")(sample)
    app.command("install-service")(install_service)
    app.command("doctor")(doctor)
    app.command("health")(health)
