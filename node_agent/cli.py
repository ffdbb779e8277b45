"""The ``node-agent`` command line (typer): the only module that reads argv or prints to a terminal."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from node_agent.config import load_settings
from node_agent.errors import ConfigError, StoreCorrupt
from node_agent.log import configure_logging

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
        configure_logging(settings.log_level, settings.log_format)
        asyncio.run(serve(settings))
    except* ConfigError as group:
        typer.echo(f"node-agent: {group.exceptions[0]}", err=True)
        raise typer.Exit(2) from None
    except* StoreCorrupt as group:
        typer.echo(f"node-agent: {group.exceptions[0]}", err=True)
        raise typer.Exit(3) from None


@app.command()
def schema() -> None:
    """Print the JSON Schema of every payload of the wire contract."""
    from node_agent.wire.schema import contract_schema

    json.dump(contract_schema(), sys.stdout, indent=2)
    sys.stdout.write("\n")


def main() -> None:
    from node_agent.client.cli import register

    register(app)
    app()
