"""BrokerProxy: one node's loopback TCP path to the broker, which a test can cut (partition) and restore (heal)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from dataclasses import dataclass, field

from node_agent.brokers import HOST

CHUNK_BYTES = 64 * 1024
CLOSE_TIMEOUT_S = 5.0


@dataclass(eq=False, slots=True)
class _Link:
    """One agent connection and the broker connection it was paired with."""

    agent: asyncio.StreamWriter
    broker: asyncio.StreamWriter

    def close(self) -> None:
        """Close both sides; whatever was already written is still sent (a FIN, as a process exit gives)."""
        self.agent.close()
        self.broker.close()

    def abort(self) -> None:
        """Drop both sides at once, unsent bytes included: the cable is cut."""
        self.agent.transport.abort()
        self.broker.transport.abort()


@dataclass(eq=False)
class BrokerProxy:
    """``async with BrokerProxy(port)``: point the agent at ``proxy.url``; ``partition()`` / ``heal()`` cut it off.

    While partitioned nothing listens on the proxy's port, so a connection attempt is refused at once (as a
    firewall rejecting with a TCP reset would make it); a socket that is bound but never listens keeps the port
    ours meanwhile, so ``url`` stays valid. A connection accepted and then reset would not do: aiomqtt waits
    for a CONNACK until its timeout (10 s) rather than noticing the reset, which is what happens when the broker
    itself is down. Everything runs on the event loop that started the proxy: the test's loop.
    """

    broker_port: int
    broker_host: str = HOST
    port: int = 0
    _holder: socket.socket | None = None
    _server: asyncio.Server | None = None
    _links: set[_Link] = field(default_factory=set)
    _handlers: set[asyncio.Task[None]] = field(default_factory=set)

    @property
    def url(self) -> str:
        return f"mqtt://{HOST}:{self.port}"

    @property
    def is_partitioned(self) -> bool:
        return self._server is None

    async def __aenter__(self) -> BrokerProxy:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        self._holder = _reusable_socket()
        self._holder.bind((HOST, self.port))
        self.port = int(self._holder.getsockname()[1])
        await self.heal()

    async def partition(self) -> None:
        """Close the node's live connections at both ends at once and refuse new ones until ``heal()``.

        Both ends notice at once, unlike behind a cable cut, where each would wait for its keepalive (30 s).
        """
        await self._shut(_Link.abort)

    async def heal(self) -> None:
        """Listen again; the agent reconnects by itself (after its current backoff delay)."""
        if self._server is not None:
            return
        listener = _reusable_socket()
        try:
            listener.bind((HOST, self.port))  # allowed next to the holder: neither of them listens yet
        except BaseException:
            listener.close()
            raise
        self._server = await asyncio.start_server(self._serve, sock=listener)

    async def close(self) -> None:
        """Stop listening and close every connection (what was already written is still delivered)."""
        await self._shut(_Link.close)
        if self._holder is not None:
            self._holder.close()

    async def _shut(self, end: Callable[[_Link], None]) -> None:
        """Stop listening, end each live link, and wait for their handlers (Python 3.12's wait_closed does too)."""
        server, self._server = self._server, None
        if server is not None:
            server.close()  # no await before the links end: nothing new is accepted in between
        for link in list(self._links):
            end(link)
        if self._handlers:
            await asyncio.wait(set(self._handlers), timeout=CLOSE_TIMEOUT_S)
        if server is not None:
            await server.wait_closed()

    async def _serve(self, agent_reader: asyncio.StreamReader, agent_writer: asyncio.StreamWriter) -> None:
        """One accepted connection: pair it with a new broker connection and copy bytes both ways."""
        handler = asyncio.current_task()
        assert handler is not None
        self._handlers.add(handler)
        _no_delay(agent_writer)
        link: _Link | None = None
        try:
            try:
                broker_reader, broker_writer = await asyncio.open_connection(self.broker_host, self.broker_port)
            except OSError:  # broker down: the agent sees its connection dropped, as it would without the proxy
                agent_writer.transport.abort()
                return
            _no_delay(broker_writer)
            link = _Link(agent_writer, broker_writer)
            if self.is_partitioned:  # cut off while the broker connection was being made
                link.abort()
                return
            self._links.add(link)
            async with asyncio.TaskGroup() as group:
                group.create_task(_pipe(agent_reader, broker_writer, link), name="proxy-to-broker")
                group.create_task(_pipe(broker_reader, agent_writer, link), name="proxy-to-agent")
        except BaseException:  # cancelled with the loop: leave no socket open behind
            if link is not None:
                link.abort()
            else:
                agent_writer.transport.abort()
            raise
        finally:
            if link is not None:
                self._links.discard(link)
            self._handlers.discard(handler)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, link: _Link) -> None:
    """Copy until either side ends, then close both, so the other direction ends too."""
    try:
        while data := await reader.read(CHUNK_BYTES):
            writer.write(data)
            await writer.drain()
    except OSError:  # reset by the peer, or aborted by partition()
        link.abort()
    else:
        link.close()


def _no_delay(writer: asyncio.StreamWriter) -> None:
    """TCP_NODELAY, as the agent and the broker set it on their own sockets. asyncio sets it only on sockets whose
    protocol is IPPROTO_TCP, which those accepted from our listener (made with protocol 0) are not: Nagle's
    algorithm then held each small MQTT packet back for the peer's delayed ACK, about 40 ms per round trip."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _reusable_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    return sock
