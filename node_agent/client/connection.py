"""The client's MQTT session: which brokers, which login and TLS files, and the topics a driver follows."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from node_agent.config import parse_broker_urls
from node_agent.transport.mqtt import MessageHandler, MqttTransport, SessionOptions
from node_agent.wire.topics import Topics


def client_transport(
    broker_url: str,
    topics: Topics,
    client_id: str,
    on_message: MessageHandler,
    *,
    tls_ca_file: str | Path | None = None,
    tls_cert_file: str | Path | None = None,
    tls_key_file: str | Path | None = None,
    username: str | None = None,
    password: str | None = None,
) -> MqttTransport:
    """A clean session (nothing queued for a driver that is gone) subscribed to its replies and to every
    node's, job's, task's and pool's state. A login in a broker URL wins over ``username`` and ``password``."""
    prefix = topics.prefix
    return MqttTransport(
        brokers=[
            address
            if address.username is not None or username is None
            else replace(address, username=username, password=password)
            for address in parse_broker_urls(broker_url)
        ],
        options=SessionOptions(
            identifier=f"node-agent-client-{client_id}",
            persistent=False,
            tls_ca_file=_path(tls_ca_file),
            tls_cert_file=_path(tls_cert_file),
            tls_key_file=_path(tls_key_file),
        ),
        on_message=on_message,
        subscriptions=(
            topics.replies(client_id),
            f"{prefix}/nodes/+/state",
            f"{prefix}/nodes/+/events",
            f"{prefix}/jobs/+",
            f"{prefix}/jobs/+/tasks/+",
            f"{prefix}/jobs/+/nodes/+",
            f"{prefix}/pools/+",
        ),
    )


def _path(value: str | Path | None) -> Path | None:
    return Path(value) if value is not None else None
