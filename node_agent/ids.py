"""The one rule every id on the wire and on disk obeys (PROTOCOL.md, "Topics")."""

import re
from typing import Annotated

from pydantic import StringConstraints

ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
ID_RULE = "use 1-64 of [A-Za-z0-9_-]"
_ID_RE = re.compile(ID_PATTERN)

Id = Annotated[str, StringConstraints(pattern=ID_PATTERN)]


def is_valid_id(value: object) -> bool:
    return isinstance(value, str) and _ID_RE.fullmatch(value) is not None


def sanitize_id(value: str) -> str:
    """Turn a host name into a valid node id (dots and other characters become '-')."""
    cleaned = re.sub(r"[^A-Za-z0-9_-]", "-", value)[:64]
    return cleaned or "node"
