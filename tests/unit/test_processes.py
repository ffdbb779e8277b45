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
