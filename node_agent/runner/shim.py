"""The per-task supervisor process: ``Supervisor(DIR).run()`` owns one task process.

It outlives the agent (its own session, not the agent's child once the agent is gone): it starts the
command that ``DIR/spec.json`` describes (after recording itself in ``DIR/shim.json``) as the task's user
(``uid``, ``gid``, no supplementary groups, ``umask``: the same switch and output-file rules as
``runner/process.py``, from ``runner/outputs.py``), while the shim itself keeps the agent's identity, so that
it can write in ``DIR`` (inside the agent's state directory, which tasks cannot reach); records the child in
``DIR/started.json``, kills the child's
whole tree when the wall-clock deadline (absolute, so a new agent keeps the original start) passes or on
SIGTERM, and writes ``DIR/status.json`` (``exitCode``, ``timedOut``, ``killed``, or ``launchError``)
atomically before it exits. On its stdout, a pipe the agent reads, it says ``started`` once started.json is
written and then the status, one JSON line, once status.json is: the agent that started it learns the result
without waiting for the shim's exit or reading the file; an agent that replaces it reads the file
([ADR 0011](../../docs/adr/0011-task-supervisor.md)). Each shim is a fork of the agent's fork server
(``runner/forkserver.py``); ``python -m node_agent.runner.shim DIR`` runs one by hand. Standard library and
psutil only: the fork server stays small.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil

from node_agent.runner.outputs import identity_keywords, open_outputs
from node_agent.runner.tree import kill_tree

SPEC, SHIM, STARTED, STATUS = "spec.json", "shim.json", "started.json", "status.json"
FENCED = {"fenced": True}  # in shim.json instead of a shim's claim: the recovery got there first, nothing may start
MAX_WAIT_S = 86400.0


def write_consistent(path: Path, document: dict[str, Any]) -> None:
    """Write, then rename over ``path``: a reader sees the whole file or none, also after the agent crashed.

    No fsync, unlike the durable store (``store/records.py``): these files are only ever read by an agent of
    the same boot (``spec.json`` carries the boot id). A crash of the agent or of the shim leaves them in the
    page cache, which the next agent reads; a power loss ends the tasks and changes the boot id, so nothing
    would read what an fsync had kept."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(json.dumps(document).encode())
    os.replace(tmp, path)


def claim(path: Path, document: dict[str, Any]) -> bool:
    """Create ``path`` with ``document``, whole, unless it exists: False if someone else created it first.

    The shim claims its folder this way before it starts anything (``shim.json``), and a recovering agent fences
    a folder nobody has claimed (``FENCED``): whichever comes first wins, so a shim forked just before its agent
    died either is found (and adopted) or never starts its command (ADR 0011). A hard link is atomic and
    refuses an existing name; the file is complete before it has its name."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(json.dumps(document).encode())
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    finally:
        os.unlink(tmp)


class Supervisor:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.spec: dict[str, Any] = json.loads((folder / SPEC).read_text())
        self.child: subprocess.Popen[bytes] | None = None
        self.killed = False

    def on_term(self, signum: int, frame: object) -> None:
        self.killed = True
        if self.child is not None:
            kill_tree(self.child.pid)

    def launch(self) -> subprocess.Popen[bytes] | None:
        spec = self.spec
        uid, gid, umask = spec.get("uid"), spec.get("gid"), spec.get("umask")
        try:
            out, err = open_outputs(spec["stdout"], spec["stderr"], uid, gid)
        except OSError as exc:
            self.finish({"launchError": "CommandLaunchFailed", "message": f"cannot open the task's output file: {exc}"})
            return None
        try:
            child: subprocess.Popen[bytes] = subprocess.Popen(  # type: ignore[call-overload]
                spec["argv"],
                cwd=spec["cwd"],
                env=spec["env"],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,  # the child leads its own group: its whole tree can be killed as one
                **identity_keywords(uid, gid, umask),  # the task's user; the shim stays the agent's
            )
            return child
        except FileNotFoundError as exc:
            message = f"program {spec['argv'][0]!r} was not found: {exc}"
            self.finish({"launchError": "CommandProgramNotFound", "message": message})
        except PermissionError as exc:
            message = f"program {spec['argv'][0]!r} could not start as its user: {exc}"
            self.finish({"launchError": "CommandLaunchFailed", "message": message})
        except OSError as exc:
            message = f"program {spec['argv'][0]!r} could not start: {exc}"
            self.finish({"launchError": "CommandLaunchFailed", "message": message})
        finally:
            os.close(out)
            os.close(err)
        return None

    def run(self) -> None:
        signal.signal(signal.SIGTERM, self.on_term)
        # Before the child exists: whoever finds this shim alive knows it owns (or will own) the task, so a new
        # agent adopts it instead of killing a task that may already have done part of its work. A folder a new
        # agent fenced first is left alone: that agent counts the task as never started and may start it again.
        me = {"shimPid": os.getpid(), "shimCreateTime": psutil.Process().create_time()}
        if not claim(self.folder / SHIM, me):
            print("the folder was fenced by a recovering agent: the task is not started", file=sys.stderr)
            return
        child = self.launch()
        if child is None:
            return
        self.child = child
        write_consistent(
            self.folder / STARTED,
            {"pid": child.pid, "createTime": psutil.Process(child.pid).create_time()},
        )
        _tell(b"started\n")
        if self.killed:  # SIGTERM came before the child existed
            kill_tree(child.pid)
        timed_out = not self.wait_until_deadline(child)
        if timed_out:
            kill_tree(child.pid)
        code = child.wait()
        self.finish({"exitCode": 128 - code if code < 0 else code, "timedOut": timed_out, "killed": self.killed})

    def wait_until_deadline(self, child: subprocess.Popen[bytes]) -> bool:
        """Whether the child exited (or was killed on SIGTERM) before the deadline; a pidfd, no polling."""
        deadline = self.spec.get("deadline")
        pidfd = os.pidfd_open(child.pid)
        try:
            while True:
                # At most a day per wait: select() cannot take a timeout past time_t (a limit of P99999999D).
                left = None if deadline is None else min(max(0.0, deadline - time.time()), MAX_WAIT_S)
                readable, _, _ = select.select([pidfd], [], [], left)  # a signal resumes the select (PEP 475)
                if readable or self.killed:
                    return True
                if deadline is not None and time.time() >= deadline:
                    return False
        finally:
            os.close(pidfd)

    def finish(self, status: dict[str, Any]) -> None:
        """status.json, then the same document as the last line on stdout."""
        document = {**status, "endTime": time.time()}
        write_consistent(self.folder / STATUS, document)
        _tell(json.dumps(document).encode() + b"\n")


def _tell(line: bytes) -> None:
    """A line on stdout, the pipe the agent that started this shim reads. At most PIPE_BUF bytes in one write,
    and at most two lines ever, so it is whole and never blocks (a pipe holds 64 KiB), whether the agent reads
    or not; a longer status (a launch error naming a huge path) is left to the file. An agent that is gone (its
    read end closed: EPIPE, as SIGPIPE is ignored) costs nothing."""
    if len(line) > select.PIPE_BUF:
        return
    try:
        os.write(sys.stdout.fileno(), line)
    except OSError:
        pass


def main() -> None:
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)  # writes to a closed pipe fail with EPIPE instead
    Supervisor(Path(sys.argv[1])).run()


if __name__ == "__main__":
    main()
