"""The agent's root: settings in, one TaskGroup that owns everything, signals, and the shutdown sequence."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3

import structlog

from node_agent import __version__
from node_agent.agent.dispatch import Dispatcher
from node_agent.agent.jobs import JobManager, NodeContext
from node_agent.agent.layout import NodeLayout
from node_agent.agent.node_state import NodeStateReporter
from node_agent.agent.processes import ProcessRegistry
from node_agent.agent.publisher import Publisher
from node_agent.agent.recovery import end_vanished_jobs, recover
from node_agent.agent.supervisors import Supervisors
from node_agent.agent.sweeper import DiskPolicy, Sweeper
from node_agent.config import AgentSettings
from node_agent.errors import ConfigError, StoreCorrupt
from node_agent.retention.deadlines import DeadlineBook
from node_agent.retention.pressure import FreeSpaceProbe
from node_agent.retention.removal import is_symlink_safe
from node_agent.store.boot import read_boot_id
from node_agent.store.lock import lock_state_dir
from node_agent.store.records import RecordStore
from node_agent.transport.mqtt import Ack, MqttTransport, Outgoing, SessionOptions
from node_agent.transport.outbox import OUTBOX_FILE, OutboxStore
from node_agent.wire.status import NodeStateName
from node_agent.wire.topics import Topics

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
    if not is_symlink_safe():
        raise ConfigError("this platform's shutil.rmtree may follow symbolic links; the agent needs Linux")
    try:
        layout.create()
        state_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(state_dir, 0o700)
        return lock_state_dir(state_dir)
    except OSError as exc:
        raise ConfigError(f"cannot create the node directories: {exc}") from exc


async def serve(settings: AgentSettings, stopping: asyncio.Event | None = None) -> None:
    """Run the agent until SIGTERM/SIGINT (or ``stopping``); returns after a clean stop."""
    stopping = stopping or asyncio.Event()
    install_signal_handlers(stopping)
    layout = NodeLayout(settings.root, settings.node_id, settings.pool_id)
    lock = await asyncio.to_thread(_prepare_disk, settings, layout)
    try:
        await _serve(settings, stopping, layout)
    finally:
        os.close(lock)


async def _serve(settings: AgentSettings, stopping: asyncio.Event, layout: NodeLayout) -> None:
    boot_id = await asyncio.to_thread(read_boot_id, settings.boot_id_file)
    topics = Topics(settings.topic_prefix)
    transport_stop = asyncio.Event()
    transport = _transport(settings, topics)
    publisher = Publisher(transport, topics, settings.node_id, settings.pool_id)
    disk = DiskPolicy(FreeSpaceProbe(settings.root, settings.disk_free_probe_file), settings.disk_free_threshold_bytes)
    reporter = NodeStateReporter(publisher, disk.probe.measure, settings.task_slots, boot_id)
    # The last will: the broker publishes this retained "offline" state if the agent vanishes.
    transport.options.will = Outgoing(
        topics.node_state(settings.node_id), reporter.build(NodeStateName.OFFLINE).to_json(), retain=True
    )
    async with asyncio.TaskGroup() as group:
        manager: JobManager | None = None

        def load_changed() -> None:
            if manager is not None:
                reporter.update(manager.running_count, "enabled" if manager.scheduling_enabled else "disabled")

        store = RecordStore(settings.resolved_state_dir)
        await _open_outbox(transport)
        deadlines = DeadlineBook(store)
        await deadlines.load()
        processes = ProcessRegistry(store, str(layout.root))
        supervisors = Supervisors(settings.resolved_state_dir, boot_id)
        ctx = NodeContext(layout, store, publisher, boot_id, group, load_changed, processes, deadlines, supervisors)
        manager = JobManager(ctx, settings.task_slots, settings.job_wait.total_seconds())
        await recover(manager)
        sweeper = Sweeper(manager, deadlines, disk, reporter)
        dispatcher = Dispatcher(manager, publisher, topics, settings.node_id)
        transport.on_message = dispatcher.on_message

        first_connect = True

        async def on_connected() -> None:
            nonlocal first_connect
            reporter.publish()
            if first_connect:  # the retained job documents are on their way: jobs deleted meanwhile have none
                first_connect = False
                group.create_task(end_vanished_jobs(manager, settings.job_wait.total_seconds()), name="vanished")

        transport.on_connected = on_connected
        group.create_task(transport.run(transport_stop), name="mqtt")
        group.create_task(reporter.heartbeat(settings.heartbeat_interval.total_seconds(), stopping), name="heartbeat")
        group.create_task(sweeper.run(settings.retention_sweep_interval.total_seconds(), stopping), name="retention")
        _log_started(settings, boot_id)
        await stopping.wait()
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


def _log_started(settings: AgentSettings, boot_id: str) -> None:
    log.info(
        "agent.started",
        node_id=settings.node_id,
        pool_id=settings.pool_id,
        version=__version__,
        root=str(settings.root),
        task_slots=settings.task_slots,
        boot_id=boot_id,
        privileged=os.geteuid() == 0,
    )


def _transport(settings: AgentSettings, topics: Topics) -> MqttTransport:
    return MqttTransport(
        brokers=settings.brokers,
        options=SessionOptions(
            identifier=f"node-agent/{settings.topic_prefix}/{settings.node_id}",
            persistent=True,
            will=Outgoing(topics.node_state(settings.node_id), b"", retain=True),
            tls_ca_file=settings.tls_ca_file,
            manual_ack=True,  # PROTOCOL.md: a command is acknowledged to the broker once applied or stored
        ),
        on_message=_not_ready,
        durable=OutboxStore(settings.resolved_state_dir / OUTBOX_FILE),
        subscriptions=(topics.all_jobs, topics.node_commands(settings.node_id)),
    )


async def _not_ready(topic: str, payload: bytes, retained: bool, ack: Ack) -> None:
    raise RuntimeError("message handler not set")
