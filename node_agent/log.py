"""structlog set-up: JSON lines (or console) on stderr, with secrets kept out of the output.

Import this module before anything else that imports structlog (``cli.py`` does): when rich is installed (typer and
the client's tables use it), ``import structlog`` loads rich for pretty tracebacks, about 5 MB kept for the agent's
life. The agent prints exceptions as plain text, so rich is hidden while structlog loads; anything importing rich
later gets it as usual. ``tests/unit/test_footprint.py`` checks it.
"""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import MutableMapping
from typing import Any

if "structlog" not in sys.modules and "rich" not in sys.modules:
    sys.modules["rich"] = None  # type: ignore[assignment]  # None in sys.modules: "import rich" raises ImportError
    try:
        import structlog
    finally:
        del sys.modules["rich"]

import structlog

_SECRET_KEYS = ("password", "secret", "token", "env", "sas")


@functools.lru_cache(maxsize=512)  # log lines use a few dozen key names, each checked once
def _is_secret(key: str) -> bool:
    return any(word in key.lower() for word in _SECRET_KEYS)


def _redact(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key in [key for key in event if _is_secret(key)]:
        event[key] = "***"
    return event


def configure_logging(level: str = "info", fmt: str = "auto") -> None:
    """``auto``: readable console lines on a terminal, JSON lines otherwise (journald, a file, ``docker logs``).

    Loggers are not cached, so calling this again (SIGHUP) changes the level of every module's logger."""
    is_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    renderer: Any = structlog.processors.JSONRenderer() if is_json else structlog.dev.ConsoleRenderer()
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _redact,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelNamesMapping()[level.upper()]),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
