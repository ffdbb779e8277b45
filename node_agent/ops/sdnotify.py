"""The systemd notify protocol (sd_notify(3)): READY, STATUS, STOPPING and WATCHDOG datagrams.

A dozen lines of our own rather than a library: ``sdnotify`` (pure Python) has had no release since 2017, and
``systemd-python`` / ``cysystemd`` link against libsystemd, which containers and non-systemd hosts lack. The
protocol is one datagram of ``KEY=value`` lines to the AF_UNIX socket named by ``NOTIFY_SOCKET``.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Callable


def notify(*lines: str) -> bool:
    """Send one datagram (``"READY=1"``, ``"STATUS=..."``); a no-op returning False outside systemd.

    Never blocks: a full receive queue drops the message, which systemd treats as a missed notification."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address or not lines:
        return False
    if address.startswith("@"):  # an abstract socket name
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        sock.setblocking(False)
        try:
            sock.sendto("\n".join(lines).encode(), address)
        except OSError:
            return False
    return True


def watchdog_interval_s() -> float | None:
    """Half of ``WATCHDOG_USEC`` (as sd_watchdog_enabled(3) advises), or None when no watchdog is set for us."""
    usec, pid = os.environ.get("WATCHDOG_USEC"), os.environ.get("WATCHDOG_PID")
    if not usec or not usec.isdigit() or int(usec) == 0:
        return None
    if pid and pid.isdigit() and int(pid) != os.getpid():
        return None
    return int(usec) / 2_000_000


async def keep_alive(interval_s: float, stopping: asyncio.Event, status: Callable[[], str]) -> None:
    """WATCHDOG=1 (with the current STATUS) every ``interval_s`` from the event loop, until ``stopping``.

    A loop blocked by a bug stops the pings, and systemd restarts the agent after WatchdogSec."""
    while not stopping.is_set():
        notify("WATCHDOG=1", f"STATUS={status()}")
        try:
            async with asyncio.timeout(interval_s):
                await stopping.wait()
        except TimeoutError:
            pass
