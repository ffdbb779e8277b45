"""Copying a cached file into a task's working directory: temp file, mode and owner by descriptor, rename.

A copy, not a hard link: a link would share the inode, so a task writing to its file (the default fileMode
0770 lets it) or a chmod/chown for its user would change the cache for every later task. ``copy_file_range``
lets the kernel copy (or reflink, on file systems that share extents), so no byte passes through Python.
"""

from __future__ import annotations

import errno
import os
import secrets
import shutil
from pathlib import Path

from node_agent.staging.sink import FileAttrs, apply_attrs, write_failure

FALLBACK_ERRNOS = (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP)


def place_copy(source: Path, target: Path, attrs: FileAttrs, shown: str) -> None:
    """Blocking: copy ``source`` to ``target`` atomically; nothing is left behind on failure."""
    temp = target.with_name(f".{target.name}.part-{secrets.token_hex(4)}")
    try:
        with open(source, "rb") as src, open(temp, "xb") as dst:
            apply_attrs(dst.fileno(), attrs)
            _copy(src.fileno(), dst.fileno(), os.fstat(src.fileno()).st_size)
        os.rename(temp, target)
    except OSError as exc:
        temp.unlink(missing_ok=True)
        raise write_failure(exc, shown) from exc


def _copy(src: int, dst: int, size: int) -> None:
    copied = 0
    try:
        while copied < size:
            done = os.copy_file_range(src, dst, size - copied)
            if done == 0:
                break
            copied += done
    except OSError as exc:
        if exc.errno not in FALLBACK_ERRNOS or copied:
            raise
        with os.fdopen(os.dup(src), "rb") as reader, os.fdopen(os.dup(dst), "wb") as writer:
            reader.seek(0)
            shutil.copyfileobj(reader, writer, 1 << 20)
