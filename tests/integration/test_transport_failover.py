"""The agent's transport moves on at once from a broker node that drops the connection before its CONNACK."""

from __future__ import annotations

import asyncio
import time

import aiomqtt
import pytest

from node_agent.brokers import HOST
from node_agent.config import BrokerAddress
from node_agent.transport.mqtt import MqttTransport, SessionOptions

CLOSE_AFTER_S = 0.2


async def _no_messages(topic: str, payload: bytes, retained: bool) -> None:
    raise AssertionError("no message expected")


async def test_connection_closed_before_connack_fails_without_waiting_for_the_timeout() -> None:
    async def close_after_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1024)  # the CONNECT; a NATS node that cannot load the session answers nothing
        await asyncio.sleep(CLOSE_AFTER_S)  # what the broker does, not synchronisation: it closes a while later
        writer.close()

    server = await asyncio.start_server(close_after_connect, HOST, 0)
    async with server:
        port = server.sockets[0].getsockname()[1]
        transport = MqttTransport([BrokerAddress(HOST, port)], SessionOptions("early-close", False), _no_messages)
        started = time.monotonic()
        with pytest.raises(aiomqtt.MqttError, match="before CONNACK"):
            async with transport._client(transport.brokers[0]):
                pass
        assert time.monotonic() - started < 5  # the connect timeout is 10 s
