"""Removing a directory below the node root without ever following a symbolic link, and measuring it (blocking)."""

from __future__ import annotations

import os
import shutil
import stat
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass(frozen=True, slots=True)
class Removal:
    existed: bool
    complete: bool  # nothing is left at the path
    bytes_freed: int  # allocated blocks of what went, each inode once
    error: str | None = None


def is_symlink_safe() -> bool:
    """Whether this platform's shutil.rmtree is the variant that never follows a link (Linux: yes)."""
    return bool(shutil.rmtree.avoids_symlink_attacks)


def remove_below(root: Path, parts: Sequence[str]) -> Removal:
    """Remove ``root/parts...`` (a directory, file or link), following no link below ``root``.

    Each component below the root is opened with ``O_NOFOLLOW``, so a link a task planted in place of
    ``workitems/<jobId>`` or ``job-1`` is refused rather than followed. The directory itself goes through
    ``shutil.rmtree`` with a ``dir_fd``, which only its file-descriptor-based variant accepts (the one that
    never follows a link: ``shutil.rmtree.avoids_symlink_attacks``), so a link inside is removed, never its
    target. Files still open elsewhere are unlinked as usual (their space returns when they are closed).
    Directories the agent owns but a task left without write or search permission are made accessible and
    the removal retried; what still cannot go (another user's files, for a non-root agent) is reported.
    Call it through ``asyncio.to_thread``.
    """
    try:
        parent = _open_parents(root, parts[:-1])
    except FileNotFoundError:
        return Removal(existed=False, complete=True, bytes_freed=0)
    except OSError as exc:
        return Removal(existed=True, complete=False, bytes_freed=0, error=_describe(parts, exc))
    try:
        return _remove_entry(parent, parts[-1], parts)
    finally:
        os.close(parent)


def usage_below(root: Path, parts: Sequence[str]) -> int | None:
    """The disk space ``root/parts...`` holds; None when nothing is there (or it cannot be reached safely)."""
    try:
        parent = _open_parents(root, parts[:-1])
    except OSError:
        return None
    try:
        return _usage(parent, parts[-1]) if _exists(parent, parts[-1]) else None
    finally:
        os.close(parent)


def _open_parents(root: Path, parts: Sequence[str]) -> int:
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for part in parts:
            child = os.open(part, DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


def _describe(parts: Sequence[str], exc: OSError) -> str:
    return f"{'/'.join(parts)}: {exc.strerror or exc}"


def _remove_entry(parent: int, name: str, parts: Sequence[str]) -> Removal:
    try:
        info = os.stat(name, dir_fd=parent, follow_symlinks=False)
    except FileNotFoundError:
        return Removal(existed=False, complete=True, bytes_freed=0)
    if not stat.S_ISDIR(info.st_mode):  # a link (or file) in place of the directory: remove it, not its target
        try:
            os.unlink(name, dir_fd=parent)
        except OSError as exc:
            return Removal(existed=True, complete=False, bytes_freed=0, error=_describe(parts, exc))
        return Removal(existed=True, complete=True, bytes_freed=info.st_blocks * 512)
    before = _usage(parent, name)
    errors = _rmtree(parent, name)
    if errors and _exists(parent, name):
        _make_owner_accessible(parent, name)
        errors = _rmtree(parent, name)
    if not _exists(parent, name):
        return Removal(existed=True, complete=True, bytes_freed=before)
    left = _usage(parent, name)
    return Removal(existed=True, complete=False, bytes_freed=max(before - left, 0), error=errors[0] if errors else None)


def _rmtree(parent: int, name: str) -> list[str]:
    errors: list[str] = []

    def collect(function: Any, path: str, exc_info: Any) -> None:
        errors.append(f"{path}: {exc_info[1] if isinstance(exc_info, tuple) else exc_info}")

    if sys.version_info >= (3, 12):
        shutil.rmtree(name, dir_fd=parent, onexc=collect)
    else:
        shutil.rmtree(name, dir_fd=parent, onerror=collect)
    return errors


def _exists(parent: int, name: str) -> bool:
    try:
        os.stat(name, dir_fd=parent, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True


def _usage(parent: int, name: str) -> int:
    """Allocated bytes below ``name`` (itself included), each inode counted once, no link followed."""
    try:
        top = os.stat(name, dir_fd=parent, follow_symlinks=False)
    except OSError:
        return 0
    seen = {(top.st_dev, top.st_ino)}
    total = top.st_blocks * 512
    if not stat.S_ISDIR(top.st_mode):
        return total
    for _, dirs, files, dir_fd in os.fwalk(name, dir_fd=parent, follow_symlinks=False):
        for entry in (*dirs, *files):
            try:
                info = os.stat(entry, dir_fd=dir_fd, follow_symlinks=False)
            except OSError:
                continue
            if (info.st_dev, info.st_ino) not in seen:
                seen.add((info.st_dev, info.st_ino))
                total += info.st_blocks * 512
    return total


def _make_owner_accessible(parent: int, name: str) -> None:
    """Give the owner rwx on every directory below that it owns (best effort, never following a link).

    The directory is opened with O_PATH (which needs no permission on it) and changed through
    /proc/self/fd, so a directory swapped for a link meanwhile is never what gets changed.
    """
    try:
        handle = os.open(name, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
    except OSError:
        return
    try:
        info = os.fstat(handle)
        if info.st_uid == os.geteuid() and info.st_mode & 0o700 != 0o700:
            os.chmod(f"/proc/self/fd/{handle}", stat.S_IMODE(info.st_mode) | 0o700)
        listing = os.open(".", DIR_FLAGS, dir_fd=handle)
    except OSError:
        os.close(handle)
        return
    try:
        with os.scandir(listing) as entries:
            subdirs = [entry.name for entry in entries if entry.is_dir(follow_symlinks=False)]
        for subdir in subdirs:
            _make_owner_accessible(listing, subdir)
    except OSError:
        pass
    finally:
        os.close(listing)
        os.close(handle)
