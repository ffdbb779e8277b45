"""The ``pytest11`` entry point: registers node-agent's fixtures when pytest-asyncio (the ``testing`` extra) is there.

The entry point is installed with node-agent whatever extras were chosen, so this module imports nothing pytest
did not bring: without pytest-asyncio it registers nothing and leaves the project's own tests alone.
"""

from __future__ import annotations

import importlib.util

import pytest


def pytest_configure(config: pytest.Config) -> None:
    if importlib.util.find_spec("pytest_asyncio") is None:
        return
    from node_agent.testing import fixtures

    if not config.pluginmanager.is_registered(fixtures):
        config.pluginmanager.register(fixtures, "node_agent.testing.fixtures")
