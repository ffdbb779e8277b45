"""The orphan scan and the record store's refusal of records it cannot trust."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from node_agent.agent.processes import ProcessRegistry
from node_agent.errors import StoreCorrupt
from node_agent.store.records import RecordStore


def test_orphan_scan_never_finds_the_agent_itself(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = str(tmp_path / "root")
    monkeypatch.setenv("AZ_BATCH_NODE_ROOT_DIR", root)  # as if the agent had been started from one of its tasks
    registry = ProcessRegistry(RecordStore(tmp_path / "state"), root)
    assert os.getpid() not in registry._of_this_node()


@pytest.mark.parametrize("content", [b"[1]", b"null", b"{bad"])
def test_a_record_that_is_not_a_json_object_is_store_corrupt(tmp_path: Path, content: bytes) -> None:
    store = RecordStore(tmp_path)
    (tmp_path / "jobs" / "j1").mkdir(parents=True)
    (tmp_path / "jobs" / "j1" / "job.json").write_bytes(content)
    with pytest.raises(StoreCorrupt, match="job.json is unreadable"):
        store.load(("jobs", "j1", "job"))


@pytest.mark.parametrize("content", [b"", b'{"pid": 12'])
def test_a_process_record_torn_by_a_power_loss_is_skipped_not_fatal(tmp_path: Path, content: bytes) -> None:
    store = RecordStore(tmp_path)
    (tmp_path / "processes" / "j1").mkdir(parents=True)
    (tmp_path / "processes" / "j1" / "t1.json").write_bytes(content)  # written without an fsync
    registry = ProcessRegistry(store, str(tmp_path / "root"))
    assert registry._recorded() == set()


async def test_a_recorded_process_is_found_again(tmp_path: Path) -> None:
    store = RecordStore(tmp_path)
    registry = ProcessRegistry(store, str(tmp_path / "root"))
    await registry.track("j1", "t1").started(os.getpid())
    assert registry._recorded() == {os.getpid()}
    await registry.track("j1", "t1").ended()
    assert registry._recorded() == set()
