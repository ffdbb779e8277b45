"""Client sub-commands of ``node-agent``: job, task, nodes, files and demo, over BatchClient."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from node_agent.client.pool import BatchClient, CommandError
from node_agent.config import read_password_file
from node_agent.errors import ConfigError
from node_agent.log import configure_logging
from node_agent.wire.specs import Job, JobPreparationTask, JobReleaseTask, TaskSpec

T = TypeVar("T")
err = Console(stderr=True)
job_app = typer.Typer(no_args_is_help=True, help="Create, show, terminate and delete jobs.")
task_app = typer.Typer(no_args_is_help=True, help="Add and list tasks.")
files_app = typer.Typer(no_args_is_help=True, help="Read files on a node (getFile/listFiles).")

BrokerOption = Annotated[str, typer.Option("--broker", envvar="NODE_AGENT_BROKER_URL", help="Broker URL.")]
PrefixOption = Annotated[str, typer.Option("--prefix", envvar="NODE_AGENT_TOPIC_PREFIX", help="Topic prefix.")]
DEFAULT_BROKER = "mqtt://127.0.0.1:1883"


def run_client(broker: str, prefix: str, action: Callable[[BatchClient], Awaitable[T]]) -> T:
    configure_logging("warning", "console")  # logs go to stderr: stdout carries the command's output

    async def main() -> T:
        async with BatchClient(broker, topic_prefix=prefix, command_timeout_s=10, **_security()) as client:
            return await action(client)

    try:
        return asyncio.run(main())
    except CommandError as exc:
        err.print(f"[red]error[/red] {exc.node_id}: {exc.code}: {exc.message}")
        raise typer.Exit(1) from None
    except (KeyError, TimeoutError, ConnectionError, ConfigError) as exc:
        err.print(f"[red]error[/red] {str(exc) or type(exc).__name__}")
        raise typer.Exit(1) from None


def _security() -> dict[str, Any]:
    """The agent's TLS and login settings, read from the same NODE_AGENT_* variables (files, never values)."""
    env = {name: os.environ.get(f"NODE_AGENT_{name.upper()}") or None for name in _SECURITY}
    password_file = env.pop("broker_password_file")
    username = env.pop("broker_username")
    password = read_password_file(Path(password_file)) if password_file and username else None
    return {**env, "username": username, "password": password}


_SECURITY = ("tls_ca_file", "tls_cert_file", "tls_key_file", "broker_username", "broker_password_file")


def print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2) + "\n")


def _dump(model: Any) -> Any:
    return model.model_dump(mode="json", by_alias=True, exclude_none=True)


@job_app.command("create")
def job_create(
    job_id: str,
    prep: Annotated[str | None, typer.Option(help="Job preparation command line.")] = None,
    release: Annotated[str | None, typer.Option(help="Job release command line.")] = None,
    json_file: Annotated[Path | None, typer.Option("--json", help="Whole Job document (JSON) instead.")] = None,
    broker: BrokerOption = DEFAULT_BROKER,
    prefix: PrefixOption = "batch",
) -> None:
    """Create a job (its retained document)."""
    if json_file is not None:
        job = Job.model_validate_json(json_file.read_bytes())
    else:
        job = Job(
            id=job_id,
            job_preparation_task=JobPreparationTask(command_line=prep) if prep else None,
            job_release_task=JobReleaseTask(command_line=release) if release else None,
        )
    print_json(_dump(run_client(broker, prefix, lambda c: c.create_job(job))))


@job_app.command("show")
def job_show(job_id: str, broker: BrokerOption = DEFAULT_BROKER, prefix: PrefixOption = "batch") -> None:
    """Show a job's document."""

    async def show(client: BatchClient) -> Any:
        job = client.get_job(job_id)
        if job is None:
            raise KeyError(f"job {job_id!r} not found")
        return _dump(job)

    print_json(run_client(broker, prefix, show))


@job_app.command("terminate")
def job_terminate(job_id: str, broker: BrokerOption = DEFAULT_BROKER, prefix: PrefixOption = "batch") -> None:
    """Terminate a job: tasks end, release tasks run; returns once it is completed."""
    print_json(_dump(run_client(broker, prefix, lambda c: c.terminate_job(job_id))))


@job_app.command("delete")
def job_delete(job_id: str, broker: BrokerOption = DEFAULT_BROKER, prefix: PrefixOption = "batch") -> None:
    """Delete a job: like terminate, then every node removes its files."""
    run_client(broker, prefix, lambda c: c.delete_job(job_id))


@job_app.command("prep-release-status")
def job_prep_release_status(job_id: str, broker: BrokerOption = DEFAULT_BROKER, prefix: PrefixOption = "batch") -> None:
    """Preparation and release task status on each node that ran the job's preparation."""

    async def status(client: BatchClient) -> Any:
        return [_dump(info) for info in client.prep_release_status(job_id)]

    print_json(run_client(broker, prefix, status))


@task_app.command("add")
def task_add(
    job_id: str,
    task_id: str,
    command_line: str,
    node: Annotated[str | None, typer.Option(help="Node id (default: the least-loaded node).")] = None,
    broker: BrokerOption = DEFAULT_BROKER,
    prefix: PrefixOption = "batch",
) -> None:
    """Add a task to a job."""
    spec = TaskSpec(id=task_id, command_line=command_line)
    print_json(_dump(run_client(broker, prefix, lambda c: c.add_task(job_id, spec, node_id=node))))


@task_app.command("list")
def task_list(job_id: str, broker: BrokerOption = DEFAULT_BROKER, prefix: PrefixOption = "batch") -> None:
    """List a job's tasks and their states."""

    async def tasks(client: BatchClient) -> Any:
        return client.list_tasks(job_id)

    table = Table("task", "state", "node", "exit code", "result")
    for task in run_client(broker, prefix, tasks):
        info = task.execution_info
        node = task.node_info.node_id if task.node_info else ""
        table.add_row(
            task.id,
            task.state,
            node,
            str(info.exit_code if info.exit_code is not None else ""),
            str(info.result or ""),
        )
    Console().print(table)


@files_app.command("get")
def files_get(node_id: str, path: str, broker: BrokerOption = DEFAULT_BROKER, prefix: PrefixOption = "batch") -> None:
    """Print a file of a node (path relative to the node root)."""
    data = run_client(broker, prefix, lambda c: c.get_file(node_id, path))
    sys.stdout.buffer.write(data)


@files_app.command("list")
def files_list(
    node_id: str,
    path: str = "",
    recursive: bool = False,
    broker: BrokerOption = DEFAULT_BROKER,
    prefix: PrefixOption = "batch",
) -> None:
    """List files of a node (path relative to the node root)."""
    print_json(run_client(broker, prefix, lambda c: c.list_files(node_id, path, recursive=recursive)))


def demo(
    broker: Annotated[str | None, typer.Option("--broker", help="Use this broker instead of starting one.")] = None,
    nodes_count: Annotated[int, typer.Option("--nodes", min=1, max=20)] = 2,
    tasks: Annotated[int, typer.Option("--tasks", min=0, max=999)] = 8,
) -> None:
    """Run the JobPrepRelease sample on a local pool (starts a broker and agents, cleans up)."""
    from node_agent.demo import run_demo

    def out(line: str) -> None:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()

    def progress(line: str) -> None:
        err.print(f"[dim]»[/dim] {line}", highlight=False)

    signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM cleans up as Ctrl-C does
    status = asyncio.run(run_demo(out, progress, broker_url=broker, nodes=nodes_count, tasks=tasks))
    raise typer.Exit(status)


def register(app: typer.Typer) -> None:
    from node_agent.client import node_cli  # it builds on this module's helpers

    node_cli.register(app)
    app.add_typer(job_app, name="job")
    app.add_typer(task_app, name="task")
    app.add_typer(files_app, name="files")
    app.command("demo")(demo)
