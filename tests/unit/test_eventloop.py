import asyncio
import importlib.util
from collections.abc import Iterator

import pytest

from node_agent import eventloop
from node_agent.errors import ConfigError

HAS_UVLOOP = importlib.util.find_spec("uvloop") is not None


@pytest.fixture(autouse=True)
def default_policy() -> Iterator[None]:
    yield
    asyncio.set_event_loop_policy(None)


async def loop_module() -> str:
    return type(asyncio.get_running_loop()).__module__


def test_asyncio_is_the_default_loop() -> None:
    eventloop.use("asyncio")
    assert asyncio.run(loop_module()).startswith("asyncio")


@pytest.mark.skipif(not HAS_UVLOOP, reason="uvloop is not installed (pip install 'node-agent[uvloop]')")
def test_uvloop_runs_the_agent_loop_when_chosen() -> None:
    eventloop.use("uvloop")
    assert asyncio.run(loop_module()).startswith("uvloop")


@pytest.mark.skipif(HAS_UVLOOP, reason="uvloop is installed")
def test_uvloop_chosen_but_missing_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="pip install"):
        eventloop.use("uvloop")
