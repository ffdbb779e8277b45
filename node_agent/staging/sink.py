"""Where a download's bytes go: one or more temporary files, renamed into place only once complete.

Blocking code, run in worker threads. On a cache miss the same bytes go to the cache's file and to the task's
file at once, so the task's copy costs no second read. Only the first output (the durable one) is fsynced: the
task's copy is remade from the cache or the network if the node crashes before the task ran.
"""

from __future__ import annotations

import errno
import os
import secrets
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from node_agent.errors import StagingFailed

DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


@dataclass(frozen=True, slots=True)
class FileAttrs:
    """Mode and owner given to a file through its descriptor, before it is renamed into place."""

    mode: int = 0o600
    owner: tuple[int, int] | None = None


PRIVATE = FileAttrs()  # the cache's own files: the agent's user only


@dataclass(frozen=True, slots=True)
class Output:
    dest: Path
    attrs: FileAttrs = PRIVATE


def write_failure(exc: OSError, what: str) -> StagingFailed:
    if exc.errno in DISK_FULL_ERRNOS:
        return StagingFailed("DiskFull", f"the node's disk is full while writing {what}", category="servererror")
    reason = exc.strerror or str(exc)
    return StagingFailed("ResourceFileWriteFailed", f"cannot write {what}: {reason}", category="servererror")


def apply_attrs(fd: int, attrs: FileAttrs) -> None:
    """Through the descriptor, so a path swapped for a symlink can never redirect a chmod or chown."""
    if attrs.owner is not None:
        os.fchown(fd, *attrs.owner)
    os.fchmod(fd, attrs.mode)


@dataclass(slots=True)
class Sink:
    outputs: Sequence[Output]
    shown: str  # names the download in messages
    _open: list[tuple[int, Path, Path]] = field(default_factory=list)  # fd, temporary file, destination
    # open() and close() may run in two threads at once when the download is cancelled while files are created.
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _closed: bool = False

    def open(self, length: int | None) -> None:
        """Create every temporary file (refusing at once when a known length cannot fit)."""
        with self._lock:
            if self._closed:
                return
            try:
                for output in self.outputs:
                    self._open_one(output, length)
            except BaseException:
                self._close_locked(complete=False)
                raise

    def _open_one(self, output: Output, length: int | None) -> None:
        if length is not None:
            stats = os.statvfs(output.dest.parent)
            if stats.f_bavail * stats.f_frsize < length:
                raise StagingFailed(
                    "DiskFull", f"the node's disk has no room for {self.shown} ({length} bytes)", category="servererror"
                )
        temp = output.dest.with_name(f".{output.dest.name}.part-{secrets.token_hex(4)}")
        try:
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise write_failure(exc, f"a temporary file for {self.shown}") from exc
        self._open.append((fd, temp, output.dest))
        try:
            apply_attrs(fd, output.attrs)
        except OSError as exc:
            raise write_failure(exc, self.shown) from exc

    def write(self, chunks: Sequence[bytes]) -> None:
        with self._lock:  # close() waits for a write still running after its download was cancelled
            for fd, _, _ in self._open:
                self._write_all(fd, chunks)

    def _write_all(self, fd: int, chunks: Sequence[bytes]) -> None:
        views = [memoryview(chunk) for chunk in chunks if chunk]
        try:
            while views:
                written = os.writev(fd, views[:1024])  # IOV_MAX
                while views and written >= len(views[0]):
                    written -= len(views[0])
                    views.pop(0)
                if written:
                    views[0] = views[0][written:]
        except OSError as exc:
            raise write_failure(exc, self.shown) from exc

    def finish(self, rest: Sequence[bytes]) -> None:
        """Write the last chunks and make the first output durable."""
        self.write(rest)
        with self._lock:
            if self._open:
                try:
                    os.fsync(self._open[0][0])
                except OSError as exc:
                    raise write_failure(exc, self.shown) from exc

    def close(self, *, complete: bool) -> None:
        """Close every file, then rename each into place (complete) or remove them all."""
        with self._lock:
            self._closed = True
            self._close_locked(complete=complete)

    def _close_locked(self, *, complete: bool) -> None:
        opened, self._open = self._open, []
        for fd, _, _ in opened:
            os.close(fd)
        failure: StagingFailed | None = None
        for _, temp, dest in opened:
            if complete and failure is None:
                try:
                    os.rename(temp, dest)
                    continue
                except OSError as exc:
                    failure = write_failure(exc, self.shown)
            temp.unlink(missing_ok=True)
        if failure is not None:
            raise failure
