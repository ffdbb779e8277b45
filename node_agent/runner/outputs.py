"""Opening a task's stdout and stderr files safely, for ``run_process`` and for the shim alike.

Standard library only: the shim (runner/shim.py) imports it and must start fast.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path


def open_outputs(stdout: Path | str, stderr: Path | str, uid: int | None, gid: int | None) -> tuple[int, int]:
    """Both files opened for writing, emptied and (with ``uid`` and ``gid``) given to the task's user.

    O_NOFOLLOW: the task's user owns its directory and could leave a link to a file of the agent's in place.
    Truncated only once known to be a regular file of one link (not a hard link to someone else's file).
    Raises OSError, with nothing left open."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK
    fds: list[int] = []
    try:
        for path in (stdout, stderr):
            fds.append(os.open(path, flags, 0o640))
            info = os.fstat(fds[-1])
            if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
                raise OSError(errno.EPERM, "not a regular file of its own", str(path))
            os.ftruncate(fds[-1], 0)
            os.set_blocking(fds[-1], True)
            if uid is not None and gid is not None:
                os.fchown(fds[-1], uid, gid)  # the task's output belongs to the task's user
    except OSError:
        for fd in fds:
            os.close(fd)
        raise
    return fds[0], fds[1]


def identity_keywords(uid: int | None, gid: int | None, umask: int | None) -> dict[str, object]:
    """The ``subprocess`` keywords that switch the child to the task's user (uid, gid, no supplementary
    groups, umask); none when it runs as the agent's own user."""
    switch: dict[str, object] = {} if umask is None else {"umask": umask}
    if uid is not None:
        switch.update(user=uid, group=gid, extra_groups=[])  # [] drops supplementary groups
    return switch
