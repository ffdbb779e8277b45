"""The fork server: ``python -m node_agent.runner.forkserver FD`` forks the per-task supervisors (runner/shim.py).

A fresh interpreter per task (about 15 MB and tens of ms of CPU) made the supervisor the price of every task.
The agent starts this process once (``runner/forkclient.py``: its own session, the shim's small environment)
and keeps one end of an AF_UNIX ``SOCK_SEQPACKET`` socketpair; the server holds the other end as ``FD``. It
imports only what a shim needs (standard library, psutil, ``runner/shim.py`` and what that imports), so each
fork is a shim already warm.

One request is one message: the supervisor folder's path, with two file descriptors (the pipe the shim says
``started`` on, becoming its stdout, and its log file, becoming its stderr). The shim that takes it was forked
before the request came, while the server had nothing to do (a *spare*, named ``node-shim-spare`` until it
gets its folder): on this kind of machine a fork of a Python process and its first steps cost milliseconds,
and they are then off the task's way. The spare starts a session of its own, closes every fd of the server's
but its channel, resets the signal dispositions a fresh shim has and waits; the server passes it the request
over that channel, and the spare takes the fds as stdout and stderr, runs ``Supervisor(folder).run()`` and
``os._exit``s. A spare that died waiting is replaced on the spot. The reply is one message: ``pid N`` with a
pidfd of the shim (opened at its fork while SIGCHLD was blocked, so it names the shim even if the shim has
already ended), or ``error MESSAGE`` (no fork succeeded). A SIGCHLD handler reaps the shims as they end (no
zombies); each shim sets SIGCHLD back to the default before it starts its task. At end-of-file (the agent
closed its end, or died) the server exits, its spare sees end-of-file on its channel and exits too, and its
shims run on, reparented: the next agent starts a server of its own, so a server never runs code older than
its agent. Single-threaded, so ``os.fork`` is safe.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from node_agent.runner.shim import Supervisor

MAX_MESSAGE = 4096
SHIM_NAME = b"node-agent-shim"  # the forked shim's process name (comm; at most 15 bytes)
SPARE_NAME = b"node-shim-spare"  # a shim forked ahead of its request, still waiting for it


@dataclass(slots=True)
class _Spare:
    """A shim forked ahead of its request, waiting on ``channel`` for its folder and fds."""

    pid: int
    pidfd: int
    channel: socket.socket

    def close(self) -> None:
        self.channel.close()  # a spare still waiting sees end-of-file and exits
        os.close(self.pidfd)


def serve(server: socket.socket) -> None:
    """Answer requests until end-of-file, with a spare shim forked while no request waits."""
    signal.signal(signal.SIGCHLD, _reap)
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)  # a write to a closed pipe fails with EPIPE instead
    spare: _Spare | None = None
    try:
        while True:
            if spare is None:
                spare = _fork_spare()
            try:
                message, fds, _, _ = socket.recv_fds(server, MAX_MESSAGE, 2, socket.MSG_CMSG_CLOEXEC)
            except OSError:
                return
            if not message:
                _close(fds)
                return
            pidfds: list[int] = []
            try:
                reply, pidfds, spare = _hand_off(message, fds, spare)
                if pidfds:
                    socket.send_fds(server, [reply], pidfds)
                else:
                    server.send(reply)
            except OSError:  # the agent is gone
                return
            finally:
                _close(fds + pidfds)
    finally:
        if spare is not None:
            spare.close()


def _hand_off(message: bytes, fds: list[int], spare: _Spare | None) -> tuple[bytes, list[int], _Spare | None]:
    """Give the request to the spare (a new one if it died or there was none); the reply, the pidfds to send
    with it, and the spare left (None: the next one is forked before the next request is read)."""
    if len(fds) != 2:
        return f"error expected 2 file descriptors, got {len(fds)}".encode(), [], spare
    for _ in range(2):
        if spare is None and (spare := _fork_spare()) is None:
            break
        try:
            socket.send_fds(spare.channel, [message], fds)
        except OSError:  # it died waiting (killed): fork another
            spare.close()
            spare = None
            continue
        spare.channel.close()
        return f"pid {spare.pid}".encode(), [spare.pidfd], None
    return b"error fork failed: no supervisor could be started", [], spare


def _fork_spare() -> _Spare | None:
    """Fork a shim that waits for its request; None if the fork failed."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})  # not reaped before its pidfd is open
    try:
        pid = os.fork()
        if pid == 0:
            _become_shim(theirs)
        return _Spare(pid, os.pidfd_open(pid), ours)
    except OSError:
        ours.close()
        return None
    finally:
        theirs.close()
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGCHLD})


def _reap(signum: int, frame: object) -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _become_shim(channel: socket.socket) -> NoReturn:
    """In the forked child: set up as ``subprocess.Popen(..., start_new_session=True)`` set up the shim's own
    interpreter before, wait for a folder and its two fds, run the supervisor, and never return to the server's
    loop. Whatever else the server had open (its socket, a request's fds) is closed first: a spare holding the
    server's socket would keep the agent from seeing the server die, and one holding a task's pipe would keep
    that task's agent from seeing the launch fail."""
    code = 1
    try:
        _close_all_but(channel.fileno())
        os.setsid()
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # the shim waits for its task
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGCHLD})
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        _name(SPARE_NAME)
        message, fds, _, _ = socket.recv_fds(channel, MAX_MESSAGE, 2, socket.MSG_CMSG_CLOEXEC)
        channel.close()
        if len(fds) != 2:  # end-of-file: the server is gone, and nothing was asked of this spare
            os._exit(0)
        _name(SHIM_NAME)
        stdout, log = fds
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.dup2(stdout, 1)
        os.dup2(log, 2)
        _close([devnull, stdout, log])
        folder = Path(os.fsdecode(message))
        os.chdir(folder)
        Supervisor(folder).run()
        code = 0
    except BaseException:
        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(code)


def _name(name: bytes) -> None:
    """What ``ps`` and psutil's name() show (the command line stays the server's)."""
    try:
        with open("/proc/self/comm", "wb") as comm:
            comm.write(name)
    except OSError:
        pass


def _close_all_but(keep: int) -> None:
    """Close every fd above stderr but ``keep``, as listed in /proc/self/fd (as subprocess does: a loop up to the
    fd limit could be a billion calls where the limit is high and close_range(2) is missing)."""
    _close([fd for fd in map(int, os.listdir("/proc/self/fd")) if fd > 2 and fd != keep])


def _close(fds: list[int]) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


def main() -> None:
    serve(socket.socket(fileno=int(sys.argv[1])))


if __name__ == "__main__":
    main()
