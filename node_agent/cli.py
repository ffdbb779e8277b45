"""The ``node-agent`` command line (typer): the only module that reads argv or prints to a terminal."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from node_agent import eventloop
from node_agent.config import load_settings
from node_agent.errors import ConfigError, StoreCorrupt
from node_agent.log import configure_logging

if TYPE_CHECKING:
    from node_agent.agent.gc import Collection

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Azure Batch style compute-node agent over MQTT.")

ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="TOML settings file; NODE_AGENT_* variables win over it."),
]


@app.command()
def run(config: ConfigOption = None) -> None:
    """Run the agent until SIGTERM/SIGINT."""
    from node_agent.agent.supervisor import serve

    try:
        settings = load_settings(config)
        eventloop.use(settings.event_loop)
        configure_logging(settings.log_level, settings.log_format)
        asyncio.run(serve(settings, reload=lambda: load_settings(config)))
    except* ConfigError as group:
        typer.echo(f"node-agent: {group.exceptions[0]}", err=True)
        raise typer.Exit(2) from None
    except* StoreCorrupt as group:
        typer.echo(f"node-agent: {group.exceptions[0]}", err=True)
        raise typer.Exit(3) from None


@app.command()
def gc(
    config: ConfigOption = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Show what would be removed and why; change nothing.")
    ] = False,
) -> None:
    """Remove task directories past their retentionTime, and under disk pressure the oldest completed ones."""
    from node_agent.agent.gc import collect
    from node_agent.store.lock import StateLocked, lock_state_dir
    from node_agent.wire.base import utcnow

    try:
        settings = load_settings(config)
        configure_logging("warning", "console")
        lock = None if dry_run else lock_state_dir(settings.resolved_state_dir)
    except StateLocked as exc:
        typer.echo(f"node-agent: {exc}: the running agent removes what is due itself; use --dry-run", err=True)
        raise typer.Exit(1) from None
    except (ConfigError, OSError) as exc:
        typer.echo(f"node-agent: {exc}", err=True)
        raise typer.Exit(2) from None
    try:
        result = asyncio.run(collect(settings, utcnow(), dry_run=dry_run))
    except StoreCorrupt as exc:
        typer.echo(f"node-agent: {exc}", err=True)
        raise typer.Exit(3) from None
    finally:
        if lock is not None:
            os.close(lock)
    _print_collection(result)


def _print_collection(result: Collection) -> None:
    threshold = result.threshold_bytes or "0 (disk-pressure cleanup off)"
    free = "unknown" if result.free_bytes is None else result.free_bytes
    after = f" ({result.free_after_bytes} after the removals)" if result.free_after_bytes is not None else ""
    typer.echo(f"free disk bytes: {free}{after}; disk_free_threshold_bytes: {threshold}")
    typer.echo("would remove (dry run, nothing changed):" if result.dry_run else "removed:")
    for item in result.items:
        deadline = item.deadline
        why = (
            f"retention deadline {deadline.deadline.isoformat()} passed"
            if item.reason == "retention"
            else f"oldest completed, job {'ended' if item.is_job_ended else 'active'}"
        )
        completed = deadline.completed_at.isoformat()
        line = f"  {item.reason:<12} {deadline.directory}  {item.size_bytes} bytes  completed {completed}; {why}"
        typer.echo(line + (f"; left behind: {item.error}" if item.error else ""))
    if not result.items:
        typer.echo("  nothing")
    if result.is_low:
        typer.echo("still below the threshold: nothing else may go (running and waiting tasks, the preparation of")
        typer.echo("active jobs and the shared directory are kept)")


@app.command()
def schema() -> None:
    """Print the JSON Schema of every payload of the wire contract."""
    from node_agent.wire.schema import contract_schema

    json.dump(contract_schema(), sys.stdout, indent=2)
    sys.stdout.write("\n")


def main() -> None:
    # The daemon (`run`) skips the client's and the operator's commands: they import rich and the client library,
    # memory the agent would hold for its whole life (tests/unit/test_footprint.py).
    if sys.argv[1:2] != ["run"]:
        from node_agent.client.cli import register
        from node_agent.ops.cli import register as register_ops

        register(app)
        register_ops(app)
    app()
