"""Group commit of record files: the writes that arrive while batches sync share the next batch's fsyncs.

A batch is written in a worker thread, in four steps:

1. every file is written to ``.<name>.tmp`` beside its record;
2. every temporary file is fsynced. Steps 1 and 2 run for all files at once, from a small pool of
   threads: a journal commit (ext4's jbd2, XFS's log force) that starts while other fsyncs wait serves
   them all, so a batch costs a few commits, not one per file (32 files: about 16 ms against 96 ms one
   after another, on the disk of ``docs/performance.md``); and creating a file can wait for a commit
   another process started, which threads wait for together;
3. every temporary file is renamed over its record (``os.replace``);
4. every distinct directory that received a rename (or a new directory) is fsynced once.

Why this order, and not rename first, then fsync the files: a rename can reach the journal before the
data of the file it names. XFS then shows a zero-length file after a power loss, and ext4 does the same
for a file that replaced nothing (its ``auto_da_alloc`` only covers renames over an existing file). With
the data synced before any rename, the name points at the new, complete file or still at the old one,
never at a torn one, whichever of the renames the journal kept. The directory fsync makes the renames
themselves durable; one per directory serves every rename into it. Only then is any write of the batch
acknowledged.

A directory made for a record is fsynced through its parent too (else a power loss could drop the folder
with its records). Directories known to exist are not made again; a write that finds its folder gone (a
job's records removed meanwhile) makes it and tries once more.

``write_files`` without ``durable`` does steps 1 and 3 only: the record is still replaced atomically for
any process that reads it while the machine runs, but a power loss may leave it empty or lose it. A
directory it makes is still fsynced through its parent (once), since a durable write may later use it.
"""

from __future__ import annotations

import asyncio
import functools
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")

MAX_IN_FLIGHT = 4  # batches syncing at once (see the class docstring of GroupCommitter)
MAX_BATCH = 64  # files open at once in a batch (the rest wait for the next one)

# One pool for every store of the process; its threads start with the first batch of two or more files.
_pool = ThreadPoolExecutor(8, thread_name_prefix="record-write")


@dataclass(frozen=True, slots=True)
class Write:
    path: Path
    data: bytes


@dataclass(slots=True)
class _File:
    path: Path
    data: bytes
    tmp: Path
    fd: int = -1
    error: OSError | None = None


class KnownDirs:
    """Directories this store made or found, so each is made once (a removed tree is forgotten)."""

    def __init__(self) -> None:
        self._known: set[Path] = set()

    def ensure(self, folder: Path, made: set[Path]) -> None:
        """Make ``folder`` and its missing parents; add each made directory's parent to ``made``."""
        if folder in self._known:
            return
        missing = []
        while not folder.is_dir():
            missing.append(folder)
            folder = folder.parent
        for path in reversed(missing):
            try:
                path.mkdir(mode=0o700)
            except FileExistsError:  # made meanwhile (another store, a put_unsynced of another thread)
                if not path.is_dir():
                    raise NotADirectoryError(f"{path} is not a directory") from None
                continue
            made.add(path.parent)
        self._known.update(missing)
        self._known.add(folder)

    def forget_below(self, top: Path) -> None:
        """Forget ``top`` and every directory below it (called once they are removed)."""
        self._known = {path for path in set(self._known) if not path.is_relative_to(top)}

    def forget(self, folder: Path) -> None:
        self._known.discard(folder)


def _open_tmp(item: _File, dirs: KnownDirs, made: set[Path]) -> None:
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC
    dirs.ensure(item.path.parent, made)
    try:
        item.fd = os.open(item.tmp, flags, 0o600)
    except FileNotFoundError:  # the folder was removed after we made it: make it again
        dirs.forget(item.path.parent)
        dirs.ensure(item.path.parent, made)
        item.fd = os.open(item.tmp, flags, 0o600)


def _write(item: _File, dirs: KnownDirs, made: set[Path]) -> None:
    try:
        _open_tmp(item, dirs, made)
        view = memoryview(item.data)
        while view:
            view = view[os.write(item.fd, view) :]
    except OSError as exc:
        item.error = exc


def _write_synced(item: _File, dirs: KnownDirs, made: set[Path]) -> None:
    """Write one temporary file and fsync it; the file is closed whatever happens."""
    try:
        _write(item, dirs, made)
        if item.error is None:
            os.fsync(item.fd)
    except OSError as exc:
        item.error = exc
    finally:
        _close(item)


def _close(item: _File) -> None:
    if item.fd >= 0:
        os.close(item.fd)
        item.fd = -1


def _rename(item: _File) -> None:
    if item.error is not None:
        try:
            item.tmp.unlink(missing_ok=True)
        except OSError:
            pass
        return
    try:
        os.replace(item.tmp, item.path)
    except OSError as exc:
        item.error = exc


def _sync_dir(folder: Path) -> OSError | None:
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        return exc
    return None


def _all_at_once(func: Callable[[T], R], items: Sequence[T]) -> list[R]:
    """``[func(item) for item in items]``, all at once: the first in this thread, each other one in the pool.

    This thread does one itself rather than wait idle: a hand-off to a pool thread (a wake-up, the GIL taken
    and given back, the result passed back) costs this process more CPU than the call it carries."""
    if not items:
        return []
    others = [_pool.submit(func, item) for item in items[1:]]
    return [func(items[0]), *(job.result() for job in others)]


def _sync_dirs(files: list[_File], folders: list[Path]) -> None:
    """Fsync each folder once; a failure is the error of every record renamed into it."""
    errors = _all_at_once(_sync_dir, folders)
    failed = {folder: error for folder, error in zip(folders, errors, strict=True) if error is not None}
    for item in files:
        if item.error is None and item.path.parent in failed:
            item.error = failed[item.path.parent]


def write_files(writes: Sequence[Write], dirs: KnownDirs, *, durable: bool) -> list[OSError | None]:
    """Apply ``writes`` (blocking; in a worker thread) and return each one's error or None, in order.

    Two writes of one path in a batch: the later one wins and both get its result.
    """
    latest = {write.path: write.data for write in writes}
    files = [_File(path, data, path.with_name(f".{path.name}.tmp")) for path, data in latest.items()]
    made: set[Path] = set()
    if not durable:
        for item in files:
            _write(item, dirs, made)
            _close(item)
    else:
        _all_at_once(functools.partial(_write_synced, dirs=dirs, made=made), files)
    for item in files:
        _rename(item)
    folders = set(made)  # a directory the store made is made durable, also by an unsynced write (once)
    if durable:
        folders |= {item.path.parent for item in files if item.error is None}
    _sync_dirs(files, list(folders))
    result = {item.path: item.error for item in files}
    return [result[write.path] for write in writes]


class GroupCommitter:
    """Queues durable writes and writes them in batches, each in a worker thread; a write that arrives while
    ``MAX_IN_FLIGHT`` batches are syncing waits, with every other such write, for the next batch.

    Why up to four batches at once rather than one committer: the kernel already merges fsyncs that run
    concurrently into one journal commit, and a batch costs two commits one after the other (the files,
    then their directories). With a single committer every write waited for the batch before it as well
    as its own, and ``bench/store.py`` measured it at 0.4 to 0.7 times the throughput of one thread-pool
    job per write, with three times its latency; four batches in flight keep the disk as busy as that,
    while writes that arrive together still share their directory fsyncs (ratio 1.2 to 2.5 at 8 to 64
    writers). Per-key order does not need one committer: ``RecordStore`` lets the next write of a key in
    only once the previous one is durable. Driven by completion callbacks, so no task outlives the writes
    that are waited for."""

    def __init__(self, dirs: KnownDirs) -> None:
        self.dirs = dirs
        self._queue: list[tuple[Write, asyncio.Future[None]]] = []
        self._in_flight = 0

    async def commit(self, write: Write) -> None:
        """Return once ``write`` is durable; raise its OSError if it could not be made so."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        self._queue.append((write, future))
        if self._in_flight < MAX_IN_FLIGHT:
            self._start(loop)
        await future

    def _start(self, loop: asyncio.AbstractEventLoop) -> None:
        batch, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
        self._in_flight += 1
        writes = [write for write, _ in batch]
        job = loop.run_in_executor(None, functools.partial(write_files, writes, self.dirs, durable=True))
        job.add_done_callback(functools.partial(self._finished, loop, batch))

    def _finished(
        self,
        loop: asyncio.AbstractEventLoop,
        batch: list[tuple[Write, asyncio.Future[None]]],
        job: asyncio.Future[list[OSError | None]],
    ) -> None:
        self._in_flight -= 1
        if job.cancelled():  # the executor was shut down under us: nothing is known about these writes
            errors: list[BaseException | None] = [RuntimeError("the record store's writer was stopped")] * len(batch)
        elif (failure := job.exception()) is not None:
            errors = [failure] * len(batch)
        else:
            errors = list(job.result())
        for (_, future), error in zip(batch, errors, strict=True):
            if future.done():  # its caller was cancelled
                continue
            if error is None:
                future.set_result(None)
            else:
                future.set_exception(error)
        if self._queue and self._in_flight < MAX_IN_FLIGHT:
            self._start(loop)
