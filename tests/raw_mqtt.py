"""A plain MQTT client for tests: publishes what BatchClient never would and watches any topic."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable
from typing import Any

import aiomqtt

from node_agent.brokers import BrokerHandle
from node_agent.config import parse_broker_urls
from node_agent.transport.mqtt import NODELAY

TIMEOUT_S = 20.0


class RawMqtt:
    """Raw commands (the same one twice, malformed ones), retained documents, and every message seen."""

    def __init__(self, broker: BrokerHandle, prefix: str) -> None:
        self.address = parse_broker_urls(broker.url)[0]
        self.prefix = prefix
        self.reply_topic = f"{prefix}/clients/raw{uuid.uuid4().hex[:12]}/replies"
        self.messages: list[tuple[str, bytes]] = []
        self._replies: list[dict[str, Any]] = []  # the replies among ``messages``, parsed once each
        self._read_replies = 0  # how many of ``messages`` were looked at for replies
        self._changed = asyncio.Condition()
        # TCP_NODELAY, as the agent and BatchClient use: without it a publish right after another waits for the
        # broker's delayed ACK of the first (about 40 ms), as the hostile input test does twice per input.
        self._client = aiomqtt.Client(
            self.address.host, self.address.port, identifier=f"raw-{uuid.uuid4().hex}", socket_options=[NODELAY]
        )
        self._reader: asyncio.Task[None] | None = None

    async def __aenter__(self) -> RawMqtt:
        await self._client.__aenter__()
        await self._client.subscribe(self.reply_topic, qos=1)
        self._reader = asyncio.create_task(self._read())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._reader is not None
        self._reader.cancel()
        await asyncio.wait({self._reader})
        await self._client.__aexit__(None, None, None)

    async def subscribe(self, topic: str) -> None:
        await self._client.subscribe(topic, qos=1)

    async def _read(self) -> None:
        async for message in self._client.messages:
            payload = message.payload if isinstance(message.payload, bytes) else b""
            async with self._changed:
                self.messages.append((message.topic.value, payload))
                self._changed.notify_all()

    async def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        await self._client.publish(topic, payload, qos=1, retain=retain)

    def on_topic(self, topic: str) -> list[bytes]:
        return [payload for t, payload in self.messages if t == topic]

    def replies(self, request_id: str) -> list[dict[str, Any]]:
        # Parsed as they come, not all again at each call: the hostile input test waits on ~900 of them.
        for topic, payload in self.messages[self._read_replies :]:
            if topic == self.reply_topic:
                self._replies.append(json.loads(payload))
        self._read_replies = len(self.messages)
        return [reply for reply in self._replies if reply.get("requestId") == request_id]

    async def wait_until(self, predicate: Callable[[], Any], timeout_s: float = TIMEOUT_S) -> Any:
        async with asyncio.timeout(timeout_s), self._changed:
            while not (result := predicate()):
                await self._changed.wait()
            return result

    def command(self, node_id: str, body: dict[str, Any], request_id: str) -> bytes:
        message = {**body, "requestId": request_id, "replyTo": self.reply_topic}
        return json.dumps(message).encode()
