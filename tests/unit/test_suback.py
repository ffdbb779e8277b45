"""A refused subscription (NATS refuses one while JetStream cannot serve it) is told apart from a granted one."""

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from node_agent.transport.mqtt import is_refused


def test_granted_qos_is_not_refused() -> None:
    assert not is_refused((1,))
    assert not is_refused([ReasonCode(PacketTypes.SUBACK, "Granted QoS 1")])


def test_failure_code_is_refused() -> None:
    assert is_refused((1, 0x80))
    assert is_refused([ReasonCode(PacketTypes.SUBACK, "Unspecified error")])
