"""listFiles and getFile, confined to the node root (no '..', no absolute path, no symlink escape)."""

from __future__ import annotations

import asyncio
import base64
import os
import stat
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

import aiofiles

from node_agent.errors import InputError
from node_agent.wire.commands import FileProperties, NodeFile

LIST_LIMIT = 10_000
NAME_MAX = 255  # Linux: the longest file name


def resolve_inside(root: Path, relative: str) -> Path:
    """The real path of ``relative`` under ``root``; refuses anything that would leave it."""
    pure = PurePosixPath(relative)
    shown = relative if len(relative) <= 200 else relative[:200] + "..."
    if pure.is_absolute() or ".." in pure.parts or "\x00" in relative:
        raise InputError("PathNotAllowed", f"path {shown!r} must be relative to the node root, without '..'")
    if any(len(part.encode(errors="surrogateescape")) > NAME_MAX for part in pure.parts):
        raise InputError("FileNotFound", f"path {shown!r} has a component longer than {NAME_MAX} bytes")
    real_root = root.resolve()
    try:
        target = (real_root / pure).resolve()
    except (RuntimeError, OSError) as exc:  # a symlink loop: RuntimeError before Python 3.13
        raise InputError("PathNotAllowed", f"path {relative!r} cannot be resolved: {exc}") from None
    if target != real_root and not target.is_relative_to(real_root):
        raise InputError("PathNotAllowed", f"path {relative!r} leads outside the node root")
    return target


def _node_file(root: Path, path: Path) -> dict[str, Any]:
    info = path.lstat()
    return NodeFile(
        name=path.relative_to(root).as_posix(),
        is_directory=stat.S_ISDIR(info.st_mode),
        properties=FileProperties(
            last_modified=datetime.fromtimestamp(info.st_mtime, UTC),
            content_length=info.st_size,
            file_mode=oct(stat.S_IMODE(info.st_mode))[2:].zfill(4),
        ),
    ).model_dump(mode="json", by_alias=True)


def _list(root: Path, relative: str, recursive: bool) -> list[dict[str, Any]]:
    real_root = root.resolve()
    start = resolve_inside(root, relative)
    try:
        is_dir = start.is_dir()
    except OSError:  # e.g. ENAMETOOLONG, EACCES on the way
        is_dir = False
    if not is_dir:
        raise InputError("FileNotFound", f"directory {relative!r} does not exist on this node")
    found: list[dict[str, Any]] = []
    for current, dirs, files in os.walk(start, followlinks=False):
        for name in sorted(dirs) + sorted(files):
            found.append(_node_file(real_root, Path(current) / name))
            if len(found) >= LIST_LIMIT:
                return found
        if not recursive:
            break
    return found


async def list_files(root: Path, relative: str, recursive: bool) -> dict[str, Any]:
    return {"value": await asyncio.to_thread(_list, root, relative, recursive)}


def _open_regular(root: Path, relative: str) -> int:
    """Open the file without following a final symlink and without blocking (a FIFO), then check what was
    opened: a regular file whose real path is inside the root. Checking the open descriptor, not the path,
    leaves no window for a task to swap a component for a link between check and use."""
    target = resolve_inside(root, relative)
    try:
        fd = os.open(target, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        raise InputError("FileNotFound", f"file {relative!r} does not exist on this node") from None
    except OSError as exc:  # ELOOP: the last component became a symlink after the check
        raise InputError("PathNotAllowed", f"{relative!r} cannot be opened safely: {exc.strerror}") from None
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise InputError("FileNotFound", f"{relative!r} is a directory; use listFiles")
        if not stat.S_ISREG(mode):
            raise InputError("PathNotAllowed", f"{relative!r} is not a regular file")
        opened = Path(os.readlink(f"/proc/self/fd/{fd}"))
        if not opened.is_relative_to(root.resolve()):
            raise InputError("PathNotAllowed", f"path {relative!r} leads outside the node root")
    except BaseException:
        os.close(fd)
        raise
    return fd


async def get_file(root: Path, relative: str, offset: int, length: int) -> dict[str, Any]:
    fd = await asyncio.to_thread(_open_regular, root, relative)
    async with aiofiles.open(fd, "rb") as handle:
        size = os.fstat(fd).st_size
        data = b""
        if offset < size:  # past the end there is nothing to read (and a huge offset cannot even be sought)
            await handle.seek(offset)
            data = await handle.read(length)
    return {
        "contentLength": size,
        "offset": offset,
        "content": base64.b64encode(data).decode(),
        "eof": offset + len(data) >= size,
    }
