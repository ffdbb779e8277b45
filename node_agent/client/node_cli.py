"""Client sub-commands for operators: ``nodes`` (list, disable, enable, drain, reboot, reimage), ``drain`` (this
node, from its agent settings) and ``pool start-task set|show``."""

from __future__ import annotations

import os
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from node_agent.client.cli import DEFAULT_BROKER, BrokerOption, PrefixOption, print_json, run_client
from node_agent.client.nodes import DRAIN_TIMEOUT_S
from node_agent.client.pool import BatchClient
from node_agent.wire.specs import StartTask

nodes_app = typer.Typer(
    invoke_without_command=True, help="List the nodes (no sub-command); disable, enable, drain, reboot, reimage one."
)
pool_app = typer.Typer(no_args_is_help=True, help="The pool's document: its start task.")
start_task_app = typer.Typer(no_args_is_help=True, help="Set or show the pool's start task (P/pools/{poolId}).")


class DisableOption(StrEnum):
    requeue = "requeue"
    terminate = "terminate"
    taskcompletion = "taskcompletion"


class RebootOption(StrEnum):
    requeue = "requeue"
    terminate = "terminate"
    taskcompletion = "taskcompletion"
    retaineddata = "retaineddata"


TimeoutOption = Annotated[float, typer.Option("--timeout", help="Seconds to wait for the node to be idle.")]


@nodes_app.callback()
def nodes(ctx: typer.Context, broker: BrokerOption = DEFAULT_BROKER, prefix: PrefixOption = "batch") -> None:
    """List the pool's nodes from their retained states."""
    if ctx.invoked_subcommand is not None:
        return

    async def states(client: BatchClient) -> Any:
        return client.list_nodes()

    table = Table("node", "state", "scheduling", "slots", "running", "start task", "boot id", "last heartbeat")
    for state in run_client(broker, prefix, states):
        info = state.start_task_info
        table.add_row(
            state.node_id,
            state.state,
            state.scheduling_state,
            str(state.task_slots),
            str(state.running_task_slots_count),
            f"{info.state} {info.result or ''}".strip() if info else "",
            state.boot_id[:12],
            state.last_heartbeat.isoformat(),
        )
    Console().print(table)


@nodes_app.command("disable")
def nodes_disable(
    node_id: str,
    option: Annotated[DisableOption, typer.Option(help="What happens to the node's tasks.")] = DisableOption.requeue,
    broker: BrokerOption = DEFAULT_BROKER,
    prefix: PrefixOption = "batch",
) -> None:
    """Disable scheduling: requeue (hand tasks back), terminate (end them) or taskcompletion (let them finish)."""
    print_json(run_client(broker, prefix, lambda c: c.nodes.disable_scheduling(node_id, option.value)))


@nodes_app.command("enable")
def nodes_enable(node_id: str, broker: BrokerOption = DEFAULT_BROKER, prefix: PrefixOption = "batch") -> None:
    """Enable scheduling again."""
    print_json(run_client(broker, prefix, lambda c: c.nodes.enable_scheduling(node_id)))


@nodes_app.command("drain")
def nodes_drain(
    node_id: str,
    timeout: TimeoutOption = DRAIN_TIMEOUT_S,
    broker: BrokerOption = DEFAULT_BROKER,
    prefix: PrefixOption = "batch",
) -> None:
    """Disable scheduling (taskcompletion) and wait until the node holds no task."""
    print_json(run_client(broker, prefix, lambda c: c.nodes.drain(node_id, timeout_s=timeout)))


@nodes_app.command("reboot")
def nodes_reboot(
    node_id: str,
    option: Annotated[RebootOption, typer.Option(help="What happens to the node's tasks.")] = RebootOption.requeue,
    broker: BrokerOption = DEFAULT_BROKER,
    prefix: PrefixOption = "batch",
) -> None:
    """Reboot the node (its agent must allow it: allow_reboot)."""
    print_json(run_client(broker, prefix, lambda c: c.nodes.reboot(node_id, option.value)))


@nodes_app.command("reimage")
def nodes_reimage(
    node_id: str,
    option: Annotated[RebootOption, typer.Option(help="What happens to the node's tasks.")] = RebootOption.requeue,
    broker: BrokerOption = DEFAULT_BROKER,
    prefix: PrefixOption = "batch",
) -> None:
    """Reimage the node: reboot, then its node root and job memory are gone (allow_reboot)."""
    print_json(run_client(broker, prefix, lambda c: c.nodes.reimage(node_id, option.value)))


def drain(
    config: Annotated[Path | None, typer.Option("--config", "-c", help="The agent's TOML settings file.")] = None,
    timeout: TimeoutOption = DRAIN_TIMEOUT_S,
) -> None:
    """Drain the node this agent configuration describes (its broker, prefix and node id): stop taking work and
    wait until idle."""
    from node_agent.config import load_settings
    from node_agent.errors import ConfigError

    try:
        settings = load_settings(config)
    except ConfigError as exc:
        typer.echo(f"node-agent: {exc}", err=True)
        raise typer.Exit(2) from None
    if settings.tls_ca_file is not None:
        os.environ.setdefault("NODE_AGENT_TLS_CA_FILE", str(settings.tls_ca_file))
    node_id = settings.node_id
    print_json(
        run_client(settings.broker_url, settings.topic_prefix, lambda c: c.nodes.drain(node_id, timeout_s=timeout))
    )


@start_task_app.command("set")
def start_task_set(
    pool_id: str,
    command_line: Annotated[str | None, typer.Argument(help="The start task's command line.")] = None,
    json_file: Annotated[Path | None, typer.Option("--json", help="A whole StartTask (JSON) instead.")] = None,
    wait_for_success: Annotated[bool, typer.Option(help="No task before it succeeded.")] = True,
    max_task_retry_count: Annotated[int, typer.Option(min=-1)] = 0,
    clear: Annotated[bool, typer.Option("--clear", help="Remove the pool's start task.")] = False,
    broker: BrokerOption = DEFAULT_BROKER,
    prefix: PrefixOption = "batch",
) -> None:
    """Set the pool's start task: nodes run it when they join the pool and after every reboot."""
    start: StartTask | None = None
    if json_file is not None:
        start = StartTask.model_validate_json(json_file.read_bytes())
    elif command_line is not None:
        start = StartTask(
            command_line=command_line, wait_for_success=wait_for_success, max_task_retry_count=max_task_retry_count
        )
    elif not clear:
        raise typer.BadParameter("give a command line, --json FILE, or --clear")
    pool = run_client(broker, prefix, lambda c: c.nodes.set_start_task(pool_id, start))
    print_json(pool.model_dump(mode="json", by_alias=True, exclude_none=True))


@start_task_app.command("show")
def start_task_show(pool_id: str, broker: BrokerOption = DEFAULT_BROKER, prefix: PrefixOption = "batch") -> None:
    """Show the pool's start task (null when it has none)."""

    async def show(client: BatchClient) -> Any:
        pool = client.nodes.get_pool(pool_id)
        start = pool.start_task if pool is not None else None
        return start.model_dump(mode="json", by_alias=True, exclude_none=True) if start is not None else None

    print_json(run_client(broker, prefix, show))


def register(app: typer.Typer) -> None:
    pool_app.add_typer(start_task_app, name="start-task")
    app.add_typer(nodes_app, name="nodes")
    app.add_typer(pool_app, name="pool")
    app.command("drain")(drain)
