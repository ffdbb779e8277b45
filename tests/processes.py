"""Waiting on task processes without sleeping: a FIFO a task writes into, and pidfds that signal an exit."""

from __future__ import annotations

import asyncio
import os
import select
from pathlib import Path

TIMEOUT_S = 20.0


class Fifo:
    """A named pipe a task writes one line into: the test waits on it instead of sleeping.

    Opened for reading (non-blocking) before the task starts, so the task's write never blocks.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        os.mkfifo(path)
        os.chmod(path, 0o666)  # the task writing into it runs as a task user, not as the test's user
        self.fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)

    async def read_line(self, timeout_s: float = TIMEOUT_S) -> str:
        loop = asyncio.get_running_loop()
        data = b""
        async with asyncio.timeout(timeout_s):
            while b"\n" not in data:
                ready = loop.create_future()
                loop.add_reader(self.fd, _resolve, ready)
                try:
                    await ready
                finally:
                    loop.remove_reader(self.fd)
                try:
                    chunk = os.read(self.fd, 4096)
                except BlockingIOError:
                    continue
                if not chunk:
                    raise EOFError(f"{self.path} closed before a full line: {data!r}")
                data += chunk
        return data.decode().strip()

    async def read_pid(self, timeout_s: float = TIMEOUT_S) -> int:
        return int(await self.read_line(timeout_s))

    def pid_if_written(self) -> int | None:
        """The pid already written, without waiting (None if nothing is there yet)."""
        try:
            data = os.read(self.fd, 64)
        except BlockingIOError:
            return None
        return int(data) if data.strip() else None

    def close(self) -> None:
        os.close(self.fd)

    def __enter__(self) -> Fifo:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def open_pidfd(pid: int) -> int | None:
    """A pidfd for ``pid`` (None if it is already gone); it becomes readable when the process exits."""
    try:
        return os.pidfd_open(pid)
    except ProcessLookupError:
        return None


def has_exited(pidfd: int | None, timeout_s: float = TIMEOUT_S) -> bool:
    """Whether the process exited (a zombie nobody reaps counts as exited), waiting up to ``timeout_s``."""
    if pidfd is None:
        return True
    try:
        readable, _, _ = select.select([pidfd], [], [], timeout_s)
        return bool(readable)
    finally:
        os.close(pidfd)
