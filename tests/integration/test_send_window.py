"""The transport's send window on a real Mosquitto: messages in flight when the broker stops acknowledging are
sent again after a restart, in order and none lost; a stop with a full window returns and keeps them on disk.

The broker is frozen with SIGSTOP: it accepts the bytes (the kernel buffers them) but sends no PUBACK, so the
window fills up and stays full, which a broker that merely answers slowly would not guarantee.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import aiomqtt
import psutil
import pytest

from node_agent.brokers import free_port, running_broker
from node_agent.config import parse_broker_urls
from node_agent.testing.nodes import fresh_prefix
from node_agent.transport.mqtt import Ack, MqttTransport, Outgoing, SessionOptions
from node_agent.transport.outbox import OutboxStore
from node_agent.transport.window import WINDOW, SendWindow

COUNT = 3 * WINDOW + 7  # a full window, and more behind it in the queue
TIMEOUT_S = 30.0
STOP_WITHIN_S = 15.0  # the transport's own bound: one aiomqtt disconnect timeout (10 s) and some


async def _ignore(topic: str, payload: bytes, retained: bool, ack: Ack) -> None:
    pass


def _transport(port: int, outbox: Path) -> MqttTransport:
    return MqttTransport(
        brokers=parse_broker_urls(f"mqtt://127.0.0.1:{port}"),
        options=SessionOptions(identifier=f"sender-{uuid.uuid4().hex[:8]}", persistent=True, backoff_max_s=0.5),
        on_message=_ignore,
        durable=OutboxStore(outbox),
    )


def _mosquitto_of(workdir: Path) -> psutil.Process:
    conf = str(workdir / "mosquitto.conf")
    [proc] = [p for p in psutil.Process().children() if conf in p.cmdline()]
    return proc


@contextlib.contextmanager
def _frozen(broker: psutil.Process) -> Iterator[None]:
    broker.send_signal(signal.SIGSTOP)
    try:
        yield
    finally:
        broker.send_signal(signal.SIGCONT)


def _full(window: SendWindow[Outgoing]) -> asyncio.Event:
    """An event set once ``window`` holds as many messages as it may (the transport has none to wait on)."""
    full = asyncio.Event()
    send = window.send

    def send_and_tell(item: Outgoing, publish: Callable[[Outgoing], int], now: float) -> None:
        send(item, publish, now)
        if len(window) == window.size:
            full.set()

    window.send = send_and_tell  # type: ignore[method-assign]
    return full


async def _filled(full: asyncio.Event) -> None:
    async with asyncio.timeout(TIMEOUT_S):
        await full.wait()


@contextlib.asynccontextmanager
async def _running(transport: MqttTransport) -> AsyncIterator[asyncio.Event]:
    await transport.open_outbox()
    stopping = asyncio.Event()
    runner = asyncio.create_task(transport.run(stopping))
    try:
        async with asyncio.timeout(TIMEOUT_S):
            await transport.connected.wait()
        yield stopping
    finally:
        stopping.set()
        async with asyncio.timeout(STOP_WITHIN_S):
            await runner


def _reader(port: int, identifier: str) -> aiomqtt.Client:
    return aiomqtt.Client("127.0.0.1", port, identifier=identifier, clean_session=False)


async def _subscribe(port: int, identifier: str, topic: str) -> None:
    """A persistent session subscribed to ``topic``: the broker keeps what arrives for it while it is away."""
    async with _reader(port, identifier) as reader:
        await reader.subscribe(topic, qos=1)


async def _read_all(port: int, identifier: str, topic: str) -> list[int]:
    """Everything the broker kept for the session, in the order it arrives, until each of COUNT was seen."""
    received: list[int] = []
    async with _reader(port, identifier) as reader, asyncio.timeout(TIMEOUT_S):
        await reader.subscribe(topic, qos=1)
        async for message in reader.messages:
            assert isinstance(message.payload, bytes)
            received.append(int(message.payload))
            if len(set(received)) == COUNT:
                return received
    raise AssertionError("unreachable")


def _first_seen(received: list[int]) -> list[int]:
    seen: dict[int, None] = {}
    for number in received:
        seen.setdefault(number, None)
    return list(seen)


async def test_a_full_window_is_sent_again_in_order_after_a_broker_restart(tmp_path: Path) -> None:
    port, store, topic, reader_id = free_port(), tmp_path / "store", f"{fresh_prefix()}/window", "reader-window"
    store.mkdir()
    with contextlib.ExitStack() as stack:
        stack.enter_context(running_broker(tmp_path / "b1", kind="mosquitto", port=port, persistence=store))
        broker = _mosquitto_of(tmp_path / "b1")
        await _subscribe(port, reader_id, topic)
        transport = _transport(port, tmp_path / "outbox.sqlite3")
        async with _running(transport):
            for number in range(WINDOW // 2):  # some get through before the broker freezes
                transport.publish(topic, str(number).encode())
            assert await transport.flush(TIMEOUT_S)
            full = _full(transport._window)
            with _frozen(broker):
                for number in range(WINDOW // 2, COUNT):
                    transport.publish(topic, str(number).encode())
                await _filled(full)
                broker.send_signal(signal.SIGTERM)  # acted on once thawed: it saves its store and exits
            stack.close()
            stack.enter_context(running_broker(tmp_path / "b2", kind="mosquitto", port=port, persistence=store))
            assert await transport.flush(TIMEOUT_S)

        received = await _read_all(port, reader_id, topic)
    assert _first_seen(received) == list(range(COUNT))  # each message first arrives in the order published
    assert len(received) - COUNT <= WINDOW  # copies: at most what was in flight when the broker went away


@pytest.mark.parametrize("how", ["stop", "cancel"])
async def test_a_stop_with_a_full_window_returns_and_keeps_the_messages(tmp_path: Path, how: str) -> None:
    outbox = tmp_path / "outbox.sqlite3"
    with running_broker(tmp_path / "b", kind="mosquitto") as handle:
        broker = _mosquitto_of(tmp_path / "b")
        transport = _transport(handle.port, outbox)
        await transport.open_outbox()
        stopping = asyncio.Event()
        runner = asyncio.create_task(transport.run(stopping))
        async with asyncio.timeout(TIMEOUT_S):
            await transport.connected.wait()
        full = _full(transport._window)
        with _frozen(broker):
            for number in range(COUNT):
                transport.publish("window/stop", str(number).encode())
            await _filled(full)
            assert not await transport.flush(0.2)  # nothing is acknowledged while the broker is frozen
            if how == "stop":
                stopping.set()
            else:
                runner.cancel()
            async with asyncio.timeout(STOP_WITHIN_S):
                await asyncio.wait({runner})
            assert runner.done()

    left = OutboxStore(outbox)  # nothing lost: every message is still on disk, in order, for the next run
    try:
        rows = await left.open()
    finally:
        await left.close()
    assert [int(row.payload) for row in rows] == list(range(COUNT))
