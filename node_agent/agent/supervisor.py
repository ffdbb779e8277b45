"""The agent's root: settings in, one TaskGroup that owns everything, signals, and the shutdown sequence."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sqlite3
import ssl
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING

import structlog

from node_agent import __version__
from node_agent.agent.dispatch import Dispatcher
from node_agent.agent.jobs import JobManager, NodeContext
from node_agent.agent.layout import NodeLayout
from node_agent.agent.node_state import NodeStateReporter
from node_agent.agent.processes import ProcessRegistry
from node_agent.agent.publisher import Publisher
from node_agent.agent.reboot import Rebooter, report_completed, settle
from node_agent.agent.recovery import apply_committed, end_vanished_jobs, recover
from node_agent.agent.resources import ResourceStaging
from node_agent.agent.scheduling import Scheduling
from node_agent.agent.starttask import StartTaskRunner, configured_start_task
from node_agent.agent.supervisors import Supervisors
from node_agent.agent.sweeper import DiskPolicy, Sweeper
from node_agent.config import AgentSettings
from node_agent.errors import ConfigError, StoreCorrupt
from node_agent.identity.ownership import unreachable_ancestor
from node_agent.identity.users import TaskUsers, UserMode
from node_agent.ops import health, metrics, sdnotify
from node_agent.ops.figures import measure_node
from node_agent.ops.reload import reload_settings
from node_agent.retention.deadlines import DeadlineBook
from node_agent.retention.pressure import FreeSpaceProbe
from node_agent.retention.removal import is_symlink_safe
from node_agent.staging.http import HttpOptions
from node_agent.staging.stage import Stager, StagingOptions
from node_agent.store.boot import read_boot_id
from node_agent.store.lock import lock_state_dir
from node_agent.store.records import RecordStore
from node_agent.transport.mqtt import Ack, MqttTransport, Outgoing, SessionOptions
from node_agent.transport.outbox import OUTBOX_FILE, OutboxStore
from node_agent.wire.status import NodeStateName, TaskUserMode
from node_agent.wire.topics import Topics

if TYPE_CHECKING:
    from node_agent.ops.metrics_endpoint import MetricsServer

log = structlog.get_logger(__name__)


def install_signal_handlers(stopping: asyncio.Event) -> None:
    """SIGTERM/SIGINT start a graceful stop; a second one exits at once."""
    loop = asyncio.get_running_loop()

    def on_signal(signum: int) -> None:
        if stopping.is_set():
            log.warning("agent.forced_exit", signal=signal.Signals(signum).name)
            os._exit(1)
        log.info("agent.stopping", signal=signal.Signals(signum).name)
        stopping.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)


def _prepare_disk(settings: AgentSettings, layout: NodeLayout) -> int:
    """Check and create the directories; returns the state directory's lock, held until the agent exits."""
    state_dir = settings.resolved_state_dir
    if state_dir.resolve().is_relative_to(settings.root.resolve()):
        raise ConfigError(f"state_dir {state_dir} must be outside the node root {settings.root}: tasks can read it")
    cache_dir = settings.resolved_staging_cache_dir
    if cache_dir.resolve().is_relative_to(settings.root.resolve()):
        raise ConfigError(
            f"staging_cache_dir {cache_dir} must be outside the node root {settings.root}: tasks could change it"
        )
    if not is_symlink_safe():
        raise ConfigError("this platform's shutil.rmtree may follow symbolic links; the agent needs Linux")
    blocked = unreachable_ancestor(settings.root) if os.geteuid() == 0 else None
    if blocked is not None:
        raise ConfigError(
            f"task users cannot reach the node root {settings.root}: {blocked} is not searchable by other users "
            "(give it o+x, e.g. chmod 711, or put the root elsewhere)"
        )
    try:
        os.umask(0o022)  # the directories the agent makes are traversable by task users; their contents are not
        layout.create()
        state_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(state_dir, 0o700)
        cache_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(cache_dir, 0o700)
        return lock_state_dir(state_dir)
    except OSError as exc:
        raise ConfigError(f"cannot create the node directories: {exc}") from exc


async def serve(
    settings: AgentSettings,
    stopping: asyncio.Event | None = None,
    reload: Callable[[], AgentSettings] | None = None,
) -> None:
    """Run the agent until SIGTERM/SIGINT (or ``stopping``); returns after a clean stop.

    ``reload`` reads the configuration again on SIGHUP (``ops/reload.py`` says what is applied)."""
    structlog.contextvars.bind_contextvars(node_id=settings.node_id)  # first: signal handlers copy the context
    stopping = stopping or asyncio.Event()
    install_signal_handlers(stopping)
    layout = NodeLayout(settings.root, settings.node_id, settings.pool_id)
    lock = await asyncio.to_thread(_prepare_disk, settings, layout)
    server = _metrics_server(settings)
    try:
        await _serve(settings, stopping, layout, reload)
    finally:
        with contextlib.suppress(RuntimeError):  # no loop handler was installed (no reload, or start-up failed)
            asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
        if server is not None:
            await asyncio.to_thread(server.close)
        os.close(lock)


def _metrics_server(settings: AgentSettings) -> MetricsServer | None:
    if settings.metrics_port is None:
        return None
    from node_agent.ops.metrics_endpoint import MetricsServer  # prometheus-client only when it is served

    try:
        return MetricsServer(settings.metrics_host, settings.metrics_port, settings.root)
    except OSError as exc:
        raise ConfigError(f"cannot serve metrics on {settings.metrics_host}:{settings.metrics_port}: {exc}") from exc


async def _serve(
    settings: AgentSettings, stopping: asyncio.Event, layout: NodeLayout, reload: Callable[[], AgentSettings] | None
) -> None:
    boot_id = await asyncio.to_thread(read_boot_id, settings.boot_id_file)
    topics = Topics(settings.topic_prefix)
    transport_stop = asyncio.Event()
    transport = _transport(settings, topics)
    publisher = Publisher(transport, topics, settings.node_id, settings.pool_id)
    disk = DiskPolicy(FreeSpaceProbe(settings.root, settings.disk_free_probe_file), settings.disk_free_threshold_bytes)
    users = TaskUsers(settings.node_id, settings.pool_id)
    mode: TaskUserMode = "taskUsers" if users.mode == UserMode.TASK_USERS else "agentUser"
    figures = partial(measure_node, settings.root)
    reporter = NodeStateReporter(
        publisher,
        disk.probe.measure,
        settings.task_slots,
        boot_id,
        broker=lambda: transport.current.netloc if transport.current is not None else None,
        figures=figures,
        task_user_mode=mode,
    )
    # The last will: the broker publishes this retained "offline" state if the agent vanishes.
    transport.options.will = Outgoing(
        topics.node_state(settings.node_id), reporter.build(NodeStateName.OFFLINE).to_json(), retain=True
    )
    configured_start_task(settings.start_task)  # a bad setting stops the agent here (exit 2)
    store = RecordStore(settings.resolved_state_dir)
    completed, pending = await settle(store, layout.root, boot_id)
    if completed is not None:
        await asyncio.to_thread(layout.create)  # a reimage emptied the root
    supervisors = Supervisors(settings.resolved_state_dir, boot_id, layout.root)
    async with Stager(staging_options(settings)) as stager, supervisors, asyncio.TaskGroup() as group:
        manager: JobManager | None = None
        scheduling: Scheduling | None = None
        told = ""  # the STATUS systemd last got: a state change that leaves it as it was sends nothing

        def load_changed() -> None:
            nonlocal told
            if manager is not None:
                reporter.update(manager.running_count)
                if (status := _status(manager, reporter)) != told:
                    told = status if sdnotify.notify(f"STATUS={status}") else ""
            if scheduling is not None:
                scheduling.on_load_change()

        await _open_outbox(transport)
        await apply_committed(store, transport.records_left())  # before anything reads the records
        for key, _ in transport.records_left():
            transport.record(key, None)  # once the record's own file is durable
        deadlines = DeadlineBook(store)
        await deadlines.load()
        processes = ProcessRegistry(store, str(layout.root))
        resources = ResourceStaging(stager, publisher)
        ctx = NodeContext(
            layout, store, publisher, boot_id, group, load_changed, processes, deadlines, supervisors, users, resources
        )
        manager = JobManager(ctx, settings.task_slots, settings.job_wait.total_seconds())
        await recover(manager)
        await supervisors.launcher.start()  # once recovery's orphan scan is done (it would kill the fork server)
        scheduling, rebooter, starter = await _node_lifecycle(settings, manager, reporter, transport, stopping)
        if pending is not None:
            rebooter.resume(pending)  # asked for in this boot and not done: carry on
        else:
            starter.start()
        if completed is not None:
            report_completed(publisher, completed)
        sweeper = Sweeper(manager, deadlines, disk, reporter)
        dispatcher = Dispatcher(
            manager, publisher, topics, scheduling=scheduling, rebooter=rebooter, start_task=starter
        )
        transport.on_message = dispatcher.on_message

        first_connect = True

        async def on_connected() -> None:
            nonlocal first_connect
            reporter.publish()
            if first_connect:  # the retained job documents are on their way: jobs deleted meanwhile have none
                first_connect = False
                group.create_task(end_vanished_jobs(manager, settings.job_wait.total_seconds()), name="vanished")
            metrics.broker_connects.inc()
            if transport_sessions:
                metrics.broker_reconnects.inc()
            transport_sessions.append(None)
            sdnotify.notify("READY=1", f"STATUS={_status(manager, reporter)}")  # subscribed: commands reach us now

        transport_sessions: list[None] = []
        transport.on_connected = on_connected
        group.create_task(transport.run(transport_stop), name="mqtt")
        group.create_task(reporter.heartbeat(settings.heartbeat_interval.total_seconds(), stopping), name="heartbeat")
        group.create_task(sweeper.run(settings.retention_sweep_interval.total_seconds(), stopping), name="retention")

        def snapshot() -> dict[str, object]:
            return {"connected": transport.connected.is_set()}

        _service_loops(settings, stopping, group, snapshot, partial(_status, manager, reporter))
        if reload is not None:
            _on_sighup(settings, reload, group)
        _log_started(settings, boot_id, users)
        await stopping.wait()
        sdnotify.notify("STOPPING=1", "STATUS=stopping: handing back or finishing running tasks")
        told = ""  # the next load change says the count again, as before
        await starter.stop()
        await manager.shutdown(settings.shutdown_grace.total_seconds(), keep_running=settings.tasks_on_stop == "keep")
        await dispatcher.close()
        reporter.publish(NodeStateName.OFFLINE)
        if not await transport.flush(timeout_s=5):
            log.warning("agent.unflushed", reason="broker unreachable; retained state falls back to the last will")
        transport_stop.set()
    log.info("agent.stopped")


async def _open_outbox(transport: MqttTransport) -> None:
    try:
        left = await transport.open_outbox()
    except sqlite3.Error as exc:
        path = transport.durable.path if transport.durable else "?"
        raise StoreCorrupt(f"the outbox {path} is unreadable: {exc}; move it aside to start without it") from exc
    if left:
        log.info("outbox.recovered", messages=left)


async def _node_lifecycle(
    settings: AgentSettings,
    manager: JobManager,
    reporter: NodeStateReporter,
    transport: MqttTransport,
    stopping: asyncio.Event,
) -> tuple[Scheduling, Rebooter, StartTaskRunner]:
    """The scheduling state, reboot/reimage and the start task, each read back from the store."""
    scheduling = Scheduling(manager, reporter)
    await scheduling.load()
    rebooter = Rebooter(
        manager,
        scheduling,
        reporter,
        allowed=settings.allow_reboot,
        command=settings.reboot_command,
        flush=lambda: transport.flush(timeout_s=5),
        stopping=stopping,
    )
    starter = StartTaskRunner(manager, reporter, configured_start_task(settings.start_task))
    await starter.load()
    return scheduling, rebooter, starter


def _on_sighup(settings: AgentSettings, load: Callable[[], AgentSettings], group: asyncio.TaskGroup) -> None:
    in_force = [settings]

    async def reload() -> None:
        in_force[0] = await reload_settings(in_force[0], load)

    asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, lambda: group.create_task(reload(), name="reload"))


def _status(manager: JobManager, reporter: NodeStateReporter) -> str:
    return f"{manager.running_count} tasks running, scheduling {reporter.scheduling}"


def _service_loops(
    settings: AgentSettings,
    stopping: asyncio.Event,
    group: asyncio.TaskGroup,
    snapshot: Callable[[], dict[str, object]],
    status: Callable[[], str],
) -> None:
    """The liveness file (for ``node-agent health``) and, under systemd with WatchdogSec, the watchdog pings."""
    interval_s = min(settings.heartbeat_interval.total_seconds(), 15.0)
    path = settings.resolved_state_dir / health.HEALTH_NAME
    group.create_task(health.beat(path, interval_s, stopping, snapshot), name="health")
    if (watchdog_s := sdnotify.watchdog_interval_s()) is not None:
        group.create_task(sdnotify.keep_alive(watchdog_s, stopping, status), name="watchdog")


def staging_options(settings: AgentSettings) -> StagingOptions:
    return StagingOptions(
        http=HttpOptions(
            connect_timeout_s=settings.staging_connect_timeout.total_seconds(),
            read_timeout_s=settings.staging_read_timeout.total_seconds(),
            retries=settings.staging_retries,
            retry_delay_s=settings.staging_retry_delay.total_seconds(),
        ),
        concurrency=settings.staging_concurrency,
        auto_storage_url=settings.auto_storage_url,
        cache_dir=settings.resolved_staging_cache_dir,
        cache_max_bytes=settings.staging_cache_max_bytes,
    )


def _log_started(settings: AgentSettings, boot_id: str, users: TaskUsers) -> None:
    if users.mode == UserMode.AGENT_USER:
        log.warning(
            "agent.development_mode",
            user=users.agent_user,
            reason="the agent is not root: every task runs as the agent's own user, no task users are created, "
            "and userIdentity requests for admin, a task-scope user or another userName fail",
        )
    log.info(
        "agent.started",
        node_id=settings.node_id,
        pool_id=settings.pool_id,
        version=__version__,
        root=str(settings.root),
        task_slots=settings.task_slots,
        boot_id=boot_id,
        privileged=os.geteuid() == 0,
        task_user_mode=str(users.mode),
    )


def _transport(settings: AgentSettings, topics: Topics) -> MqttTransport:
    options = SessionOptions(
        identifier=f"node-agent/{settings.topic_prefix}/{settings.node_id}",
        persistent=True,
        will=Outgoing(topics.node_state(settings.node_id), b"", retain=True),
        tls_ca_file=settings.tls_ca_file,
        tls_cert_file=settings.tls_cert_file,
        tls_key_file=settings.tls_key_file,
        manual_ack=True,  # PROTOCOL.md: a command is acknowledged to the broker once applied or stored
    )
    brokers = settings.brokers
    if any(broker.tls for broker in brokers):
        try:
            options.tls_context()  # a bad certificate or key stops the agent now, not at every reconnect
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"cannot set up TLS with tls_ca_file/tls_cert_file/tls_key_file: {exc}") from exc
    return MqttTransport(
        brokers=brokers,
        options=options,
        on_message=_not_ready,
        durable=OutboxStore(settings.resolved_state_dir / OUTBOX_FILE),
        subscriptions=(topics.all_jobs, topics.node_commands(settings.node_id), topics.pool(settings.pool_id)),
    )


async def _not_ready(topic: str, payload: bytes, retained: bool, ack: Ack) -> None:
    raise RuntimeError("message handler not set")
