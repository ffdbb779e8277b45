"""Giving a task directory to its task user before the process starts (blocking; call it in a thread)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from node_agent.errors import TaskFailure

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def prepare_task_dir(task_dir: Path, uid: int | None, gid: int | None) -> Path:
    """Create ``task_dir/wd`` and, for another user, make the whole tree theirs; returns the working dir.

    The tree may hold what an earlier attempt or staging put there, and a task may have planted links:
    nothing is followed (``O_NOFOLLOW``, ``lchown``), and a working directory that is not a real directory
    fails the attempt instead of being used.
    """
    working_dir = task_dir / "wd"
    is_new = _make_dir(task_dir)
    try:
        working_dir.mkdir(exist_ok=True)
    except FileExistsError:
        pass
    if not stat.S_ISDIR(os.lstat(working_dir).st_mode) or not stat.S_ISDIR(os.lstat(task_dir).st_mode):
        raise TaskFailure("CommandLaunchFailed", f"{working_dir} is not a directory (a link left by a task?)")
    if uid is not None and gid is not None:
        if is_new:  # made just now by this call: the two folders are the whole tree, nothing to walk
            for folder in (task_dir, working_dir):
                os.chown(folder, uid, gid, follow_symlinks=False)
        else:
            _chown_tree(task_dir, uid, gid)
        for folder in (task_dir, working_dir):
            os.chmod(folder, 0o750, follow_symlinks=False)  # other task users cannot even list it
    return working_dir


def _make_dir(folder: Path) -> bool:
    """Make ``folder`` and its missing parents; True if this call made it, so nothing but what the agent puts
    there can be in it yet (it belongs to the agent, not writable by a task user)."""
    try:
        folder.mkdir(parents=True)
    except FileExistsError:
        return False
    return True


def _chown_tree(top: Path, uid: int, gid: int) -> None:
    fd = os.open(top, _DIR_FLAGS)
    try:
        os.chown(fd, uid, gid)
        for _, dirs, files, dir_fd in os.fwalk(".", dir_fd=fd, follow_symlinks=False):
            for name in (*dirs, *files):
                os.chown(name, uid, gid, dir_fd=dir_fd, follow_symlinks=False)
    finally:
        os.close(fd)


def unreachable_ancestor(path: Path) -> Path | None:
    """The first existing directory on the way to ``path`` that other users cannot search (o+x), or None."""
    for folder in reversed([path.absolute(), *path.absolute().parents]):
        try:
            mode = os.stat(folder).st_mode
        except (FileNotFoundError, NotADirectoryError):
            return None  # created by the agent, with its umask of 022 (or not at all: that error comes later)
        if not stat.S_ISDIR(mode):
            return None
        if not mode & stat.S_IXOTH:
            return folder
    return None
