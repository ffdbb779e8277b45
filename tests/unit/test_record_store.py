"""RecordStore: per-key write order, group commit, directories made once, no memory kept per key once done."""

from __future__ import annotations

import asyncio
import os
import shutil
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from node_agent.store import commit
from node_agent.store.records import RecordStore


async def test_writes_to_one_key_apply_in_call_order_and_leave_no_lock_behind(tmp_path: Path) -> None:
    store = RecordStore(tmp_path)
    key = ("jobs", "j", "tasks", "t")
    await asyncio.gather(*(store.put(key, {"n": n}) for n in range(20)))
    assert store.load(key) == {"n": 19}
    await asyncio.gather(*(store.put(("jobs", "j", "tasks", f"t{n}"), {"n": n}) for n in range(50)))
    await store.delete(key)
    assert store.load(key) is None
    assert store._locks == {}  # one lock per key ever written was a leak of about 1 KB per task


def _path_of(store: RecordStore, key: tuple[str, ...]) -> Path:
    return store.root.joinpath(*key[:-1], key[-1] + ".json")


class _HeldBatches:
    """Wraps commit.write_files: records each durable batch, and holds every batch in its thread until
    ``release`` is set, so that the writes queued meanwhile must wait for a later batch. One batch syncs at
    a time unless ``in_flight`` says otherwise."""

    def __init__(
        self, monkeypatch: pytest.MonkeyPatch, fail: Callable[[Path], bool] = lambda path: False, in_flight: int = 1
    ) -> None:
        self.batches: list[list[Path]] = []
        self.documents: list[list[bytes]] = []
        self.entered = threading.Semaphore(0)
        self.release = threading.Event()
        real = commit.write_files

        def held(writes: list[commit.Write], dirs: commit.KnownDirs, *, durable: bool) -> list[OSError | None]:
            self.batches.append([write.path for write in writes])
            self.documents.append([write.data for write in writes])
            self.entered.release()
            self.release.wait(timeout=10)
            errors = real(writes, dirs, durable=durable)
            return [PermissionError(13, "refused") if fail(w.path) else e for w, e in zip(writes, errors, strict=True)]

        monkeypatch.setattr(commit, "write_files", held)
        monkeypatch.setattr(commit, "MAX_IN_FLIGHT", in_flight)

    async def wait_entered(self, batches: int = 1) -> None:
        for _ in range(batches):
            assert await asyncio.to_thread(self.entered.acquire, True, 10)


async def test_writes_arriving_during_a_sync_share_the_next_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    held = _HeldBatches(monkeypatch)
    store = RecordStore(tmp_path)
    first = asyncio.create_task(store.put(("jobs", "j", "tasks", "t0"), {"n": 0}))
    await held.wait_entered()
    rest = [asyncio.create_task(store.put(("jobs", "j", "tasks", f"t{n}"), {"n": n})) for n in range(1, 11)]
    await asyncio.sleep(0)  # one scheduling step: each put runs up to its wait for the batch
    assert len(store._committer._queue) == 10
    held.release.set()
    await asyncio.gather(first, *rest)  # every waiter of both batches is woken
    assert [len(batch) for batch in held.batches] == [1, 10]
    assert all(store.load(("jobs", "j", "tasks", f"t{n}")) == {"n": n} for n in range(11))
    assert not await asyncio.to_thread(lambda: list(tmp_path.rglob(".*.tmp")))


async def test_writes_to_one_key_keep_call_order_across_batches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    held = _HeldBatches(monkeypatch)
    store = RecordStore(tmp_path)
    key = ("jobs", "j", "tasks", "t")
    first = asyncio.create_task(store.put(key, {"n": 0}))
    await held.wait_entered()
    later = [asyncio.create_task(store.put(key, {"n": n})) for n in range(1, 6)]
    other = asyncio.create_task(store.put(("jobs", "j", "job"), {"v": 1}))
    await asyncio.sleep(0)  # one scheduling step: the first of them and ``other`` wait for the next batch
    held.release.set()
    await asyncio.gather(first, *later, other)
    assert store.load(key) == {"n": 5}
    path = _path_of(store, key)
    written = [
        data
        for paths, documents in zip(held.batches, held.documents, strict=True)
        for p, data in zip(paths, documents, strict=True)
        if p == path
    ]
    assert written == [f'{{"n":{n}}}'.encode() for n in range(6)]
    # one write of the key per batch: the next waits for the one before it to be durable
    assert all(batch.count(path) == 1 for batch in held.batches if path in batch)
    assert held.batches[1] == [_path_of(store, ("jobs", "j", "job"))]  # the key's next write waited for the first


async def test_an_error_reaches_its_callers_and_later_batches_still_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bad = ("jobs", "j", "tasks", "bad")
    held = _HeldBatches(monkeypatch, fail=lambda path: path.name == "bad.json")
    store = RecordStore(tmp_path)
    first = asyncio.create_task(store.put(("jobs", "j", "tasks", "a"), {"n": 1}))
    await held.wait_entered()
    failing = asyncio.create_task(store.put(bad, {"n": 2}))
    fine = asyncio.create_task(store.put(("jobs", "j", "tasks", "b"), {"n": 3}))
    held.release.set()
    await first
    with pytest.raises(PermissionError):
        await failing
    await fine
    await store.put(("jobs", "j", "tasks", "c"), {"n": 4})  # a batch after the failed one
    assert store.load(("jobs", "j", "tasks", "c")) == {"n": 4}
    assert store._locks == {}


async def test_a_write_error_fails_only_its_own_record(tmp_path: Path) -> None:
    store = RecordStore(tmp_path)
    (tmp_path / "jobs").mkdir()
    (tmp_path / "jobs" / "file").write_text("not a folder")
    results = await asyncio.gather(
        store.put(("jobs", "file", "x"), {"n": 1}), store.put(("jobs", "ok"), {"n": 2}), return_exceptions=True
    )
    assert isinstance(results[0], OSError)
    assert results[1] is None
    assert store.load(("jobs", "ok")) == {"n": 2}


def test_two_writes_of_one_path_in_a_batch_leave_the_later(tmp_path: Path) -> None:
    path = tmp_path / "a" / "r.json"
    writes = [commit.Write(path, b'{"n":1}'), commit.Write(path, b'{"n":2}')]
    assert commit.write_files(writes, commit.KnownDirs(), durable=True) == [None, None]
    assert path.read_bytes() == b'{"n":2}'


async def test_directories_are_made_once_and_again_after_delete_tree(tmp_path: Path) -> None:
    store = RecordStore(tmp_path)
    made: list[Path] = []
    real_mkdir = Path.mkdir

    def counting_mkdir(self: Path, *args: object, **kwargs: object) -> None:
        made.append(self)
        real_mkdir(self, *args, **kwargs)  # type: ignore[arg-type]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Path, "mkdir", counting_mkdir)
        for n in range(5):
            await store.put(("jobs", "j", "tasks", f"t{n}"), {"n": n})
        assert made == [tmp_path / "jobs", tmp_path / "jobs" / "j", tmp_path / "jobs" / "j" / "tasks"]
        await store.delete_tree(("jobs", "j"))
        made.clear()
        await store.put(("jobs", "j", "tasks", "t"), {"n": 1})
        assert made == [tmp_path / "jobs" / "j", tmp_path / "jobs" / "j" / "tasks"]
    shutil.rmtree(tmp_path / "jobs")  # removed behind the store's back: it makes the folder again
    await store.put(("jobs", "j", "tasks", "t"), {"n": 2})
    assert store.load(("jobs", "j", "tasks", "t")) == {"n": 2}


async def test_put_unsynced_replaces_the_record_without_fsync(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = RecordStore(tmp_path)
    key = ("processes", "j", "t")
    await store.put(key, {"pid": 1})
    synced: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(fd) or real_fsync(fd))
    await store.put_unsynced(key, {"pid": 2})
    assert store.load(key) == {"pid": 2}
    assert synced == []
    await store.put(key, {"pid": 3})
    assert len(synced) == 2  # the file, then its folder


async def test_a_long_queue_is_written_in_batches_of_at_most_max_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(commit, "MAX_BATCH", 3)
    held = _HeldBatches(monkeypatch)
    store = RecordStore(tmp_path)
    first = asyncio.create_task(store.put(("jobs", "j", "tasks", "t0"), {"n": 0}))
    await held.wait_entered()
    rest = [asyncio.create_task(store.put(("jobs", "j", "tasks", f"t{n}"), {"n": n})) for n in range(1, 8)]
    await asyncio.sleep(0)  # one scheduling step: each put runs up to its wait for the batch
    held.release.set()
    await asyncio.gather(first, *rest)
    assert [len(batch) for batch in held.batches] == [1, 3, 3, 1]


async def test_up_to_max_in_flight_batches_sync_at_once_then_writes_share_the_next(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    held = _HeldBatches(monkeypatch, in_flight=2)
    store = RecordStore(tmp_path)
    puts = [asyncio.create_task(store.put(("jobs", "j", "tasks", f"t{n}"), {"n": n})) for n in range(5)]
    await held.wait_entered(2)  # the first two did not wait for each other
    assert len(store._committer._queue) == 3
    held.release.set()
    await asyncio.gather(*puts)
    assert [len(batch) for batch in held.batches] == [1, 1, 3]
