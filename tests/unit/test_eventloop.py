import asyncio
import importlib.util

import pytest

from node_agent import eventloop
from node_agent.errors import ConfigError

HAS_UVLOOP = importlib.util.find_spec("uvloop") is not None


async def loop_module() -> str:
    return type(asyncio.get_running_loop()).__module__


def test_asyncio_is_the_default_loop() -> None:
    assert eventloop.run(loop_module()).startswith("asyncio")


@pytest.mark.skipif(not HAS_UVLOOP, reason="uvloop is not installed (pip install 'node-agent[uvloop]')")
def test_uvloop_runs_the_agent_loop_when_chosen() -> None:
    assert eventloop.run(loop_module(), "uvloop").startswith("uvloop")


@pytest.mark.skipif(HAS_UVLOOP, reason="uvloop is installed")
def test_uvloop_chosen_but_missing_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="pip install"):
        eventloop.loop_factory("uvloop")
