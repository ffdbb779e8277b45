"""The plugin's entry point and its documentation, without a broker: what registers, and that the doc is the test."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from types import SimpleNamespace

import pytest

from node_agent.testing import plugin

ROOT = Path(__file__).resolve().parents[2]


class Recorder:
    """A plugin manager that only records registrations."""

    def __init__(self) -> None:
        self.registered: list[str] = []

    def is_registered(self, module: object) -> bool:
        return False

    def register(self, module: object, name: str) -> None:
        self.registered.append(name)


def test_fixtures_register_when_pytest_asyncio_is_installed() -> None:
    manager = Recorder()
    plugin.pytest_configure(SimpleNamespace(pluginmanager=manager))  # type: ignore[arg-type]
    assert manager.registered == ["node_agent.testing.fixtures"]


def test_nothing_registers_without_pytest_asyncio(monkeypatch: pytest.MonkeyPatch) -> None:
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "pytest_asyncio" else real_find_spec(name, *a)
    )
    manager = Recorder()
    plugin.pytest_configure(SimpleNamespace(pluginmanager=manager))  # type: ignore[arg-type]
    assert manager.registered == []


def test_docs_testing_md_prints_the_example_test_as_it_is() -> None:
    doc = (ROOT / "docs" / "testing.md").read_text()
    example = (ROOT / "tests" / "integration" / "test_downstream_example.py").read_text()
    blocks = re.findall(r"```python\n(.*?)```", doc, flags=re.DOTALL)
    assert example in blocks, "docs/testing.md must show tests/integration/test_downstream_example.py verbatim"


def test_docs_testing_md_lists_the_tests_that_run_on_nats_too() -> None:
    doc = (ROOT / "docs" / "testing.md").read_text()
    listed = set(re.findall(r"^\| `(test_\w+\.py::test_\w+)` \|", doc, flags=re.MULTILINE))
    marked = set()
    for module in (ROOT / "tests" / "integration").glob("test_*.py"):
        text = module.read_text()
        whole = "pytestmark = pytest.mark.every_broker" in text  # a module of one test (test_smoke.py)
        names = re.findall(r"^async def (test_\w+)", text, flags=re.MULTILINE) if whole else []
        names += re.findall(r"^@pytest\.mark\.every_broker\b.*\n(?:@.*\n)*async def (test_\w+)", text, re.MULTILINE)
        marked |= {f"{module.name}::{name}" for name in names}
    assert listed == marked, "the table in docs/testing.md names the every_broker tests, and only them"
