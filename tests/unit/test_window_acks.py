"""The send window: messages leave it in order once acknowledged, and a new connection sends the rest again."""

from __future__ import annotations

import itertools

import aiomqtt
import pytest

from node_agent.transport.window import ACK_TIMEOUT_S, SendWindow


class Link:
    """Stands in for paho: hands out message ids, remembers what was sent, can fail like a dropped connection."""

    def __init__(self, fail_after: int | None = None) -> None:
        self.sent: list[str] = []
        self.mids: dict[str, int] = {}
        self._ids = itertools.count(1)
        self._fail_after = fail_after

    def publish(self, item: str) -> int:
        if self._fail_after is not None and len(self.sent) >= self._fail_after:
            raise aiomqtt.MqttError("connection lost")
        self.sent.append(item)
        self.mids[item] = next(self._ids)
        return self.mids[item]


async def test_messages_leave_in_order_once_everything_before_them_is_acknowledged() -> None:
    window: SendWindow[str] = SendWindow(size=3)
    link = Link()
    for item in "abc":
        window.send(item, link.publish, now=0.0)
    assert not window.room.is_set()  # full
    assert window.acknowledged(link.mids["b"]) == []  # "a" is still out
    assert not window.room.is_set()
    assert window.acknowledged(link.mids["a"]) == ["a", "b"]
    assert window.room.is_set() and len(window) == 1
    assert window.deadline() == ACK_TIMEOUT_S
    assert window.acknowledged(link.mids["c"]) == ["c"]
    assert window.deadline() is None


async def test_a_new_connection_sends_everything_unacknowledged_again_in_order() -> None:
    window: SendWindow[str] = SendWindow(size=4)
    first = Link()
    for item in "abcd":
        window.send(item, first.publish, now=0.0)
    window.acknowledged(first.mids["a"])
    window.acknowledged(first.mids["c"])  # acknowledged, but "b" before it was not: it is sent again too

    broken = Link(fail_after=1)  # the next connection breaks while sending the window again
    with pytest.raises(aiomqtt.MqttError):
        window.resend(broken.publish, now=1.0)
    assert len(window) == 3  # nothing left the window

    again = Link()
    window.resend(again.publish, now=2.0)
    assert again.sent == ["b", "c", "d"]
    assert window.acknowledged(first.mids["d"]) == []  # an id of an earlier connection means nothing
    assert [window.acknowledged(again.mids[item]) for item in "bcd"] == [["b"], ["c"], ["d"]]


async def test_a_message_whose_send_failed_stays_in_the_window() -> None:
    window: SendWindow[str] = SendWindow(size=4)
    with pytest.raises(aiomqtt.MqttError):
        window.send("a", Link(fail_after=0).publish, now=0.0)
    again = Link()
    window.resend(again.publish, now=1.0)
    assert again.sent == ["a"]
