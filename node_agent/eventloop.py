"""The agent's event loop: asyncio's own (the default) or uvloop (``pip install 'node-agent[uvloop]'``).

uvloop is opt-in because it measured slower here: bench/throughput.py, docs/performance.md.
"""

from __future__ import annotations

import asyncio
from typing import Literal

from node_agent.errors import ConfigError

EventLoopChoice = Literal["asyncio", "uvloop"]


def use(choice: EventLoopChoice) -> None:
    """Make the next ``asyncio.run`` create the chosen loop (for uvloop, through its event loop policy)."""
    if choice == "asyncio":
        return
    try:
        import uvloop
    except ImportError:
        raise ConfigError("event_loop is uvloop, which is not installed: pip install 'node-agent[uvloop]'") from None
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
