"""Shared base model and field types of the wire contract (camelCase, RFC 3339, ISO 8601)."""

from __future__ import annotations

import functools
from datetime import UTC, datetime, timedelta
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, PlainSerializer
from pydantic.alias_generators import to_camel


def utcnow() -> datetime:
    return datetime.now(UTC)


@functools.lru_cache(maxsize=1024)  # a task's times are serialised again with each of its state changes
def _rfc3339(value: datetime) -> str:
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def iso_duration(value: timedelta) -> str:
    total_ms = round(value.total_seconds() * 1000)
    days, rest_ms = divmod(total_ms, 86_400_000)
    hours, rest_ms = divmod(rest_ms, 3_600_000)
    minutes, rest_ms = divmod(rest_ms, 60_000)
    seconds = rest_ms / 1000
    text = "P" + (f"{days}D" if days else "")
    clock = (f"{hours}H" if hours else "") + (f"{minutes}M" if minutes else "")
    if seconds or not (days or clock):
        clock += f"{seconds:g}S"
    return text + ("T" + clock if clock else "")


Timestamp = Annotated[datetime, PlainSerializer(_rfc3339, return_type=str, when_used="json")]


def _not_negative(value: timedelta) -> timedelta:
    if value < timedelta(0):
        raise ValueError("a duration must not be negative: use an ISO 8601 duration such as PT15M")
    return value


def add_capped(moment: datetime, delta: timedelta) -> datetime:
    """``moment + delta``, or the latest datetime there is when that lies past year 9999 (a "never")."""
    try:
        return moment + delta
    except OverflowError:
        return datetime.max.replace(tzinfo=UTC)


Duration = Annotated[
    timedelta, AfterValidator(_not_negative), PlainSerializer(iso_duration, return_type=str, when_used="json")
]


class WireModel(BaseModel):
    """Base of every payload: camelCase aliases, unknown fields ignored."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="ignore",
        frozen=True,
    )

    def to_json(self) -> bytes:
        return self.model_dump_json(by_alias=True, exclude_none=True).encode()
