"""The agent's event loop: asyncio's own (the default) or uvloop (``pip install 'node-agent[uvloop]'``).

uvloop is opt-in because it measured slower here: bench/throughput.py, docs/performance.md.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, Literal, TypeVar

from node_agent.errors import ConfigError

T = TypeVar("T")
EventLoopChoice = Literal["asyncio", "uvloop"]


def loop_factory(choice: EventLoopChoice) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop factory for "uvloop" (ConfigError if it is not installed); None for asyncio's loop."""
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        raise ConfigError(
            "event_loop is uvloop but uvloop is not installed: pip install 'node-agent[uvloop]'"
        ) from None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def run(main: Coroutine[Any, Any, T], choice: EventLoopChoice = "asyncio") -> T:
    """``asyncio.run`` on the chosen loop."""
    factory = loop_factory(choice)
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)
