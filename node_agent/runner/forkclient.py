"""The agent's end of the fork server (runner/forkserver.py): start it, ask it for shims, close it.

The server is started by ``start()`` or the first request, and again on the next request after it died
(logged). Requests go one at a time over a non-blocking socket on the event loop; a request once sent is
always answered before the next one, even when its caller is cancelled, so requests and replies never get out
of step.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from pathlib import Path

import structlog

from node_agent.runner.readiness import readable, writable

log = structlog.get_logger(__name__)
PACKAGE_PARENT = str(Path(__file__).resolve().parents[2])  # so the server imports this very node_agent
CLOSE_WAIT_S = 5.0


class ForkServer:
    """One fork server for this agent; ``node_root`` marks its shims as this node's for the orphan scan."""

    def __init__(self, node_root: Path | str | None = None) -> None:
        # Its own small environment (the task's is in spec.json): a task's PYTHONHOME or LD_PRELOAD cannot
        # break the supervisors; AZ_BATCH_NODE_ROOT_DIR marks them as this node's (agent/processes.py).
        self.env = {"PATH": os.defpath, "PYTHONPATH": PACKAGE_PARENT}
        if node_root is not None:
            self.env["AZ_BATCH_NODE_ROOT_DIR"] = str(node_root)
        self.process: subprocess.Popen[bytes] | None = None
        self._socket: socket.socket | None = None
        self._lock = asyncio.Lock()
        self._closed = False

    async def start(self) -> None:
        """Start the server now rather than at the first spawn (whose task would wait for its start-up)."""
        async with self._lock:
            if not self._closed:
                await self._server()

    async def spawn(self, folder: Path, stdout: int, log_fd: int) -> tuple[int, int]:
        """Fork a shim for ``folder`` with these fds as its stdout and stderr; its pid and a pidfd of it (the
        caller's to close). ``stdout`` and ``log_fd`` are closed here once sent. Raises OSError when no shim
        could be started."""
        request = asyncio.ensure_future(self._request(folder, [stdout, log_fd]))
        try:
            return await asyncio.shield(request)  # a cancelled caller leaves the exchange to finish
        except asyncio.CancelledError:
            request.add_done_callback(_unclaimed)
            raise

    async def _request(self, folder: Path, fds: list[int]) -> tuple[int, int]:
        try:
            async with self._lock:
                if self._closed:
                    raise OSError("the fork server is closed: the agent is stopping")
                server = await self._server()
                message = os.fsencode(folder)
                try:
                    await _send(server, message, fds)
                except OSError as exc:  # nothing was sent: a new server may take it
                    log.warning("forkserver.lost", error=str(exc), action="starting a new one")
                    self._drop()
                    server = await self._server()
                    await _send(server, message, fds)
                reply, pidfds = await self._reply(server)
        finally:
            for fd in fds:
                os.close(fd)
        kind, _, text = reply.decode(errors="replace").partition(" ")
        if kind != "pid" or len(pidfds) != 1:
            for fd in pidfds:
                os.close(fd)
            raise OSError(f"the fork server could not start the supervisor: {text}")
        return int(text), pidfds[0]

    async def _reply(self, server: socket.socket) -> tuple[bytes, list[int]]:
        try:
            reply, pidfds = await _receive(server)
        except OSError:
            reply, pidfds = b"", []
        if not reply:
            self._drop()
            raise OSError("the fork server ended before it answered")
        return reply, pidfds

    async def _server(self) -> socket.socket:
        if self.process is not None and self.process.poll() is not None:
            log.warning("forkserver.lost", returncode=self.process.returncode, action="starting a new one")
            self._drop()
        if self._socket is None:
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            try:
                self.process = await asyncio.to_thread(self._start, theirs.fileno())
            except BaseException:
                ours.close()
                raise
            finally:
                theirs.close()
            ours.setblocking(False)
            self._socket = ours
            log.info("forkserver.started", pid=self.process.pid)
        return self._socket

    def _start(self, fd: int) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, "-m", "node_agent.runner.forkserver", str(fd)],
            env=self.env,
            pass_fds=(fd,),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            cwd="/",
            start_new_session=True,  # outside the agent's process group: a signal to the agent's group spares it
        )

    def _drop(self) -> None:
        """Forget the server: its socket closed (it exits at end-of-file if it still runs)."""
        if self._socket is not None:
            self._socket.close()
            self._socket = None
        if self.process is not None:
            self.process.poll()  # reaped if it is gone
            self.process = None

    async def close(self) -> None:
        """End the server (its shims run on) and wait for it."""
        async with self._lock:
            self._closed = True
            process = self.process
            self._drop()
        if process is not None:
            await asyncio.to_thread(_wait_or_kill, process)


async def _send(server: socket.socket, message: bytes, fds: list[int]) -> None:
    while True:
        try:
            socket.send_fds(server, [message], fds, socket.MSG_NOSIGNAL)
            return
        except BlockingIOError:
            await writable(server.fileno())


async def _receive(server: socket.socket) -> tuple[bytes, list[int]]:
    while True:
        try:
            message, fds, _, _ = socket.recv_fds(server, 4096, 1, socket.MSG_CMSG_CLOEXEC)
            return message, fds
        except BlockingIOError:
            await readable(server.fileno())


def _unclaimed(request: asyncio.Future[tuple[int, int]]) -> None:
    """A request whose caller was cancelled: its error is seen here, its pidfd closed (the caller cleans up
    through the shim's pipe and folder)."""
    if not request.cancelled() and request.exception() is None:
        os.close(request.result()[1])


def _wait_or_kill(process: subprocess.Popen[bytes]) -> None:
    try:
        process.wait(CLOSE_WAIT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
