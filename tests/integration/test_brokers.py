"""The MQTT guarantees node-agent relies on, checked against both throw-away broker kinds."""

from __future__ import annotations

import asyncio
import sys
import textwrap
import uuid
from collections.abc import Iterator

import aiomqtt
import pytest

from node_agent.brokers import HOST, BrokerHandle, find_mosquitto, running_broker

TIMEOUT_S = 10.0
BURST = 2500  # above mosquitto's default max_queued_messages (1000) + max_inflight_messages (20)

_MOSQUITTO = pytest.param(
    "mosquitto",
    marks=pytest.mark.skipif(find_mosquitto() is None, reason="mosquitto binary not installed"),
    id="mosquitto",
)
_AMQTT = pytest.param("amqtt", id="amqtt")
_AMQTT_NO_OFFLINE_QUEUE = pytest.param(
    "amqtt",
    id="amqtt",
    marks=pytest.mark.xfail(
        strict=True,
        # AssertionError: a later message came first. TimeoutError: the session monitor had already
        # deleted the session (subscription included) before the client came back.
        raises=(AssertionError, TimeoutError),
        reason=(
            "amqtt 0.12: AnonymousAuthPlugin(allow_anonymous) flags every session is_anonymous, and the "
            "broker never queues QoS 1/2 messages for a disconnected anonymous session (and its session "
            "monitor deletes such sessions within ~1 s), so clean_session=False gives no offline delivery"
        ),
    ),
)
BOTH_KINDS = pytest.mark.parametrize("broker", [_MOSQUITTO, _AMQTT], indirect=True)
PERSISTENT_SESSION_KINDS = pytest.mark.parametrize("broker", [_MOSQUITTO, _AMQTT_NO_OFFLINE_QUEUE], indirect=True)

# Runs in a child process so that SIGKILL closes its socket with no DISCONNECT, like a crashed agent.
_DYING_CLIENT = textwrap.dedent(
    """
    import asyncio, sys
    import aiomqtt

    async def main(port: int, topic: str) -> None:
        will = aiomqtt.Will(topic, b"offline", qos=1, retain=True)
        async with aiomqtt.Client("127.0.0.1", port, identifier=sys.argv[3], will=will, keepalive=600):
            print("connected", flush=True)
            await asyncio.Event().wait()

    asyncio.run(main(int(sys.argv[1]), sys.argv[2]))
    """
)


@pytest.fixture
def broker(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerHandle]:
    """A fresh broker of the parametrized kind, stopped after the test."""
    with running_broker(tmp_path_factory.mktemp(request.param), kind=request.param) as handle:
        assert handle.kind == request.param
        yield handle


def _topic(name: str) -> str:
    return f"node-agent-test/{uuid.uuid4().hex}/{name}"


def _identifier(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:12]}"


def _client(broker: BrokerHandle, identifier: str, *, clean_session: bool = True) -> aiomqtt.Client:
    return aiomqtt.Client(HOST, broker.port, identifier=identifier, clean_session=clean_session)


async def _next_message(client: aiomqtt.Client) -> aiomqtt.Message:
    """The next message the client receives, failing after TIMEOUT_S."""
    async with asyncio.timeout(TIMEOUT_S):
        async for message in client.messages:
            return message
    raise AssertionError("message stream ended before any message arrived")


async def _payloads_until(client: aiomqtt.Client, last: bytes) -> list[bytes]:
    """Payloads received before the one equal to last, failing after TIMEOUT_S overall."""
    payloads: list[bytes] = []
    async with asyncio.timeout(TIMEOUT_S):
        async for message in client.messages:
            if message.payload == last:
                return payloads
            payloads.append(bytes(message.payload))
    raise AssertionError(f"message stream ended before {last!r} arrived")


@BOTH_KINDS
async def test_retained_message_reaches_later_subscriber(broker: BrokerHandle) -> None:
    topic = _topic("retained")
    async with _client(broker, _identifier("pub")) as pub:
        await pub.publish(topic, b"hello", qos=1, retain=True)
    async with _client(broker, _identifier("sub")) as sub:
        await sub.subscribe(topic, qos=1)
        message = await _next_message(sub)
    assert (message.payload, message.retain) == (b"hello", True)


@BOTH_KINDS
async def test_empty_retained_payload_clears_retained_message(broker: BrokerHandle) -> None:
    topic = _topic("cleared")
    async with _client(broker, _identifier("pub")) as pub:
        await pub.publish(topic, b"stale", qos=1, retain=True)
        await pub.publish(topic, b"", qos=1, retain=True)
        async with _client(broker, _identifier("sub")) as sub:
            await sub.subscribe(topic, qos=1)
            # A retained message would be sent right after SUBACK, so it would precede this live one.
            await pub.publish(topic, b"sentinel", qos=1)
            message = await _next_message(sub)
    assert (message.payload, message.retain) == (b"sentinel", False)


async def _connect_then_sigkill(broker: BrokerHandle, topic: str) -> None:
    """Run a client with a retained last will in a child process and SIGKILL it once connected."""
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _DYING_CLIENT, str(broker.port), topic, _identifier("dying"),
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert child.stdout is not None
        async with asyncio.timeout(TIMEOUT_S):
            line = await child.stdout.readline()
        assert line.strip() == b"connected", f"child client did not connect: {line!r}"
    finally:
        child.kill()
        await child.communicate()


@BOTH_KINDS
async def test_last_will_is_published_and_retained_when_client_dies(broker: BrokerHandle) -> None:
    topic = _topic("will")
    async with _client(broker, _identifier("watcher")) as watcher:
        await watcher.subscribe(topic, qos=1)
        await _connect_then_sigkill(broker, topic)
        live = await _next_message(watcher)
    async with _client(broker, _identifier("late")) as late:
        await late.subscribe(topic, qos=1)
        retained = await _next_message(late)
    assert (live.payload, live.retain) == (b"offline", False)
    assert (retained.payload, retained.retain) == (b"offline", True)


@PERSISTENT_SESSION_KINDS
async def test_persistent_session_receives_qos1_published_while_offline(broker: BrokerHandle) -> None:
    topic, identifier = _topic("queued"), _identifier("persistent")
    async with _client(broker, identifier, clean_session=False) as client:
        await client.subscribe(topic, qos=1)
    async with _client(broker, _identifier("pub")) as pub:
        await pub.publish(topic, b"while-away", qos=1)
        async with _client(broker, identifier, clean_session=False) as client:
            # Same publisher, same topic: a queued message must be delivered before this later one.
            await pub.publish(topic, b"after-reconnect", qos=1)
            first = await _next_message(client)
    assert (first.payload, first.qos) == (b"while-away", 1)


@PERSISTENT_SESSION_KINDS
async def test_offline_qos1_burst_is_delivered_without_drops(broker: BrokerHandle) -> None:
    topic, identifier = _topic("burst"), _identifier("persistent")
    async with _client(broker, identifier, clean_session=False) as client:
        await client.subscribe(topic, qos=1)
    async with _client(broker, _identifier("pub")) as pub:
        # Pipelined, not one PUBACK round trip after another: tasks start in the order they are made, each hands
        # its message to paho before its first await, and paho sends them in that order (20 in flight at most).
        await asyncio.gather(*[asyncio.create_task(pub.publish(topic, str(i).encode(), qos=1)) for i in range(BURST)])
        async with _client(broker, identifier, clean_session=False) as client:
            # Re-subscribing, as the agent does after every reconnect, cannot bring back messages a broker
            # dropped; it only makes a lost session fail fast here instead of by timeout.
            await client.subscribe(topic, qos=1)
            await pub.publish(topic, b"end", qos=1)
            received = await _payloads_until(client, b"end")
    assert received == [str(index).encode() for index in range(BURST)]
