"""The send window: QoS 1 messages published but not yet acknowledged (PUBACK), oldest first.

MQTT keeps the QoS 1 messages of one connection in order and the broker acknowledges them in that order
(MQTT 3.1.1 section 4.6), so the transport publishes up to ``WINDOW`` messages without waiting for each
PUBACK. A message leaves the window (and the durable outbox) once it and everything before it are
acknowledged; on a new connection whatever is still in the window is sent again first, in the same order,
before anything newer (ADR 0010).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")

# Messages in flight at most. One task publishes about 9, so 64 lets the messages of several tasks go out
# without waiting for a PUBACK; after a lost connection at most this many are sent twice. MQTT 3.1.1 has no
# receive maximum: the broker takes as many in flight as the client sends.
WINDOW = 64
# A message unacknowledged this long means a dead connection: drop it and reconnect (aiomqtt's timeout).
ACK_TIMEOUT_S = 10.0


@dataclass(slots=True)
class _Sent(Generic[T]):
    item: T
    sent_at: float  # event loop time
    acked: bool = False


class SendWindow(Generic[T]):
    """What was sent and not yet acknowledged, with ``room`` set while another message may go out.

    ``publish(item)`` sends one message and returns its MQTT message id, or raises (the connection is gone):
    a message joins the window before it is sent, so one whose send failed is sent again too."""

    def __init__(self, size: int = WINDOW) -> None:
        self.size = size
        self.room = asyncio.Event()
        self.room.set()
        self._sent: deque[_Sent[T]] = deque()
        self._by_mid: dict[int, _Sent[T]] = {}

    def __len__(self) -> int:
        return len(self._sent)

    def send(self, item: T, publish: Callable[[T], int], now: float) -> None:
        """Send ``item`` (the window must have room) and keep it until it is acknowledged."""
        sent = _Sent(item, now)
        self._sent.append(sent)
        if len(self._sent) >= self.size:
            self.room.clear()
        self._by_mid[publish(item)] = sent

    def resend(self, publish: Callable[[T], int], now: float) -> None:
        """A new connection: send everything in the window again, oldest first (message ids of the last
        connection mean nothing now)."""
        self._by_mid.clear()
        for sent in self._sent:
            sent.acked, sent.sent_at = False, now
            self._by_mid[publish(sent.item)] = sent

    def acknowledged(self, mid: int) -> list[T]:
        """The broker acknowledged ``mid``: return the messages that leave the window (in order), if any.

        A message leaves only once every older one has been acknowledged too, so what is sent again after
        a reconnect is always everything from the oldest unacknowledged message on."""
        sent = self._by_mid.pop(mid, None)
        if sent is None:
            return []
        sent.acked = True
        done = []
        while self._sent and self._sent[0].acked:
            done.append(self._sent.popleft().item)
        if len(self._sent) < self.size:
            self.room.set()
        return done

    def deadline(self) -> float | None:
        """The loop time by which the oldest message in flight must be acknowledged; None if none is."""
        return self._sent[0].sent_at + ACK_TIMEOUT_S if self._sent else None
