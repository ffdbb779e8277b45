"""One MQTT session over aiomqtt: reconnect with jittered backoff, ordered outbox sent through a window, TCP_NODELAY."""

from __future__ import annotations

import asyncio
import random
import socket
import sqlite3
import ssl
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from itertools import cycle
from pathlib import Path
from typing import Any

import aiomqtt
import paho.mqtt.client as paho_mqtt
import structlog
from paho.mqtt.reasoncodes import ReasonCode

from node_agent.config import BrokerAddress
from node_agent.transport.outbox import OutboxStore
from node_agent.transport.window import WINDOW, SendWindow

log = structlog.get_logger(__name__)

Ack = Callable[[], None]
# (topic, payload, retained, ack): with SessionOptions.manual_ack the broker gets the PUBACK only when the handler
# calls ack() (once the message is applied or stored); otherwise ack is a no-op and paho acknowledges on receipt.
MessageHandler = Callable[[str, bytes, bool, Ack], Awaitable[None]]
NODELAY = (
    socket.IPPROTO_TCP,
    socket.TCP_NODELAY,
    1,
)  # without it a QoS 1 round trip waits ~40 ms (bench/rtt.py)
BACKOFF_FIRST_S = 0.1
OUTBOX_RETRY_S = 1.0
# Deletions (acknowledged messages, records written to their files) need no sync of their own: they ride with
# the next batch of new messages, or are committed on their own this long after the first of them. A crash
# before that sends a byte-identical copy again (ADR 0010); a commit per PUBACK kept the writer busy while a
# task's result waited for it.
LAZY_DELETE_S = 0.05


@dataclass(frozen=True, slots=True)
class Outgoing:
    topic: str
    payload: bytes
    retain: bool = False
    seq: int | None = None  # its row in the durable outbox, deleted once the broker acknowledged it


@dataclass(slots=True)
class SessionOptions:
    identifier: str
    persistent: bool  # clean session off: commands sent while we are away are queued by the broker
    will: Outgoing | None = None
    keepalive_s: int = 30
    backoff_max_s: float = 10.0
    tls_ca_file: Path | None = None  # for mqtts://: trust this CA file instead of the system's CA certificates
    manual_ack: bool = False  # PUBACK only when the handler calls ack(): a message lost in a crash is redelivered
    tls_cert_file: Path | None = None  # for mqtts://: present this client certificate (PEM) ...
    tls_key_file: Path | None = None  # ... with this private key (PEM, unencrypted)

    def tls_context(self) -> ssl.SSLContext:
        """The TLS context of an mqtts:// connection: the CA to trust and, if set, the client certificate."""
        context = ssl.create_default_context(cafile=self.tls_ca_file)
        if self.tls_cert_file is not None:
            context.load_cert_chain(self.tls_cert_file, self.tls_key_file)
        return context


@dataclass(slots=True)
class MqttTransport:
    """Publishes through an ordered outbox, so a broker outage delays messages but loses none; with a ``durable``
    OutboxStore, neither does a crash of this process (a message is sent only once it is on disk)."""

    brokers: Sequence[BrokerAddress]
    options: SessionOptions
    on_message: MessageHandler
    subscriptions: Sequence[str] = ()
    on_connected: Callable[[], Awaitable[None]] | None = None
    durable: OutboxStore | None = None
    connected: asyncio.Event = field(default_factory=asyncio.Event)
    current: BrokerAddress | None = None  # the broker (node of a cluster) of the live or the last session
    _outbox: asyncio.Queue[Outgoing] = field(default_factory=asyncio.Queue)
    _window: SendWindow[Outgoing] = field(default_factory=SendWindow)  # sent, not yet acknowledged
    _was_connected: bool = False
    _unsaved: list[Outgoing] = field(default_factory=list)
    _acked: list[int] = field(default_factory=list)
    _records: list[tuple[str, bytes | None]] = field(default_factory=list)
    _dirty: asyncio.Event = field(default_factory=asyncio.Event)
    _lazy: asyncio.TimerHandle | None = None  # commits the deletions waiting alone (LAZY_DELETE_S)
    _published: int = 0
    _saved: int = 0
    _saved_changed: asyncio.Condition = field(default_factory=asyncio.Condition)

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        """Queue a QoS 1 message; it is sent in order once (and whenever) the broker is reachable."""
        if self.durable is None:
            self._outbox.put_nowait(Outgoing(topic, payload, retain))
            return
        self._unsaved.append(Outgoing(topic, payload, retain))
        self._published += 1
        self._dirty.set()

    def record(self, key: str, data: bytes | None) -> None:
        """Put (``None``: delete) a record in the durable outbox, in the same transaction as the messages
        published since the last commit: called right after them, it is on disk exactly when they are."""
        assert self.durable is not None, "records need the durable outbox"
        self._records.append((key, data))
        if data is None:
            self._delete_soon()
            return
        self._published += 1
        self._dirty.set()

    def _delete_soon(self) -> None:
        if self._lazy is None:
            self._lazy = asyncio.get_running_loop().call_later(LAZY_DELETE_S, self._lazy_due)

    def _lazy_due(self) -> None:
        self._lazy = None
        self._dirty.set()

    def records_left(self) -> list[tuple[str, bytes]]:
        """The records a previous run put and did not delete (read by ``open_outbox``)."""
        return list(self.durable.records_left) if self.durable is not None else []

    async def persisted(self) -> None:
        """Return once every message queued so far would survive a crash of this process."""
        if self.durable is None:
            return
        target = self._published
        async with self._saved_changed:
            await self._saved_changed.wait_for(lambda: self._saved >= target)

    async def open_outbox(self) -> int:
        """Read back what a previous run left unsent (before anything new is published); returns the count."""
        if self.durable is None:
            return 0
        rows = await self.durable.open()
        for row in rows:
            self._outbox.put_nowait(Outgoing(row.topic, row.payload, row.retain, row.seq))
        return len(rows)

    async def _persist(self, closing: asyncio.Event) -> None:
        """The one writer of the durable outbox: what a previous run left first, then new messages in order;
        a message joins the send queue only once it is on disk, and leaves the disk once acknowledged."""
        assert self.durable is not None
        while True:
            await _first_event(self._dirty, closing)
            self._dirty.clear()
            added, self._unsaved = self._unsaved, []
            acked, self._acked = self._acked, []
            records, self._records = self._records, []
            if added or acked or records:
                try:
                    seqs = await self.durable.apply([(m.topic, m.payload, m.retain) for m in added], acked, records)
                except sqlite3.Error as exc:  # a full disk, say: keep everything in memory and try again
                    log.error("outbox.write_failed", error=str(exc), waiting=len(added))
                    self._unsaved, self._acked = added + self._unsaved, acked + self._acked
                    self._records = records + self._records
                    await _wait_or_stop(closing, OUTBOX_RETRY_S)
                    self._dirty.set()
                    if closing.is_set():
                        return
                    continue
                for message, seq in zip(added, seqs, strict=True):
                    self._outbox.put_nowait(Outgoing(message.topic, message.payload, message.retain, seq))
                async with self._saved_changed:
                    self._saved += len(added) + sum(1 for _, data in records if data is not None)
                    self._saved_changed.notify_all()
            if closing.is_set() and not self._unsaved and not self._acked and not self._records:
                return

    async def flush(self, timeout_s: float) -> bool:
        """Wait until every queued message has been acknowledged by the broker."""
        try:
            async with asyncio.timeout(timeout_s):
                await self.persisted()
                await self._outbox.join()
        except TimeoutError:
            return False
        return True

    async def run(self, stopping: asyncio.Event) -> None:
        """Stay connected until ``stopping`` is set; reconnect with jittered backoff on failure."""
        if self.durable is None:
            await self._connect_loop(stopping)
            return
        closing = asyncio.Event()
        writer = asyncio.create_task(self._persist(closing), name="mqtt-outbox")
        try:
            await self._connect_loop(stopping)
        finally:
            closing.set()  # the writer stores what is still queued (sent or not), then ends
            await asyncio.wait({writer}, timeout=10)
            if not writer.done():
                writer.cancel()
            await self.durable.close()

    async def _connect_loop(self, stopping: asyncio.Event) -> None:
        delay = BACKOFF_FIRST_S
        for broker in cycle(self.brokers):
            if stopping.is_set():
                return
            try:
                await self._session(broker, stopping)
                return
            except aiomqtt.MqttError as exc:
                log.warning("mqtt.disconnected", broker=broker.netloc, error=str(exc))
            if self._was_connected:  # a session that worked starts the backoff afresh
                delay, self._was_connected = BACKOFF_FIRST_S, False
            await _wait_or_stop(stopping, delay * random.uniform(0.5, 1.0))
            delay = min(delay * 2, self.options.backoff_max_s)

    async def _session(self, broker: BrokerAddress, stopping: asyncio.Event) -> None:
        async with self._client(broker) as client:
            if self.options.manual_ack:
                client._client.manual_ack_set(True)  # aiomqtt 2.x does not wrap paho's manual ack
            for topic in self.subscriptions:
                if is_refused(await client.subscribe(topic, qos=1)):
                    # NATS refuses a subscription while JetStream cannot create its consumer (busy, electing a
                    # leader) or its permissions forbid it: a session without it would miss messages silently.
                    raise aiomqtt.MqttError(f"subscription to {topic!r} refused by {broker.netloc}")
            previous, self.current = self.current, broker
            self.connected.set()
            self._was_connected = True
            log.info("mqtt.connected", broker=broker.netloc, brokers=len(self.brokers))
            if previous is not None and previous != broker:
                log.warning("mqtt.failed_over", broker=broker.netloc, previous=previous.netloc)
            if self.on_connected is not None:
                await self.on_connected()
            # Two loops owned here, not a TaskGroup: a TaskGroup would wrap MqttError in an ExceptionGroup,
            # and the reconnect loop in run() is the one place that handles it.
            receiver = asyncio.create_task(self._receive(client), name="mqtt-receive")
            sender = asyncio.create_task(self._send(client, stopping), name="mqtt-send")
            try:
                await _first_of(stopping, receiver, sender)
            finally:
                self.connected.clear()
                await _cancel_and_wait(receiver, sender)

    def _client(self, broker: BrokerAddress) -> aiomqtt.Client:
        will = self.options.will
        client = aiomqtt.Client(
            broker.host,
            broker.port,
            identifier=self.options.identifier,
            username=broker.username,
            password=broker.password,
            clean_session=not self.options.persistent,
            keepalive=self.options.keepalive_s,
            tls_context=self.options.tls_context() if broker.tls else None,
            will=aiomqtt.Will(will.topic, will.payload, qos=1, retain=will.retain) if will else None,
            socket_options=[NODELAY],
            timeout=10,
            max_inflight_messages=WINDOW,  # paho's own window (default 20) would queue what ours lets through
        )
        fail_fast_on_early_close(client)
        on_puback(client, self._acknowledged)
        return client

    async def _receive(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            payload = message.payload if isinstance(message.payload, bytes) else b""
            ack = _acker(client, message.mid, message.qos) if self.options.manual_ack else _no_ack
            await self.on_message(message.topic.value, payload, message.retain, ack)

    async def _send(self, client: aiomqtt.Client, stopping: asyncio.Event) -> None:
        """Publish in queue order without waiting for each PUBACK: first what the last connection left
        unacknowledged, then the queue, with at most ``WINDOW`` messages in flight."""
        loop = asyncio.get_running_loop()
        publish = partial(_publish, client)
        self._window.resend(publish, loop.time())
        while not stopping.is_set():
            self._window.send(await self._next(), publish, loop.time())

    async def _next(self) -> Outgoing:
        """The next message to send, once the window has room; MqttError if the oldest message in flight has
        waited ACK_TIMEOUT_S for its PUBACK (a dead connection that TCP has not noticed yet)."""
        window = self._window
        while True:
            if window.room.is_set() and not self._outbox.empty():
                return self._outbox.get_nowait()
            deadline = window.deadline()
            try:
                async with asyncio.timeout_at(deadline):
                    await window.room.wait()
                    return await self._outbox.get()
            except TimeoutError:
                if (deadline := window.deadline()) is not None and deadline <= asyncio.get_running_loop().time():
                    raise aiomqtt.MqttError("no PUBACK in time: connection presumed dead") from None

    def _acknowledged(self, mid: int) -> None:
        """paho's on_publish: a PUBACK arrived; what leaves the window leaves the durable outbox too."""
        done = self._window.acknowledged(mid)
        for item in done:
            self._outbox.task_done()
            if item.seq is not None:
                self._acked.append(item.seq)
        if done:
            self._delete_soon()


async def _first_event(*events: asyncio.Event) -> None:
    waiters = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


def _no_ack() -> None:
    pass


def _acker(client: aiomqtt.Client, mid: int, qos: int) -> Ack:
    """The PUBACK of one message, sent at most once and only on the connection that received it: a message id
    means nothing on a later connection, and there the broker redelivers the message anyway."""
    sent = False

    def ack() -> None:
        nonlocal sent
        if sent or qos == 0:
            return
        sent = True
        if client._client.is_connected():
            client._client.ack(mid, qos)

    return ack


def _publish(client: aiomqtt.Client, item: Outgoing) -> int:
    """Send one QoS 1 message and return its message id, without waiting for the PUBACK (aiomqtt's publish()
    would: one round trip per message)."""
    info = client._client.publish(item.topic, item.payload, qos=1, retain=item.retain)
    if info.rc != paho_mqtt.MQTT_ERR_SUCCESS:
        raise aiomqtt.MqttCodeError(info.rc, "could not publish")
    return info.mid


def on_puback(client: aiomqtt.Client, callback: Callable[[int], None]) -> None:
    """Call ``callback(mid)`` on every PUBACK of the client, after aiomqtt's own handler."""
    paho = client._client
    forward = paho.on_publish

    def on_publish(*args: Any) -> None:
        if forward is not None:
            forward(*args)
        callback(args[2])  # (client, userdata, mid, reason_code, properties)

    paho.on_publish = on_publish


def fail_fast_on_early_close(client: aiomqtt.Client) -> None:
    """Make a connection the broker closes before its CONNACK fail at once, not after the 10 s timeout.

    aiomqtt (2.5) ignores a disconnect that comes before the CONNACK. A NATS node that cannot load the session
    (its JetStream leader is being re-elected after another node died) closes the connection after 4 s; without
    this the agent would wait out its timeout before trying the next node of the cluster.
    """
    paho = client._client
    forward = paho.on_disconnect
    fired = False  # the transport makes a new client per attempt: one early close is all this has to report

    def on_disconnect(*args: Any) -> None:
        nonlocal fired
        # Only while a connect waits: not after a session (done _disconnected), nor on a future aiomqtt renewed.
        if not (fired or client._connected.done() or client._disconnected.done()):
            fired = True
            client._connected.set_exception(aiomqtt.MqttError("connection closed before CONNACK"))
        if forward is not None:
            forward(*args)

    paho.on_disconnect = on_disconnect


def is_refused(granted: tuple[int, ...] | list[ReasonCode]) -> bool:
    """A SUBACK return code of 0x80 (MQTT 3.1.1) or a failure reason code (MQTT 5)."""
    return any(code.is_failure if isinstance(code, ReasonCode) else code >= 0x80 for code in granted)


async def _wait_or_stop(stopping: asyncio.Event, delay_s: float) -> None:
    try:
        async with asyncio.timeout(delay_s):
            await stopping.wait()
    except TimeoutError:
        pass


async def _cancel_and_wait(*tasks: asyncio.Task[None]) -> None:
    """Cancel until done: on Python 3.11 a cancel racing a finishing wait_for (aiomqtt's calls) can be lost."""
    while pending := [task for task in tasks if not task.done()]:
        for task in pending:
            task.cancel()
        await asyncio.wait(pending, timeout=0.5)
    for task in tasks:
        if not task.cancelled():
            task.exception()  # mark retrieved; the error was already raised by _first_of


async def _first_of(stopping: asyncio.Event, *tasks: asyncio.Task[None]) -> None:
    """Return when stopping is set or any task ends; re-raise a task's error."""
    stop = asyncio.ensure_future(stopping.wait())
    try:
        done, _ = await asyncio.wait({stop, *tasks}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stop.cancel()
    for task in done:
        if task is not stop and not task.cancelled() and task.exception() is not None:
            raise task.exception()  # type: ignore[misc]
    if not stopping.is_set() and not any(t is stop for t in done):
        raise aiomqtt.MqttError("connection closed")
