"""The fork server: ``python -m node_agent.runner.forkserver FD`` forks the per-task supervisors (runner/shim.py).

A fresh interpreter per task (about 15 MB and tens of ms of CPU) made the supervisor the price of every task.
The agent starts this process once (``runner/forkclient.py``: its own session, the shim's small environment)
and keeps one end of an AF_UNIX ``SOCK_SEQPACKET`` socketpair; the server holds the other end as ``FD``. It
imports only what a shim needs (standard library, psutil, ``runner/shim.py`` and what that imports), so each
fork is a shim already warm.

One request is one message: the supervisor folder's path, with two file descriptors (the pipe the shim says
``started`` on, becoming its stdout, and its log file, becoming its stderr). The server forks; the child
starts a session of its own, takes those fds as stdout and stderr, resets the signal dispositions a fresh shim
has, runs ``Supervisor(folder).run()`` and ``os._exit``s. The reply is one message: ``pid N`` with a pidfd of
the shim (opened while SIGCHLD is blocked, so it names the shim even if the shim has already ended), or
``error MESSAGE`` (the fork failed). A SIGCHLD handler reaps the shims as they end (no zombies); each shim sets
SIGCHLD back to the default before it starts its task. At end-of-file (the agent closed
its end, or died) the server exits and its shims run on, reparented: the next agent starts a server of its
own, so a server never runs code older than its agent. Single-threaded, so ``os.fork`` is safe.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import traceback
from pathlib import Path

from node_agent.runner.shim import Supervisor

MAX_MESSAGE = 4096
SHIM_NAME = b"node-agent-shim"  # the forked shim's process name (comm; at most 15 bytes)


def serve(server: socket.socket) -> None:
    """Answer requests until end-of-file."""
    signal.signal(signal.SIGCHLD, _reap)
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)  # a write to a closed pipe fails with EPIPE instead
    while True:
        try:
            message, fds, _, _ = socket.recv_fds(server, MAX_MESSAGE, 2, socket.MSG_CMSG_CLOEXEC)
        except OSError:
            return
        if not message:
            _close(fds)
            return
        pidfds: list[int] = []
        try:
            reply, pidfds = _fork(message, fds, server)
            if pidfds:
                socket.send_fds(server, [reply], pidfds)
            else:
                server.send(reply)
        except OSError:  # the agent is gone
            return
        finally:
            _close(fds + pidfds)


def _fork(message: bytes, fds: list[int], server: socket.socket) -> tuple[bytes, list[int]]:
    if len(fds) != 2:
        return f"error expected 2 file descriptors, got {len(fds)}".encode(), []
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})  # not reaped before its pidfd is open
    try:
        pid = os.fork()
        if pid == 0:
            _become_shim(Path(os.fsdecode(message)), fds[0], fds[1], server)
        return f"pid {pid}".encode(), [os.pidfd_open(pid)]
    except OSError as exc:
        return f"error fork failed: {exc}".encode(), []
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGCHLD})


def _reap(signum: int, frame: object) -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _become_shim(folder: Path, stdout: int, log: int, server: socket.socket) -> None:
    """In the forked child: set up as ``subprocess.Popen(..., start_new_session=True)`` set up the shim's own
    interpreter before, run the supervisor, and never return to the server's loop."""
    code = 1
    try:
        server.close()  # only the server holds it: the agent sees end-of-file when the server dies
        os.setsid()
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # the shim waits for its task
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGCHLD})
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.dup2(stdout, 1)
        os.dup2(log, 2)
        _close([devnull, stdout, log])
        os.chdir(folder)
        _name(SHIM_NAME)
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
