"""Where a resource file may go: a relative path confined to the task's working directory, symlinks refused."""

from __future__ import annotations

import os
import stat
from pathlib import Path, PurePosixPath

from node_agent.errors import StagingFailed


def refuse(where: str, reason: str) -> StagingFailed:
    return StagingFailed(
        "ResourceFileCreateFailed",
        f"the path {where!r} is refused: {reason}; use a relative path that stays in the working directory",
    )


def relative_parts(path: str) -> tuple[str, ...]:
    """The components of a relative POSIX path; absolute paths, ``..``, NUL and empty paths are refused."""
    if not path or "\x00" in path:
        raise refuse(path, "the path is empty or holds a NUL byte")
    pure = PurePosixPath(path)
    if pure.is_absolute():
        raise refuse(path, "the path is absolute")
    parts = tuple(part for part in pure.parts if part != ".")
    if ".." in parts:
        raise refuse(path, "the path contains '..'")
    if not parts:
        raise refuse(path, "the path names the working directory itself")
    return parts


def confined_target(working_dir: Path, path: str) -> Path:
    """Create the parent directories of ``path`` under ``working_dir`` and return the file's full path.

    Blocking (run it in a thread). Every existing component is checked with lstat, so a symlink planted in the
    working directory (by an earlier task of the job, or a previous attempt) cannot redirect the write.
    """
    parts = relative_parts(path)
    current = working_dir
    for part in parts[:-1]:
        current = current / part
        _ensure_directory(working_dir, current, path)
    target = current / parts[-1]
    try:
        mode = os.lstat(target).st_mode
    except FileNotFoundError:
        return target
    if stat.S_ISDIR(mode):
        raise refuse(path, "a directory of that name exists")
    return target  # an existing file or symlink is replaced by rename, never written through


def _ensure_directory(working_dir: Path, folder: Path, path: str) -> None:
    """``folder`` exists afterwards as a real directory (not a symlink), or StagingFailed says why not."""
    shown = str(folder.relative_to(working_dir))
    try:
        os.mkdir(folder, 0o770)
        return
    except FileExistsError:
        pass  # made earlier, or by a concurrent file of the same task: checked below
    except OSError as exc:
        raise StagingFailed(
            "ResourceDirectoryCreateFailed",
            f"cannot create the directory {shown!r}: {exc.strerror}",
            category="servererror",
        ) from exc
    mode = os.lstat(folder).st_mode
    if stat.S_ISLNK(mode):
        raise refuse(path, f"{shown!r} is a symbolic link")
    if not stat.S_ISDIR(mode):
        raise refuse(path, f"{shown!r} is not a directory")
