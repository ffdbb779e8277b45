"""BrokerProxy on its own, in front of an echo server: forwarding, partition, heal on the same port."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from node_agent.brokers import HOST
from node_agent.testing.proxy import BrokerProxy


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(1024):
        writer.write(data)
        await writer.drain()
    writer.close()


@pytest.fixture
async def proxy() -> AsyncIterator[BrokerProxy]:
    server = await asyncio.start_server(echo, HOST, 0)
    async with server, BrokerProxy(server.sockets[0].getsockname()[1]) as started:
        yield started


async def round_trip(port: int, payload: bytes) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection(HOST, port)
    writer.write(payload)
    assert await reader.readexactly(len(payload)) == payload
    return reader, writer


async def test_partition_ends_live_connections_and_refuses_new_ones_until_heal(proxy: BrokerProxy) -> None:
    port = proxy.port
    reader, writer = await round_trip(port, b"before")

    await proxy.partition()

    try:
        assert await reader.read() == b""  # the connection is gone: end of stream ...
    except ConnectionResetError:  # ... or a reset, whichever the kernel reports first
        pass
    writer.close()
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection(HOST, port)

    await proxy.heal()
    assert proxy.port == port and proxy.url == f"mqtt://{HOST}:{port}"
    _, writer = await round_trip(port, b"after")
    writer.close()


async def test_close_ends_every_connection(proxy: BrokerProxy) -> None:
    reader, writer = await round_trip(proxy.port, b"x" * 100_000)  # more than one read of the pipe
    await proxy.close()
    assert await reader.read() == b""
    writer.close()
