"""One streamed HTTP download to a file: retries with backoff, conditional requests, temp file, fsync, rename.

Memory stays flat whatever the size: the body is read in pieces of at most ``BATCH_BYTES`` while the previous
batch is written by a worker thread, so the network and the disk overlap and the event loop never blocks.
"""

from __future__ import annotations

import asyncio
import errno
import os
import random
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import structlog

from node_agent.errors import StagingFailed

log = structlog.get_logger(__name__)

BATCH_BYTES = 1 << 20
MAX_RETRY_DELAY_S = 30.0
DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


@dataclass(frozen=True, slots=True)
class HttpOptions:
    connect_timeout_s: float = 30.0
    read_timeout_s: float = 60.0  # no byte for this long: the attempt times out
    retries: int = 4
    retry_delay_s: float = 0.5  # doubled on every retry, with jitter; a Retry-After header wins


@dataclass(frozen=True, slots=True)
class Validators:
    """What a conditional request sends back: the ETag and Last-Modified of the copy we hold."""

    etag: str | None = None
    last_modified: str | None = None

    def headers(self) -> dict[str, str]:
        headers = {}
        if self.etag:
            headers["If-None-Match"] = self.etag
        if self.last_modified:
            headers["If-Modified-Since"] = self.last_modified
        return headers


@dataclass(frozen=True, slots=True)
class FileAttrs:
    """Mode and owner given to a downloaded file through its descriptor, before it is renamed into place."""

    mode: int = 0o600
    owner: tuple[int, int] | None = None


PRIVATE = FileAttrs()  # the cache's own files: the agent's user only


@dataclass(frozen=True, slots=True)
class Fetched:
    not_modified: bool  # 304: the copy we hold is current and no body was sent
    size: int
    validators: Validators
    bytes_received: int


class _Transient(Exception):
    """A failure worth another try; ``failure`` is what the task gets if no try is left."""

    def __init__(self, failure: StagingFailed, retry_after_s: float | None = None) -> None:
        super().__init__(failure.message)
        self.failure = failure
        self.retry_after_s = retry_after_s


def shown_url(url: str) -> str:
    """The URL without its query string: a SAS token is a secret and never reaches a log or a message."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))


def write_failure(exc: OSError, what: str) -> StagingFailed:
    if exc.errno in DISK_FULL_ERRNOS:
        return StagingFailed("DiskFull", f"the node's disk is full while writing {what}", category="servererror")
    reason = exc.strerror or str(exc)
    return StagingFailed("ResourceFileWriteFailed", f"cannot write {what}: {reason}", category="servererror")


async def fetch(
    session: aiohttp.ClientSession,
    url: str,
    dest: Path,
    options: HttpOptions,
    validators: Validators | None = None,
    attrs: FileAttrs = PRIVATE,
) -> Fetched:
    """Download ``url`` to ``dest`` (replaced atomically), or confirm with 304 that ``validators`` are current."""
    shown = shown_url(url)
    for attempt in range(options.retries + 1):
        try:
            return await _fetch_once(session, url, dest, options, validators, attrs)
        except _Transient as exc:
            if attempt == options.retries:
                raise exc.failure from exc
            delay = exc.retry_after_s
            if delay is None:
                delay = options.retry_delay_s * (2**attempt) * random.uniform(0.5, 1.0)  # noqa: S311 (jitter)
            delay = min(delay, MAX_RETRY_DELAY_S)
            log.warning("staging.retrying", url=shown, attempt=attempt + 1, delay_s=round(delay, 3), reason=str(exc))
            await asyncio.sleep(delay)  # backoff before the next try
    raise AssertionError("unreachable")


async def _fetch_once(
    session: aiohttp.ClientSession,
    url: str,
    dest: Path,
    options: HttpOptions,
    validators: Validators | None,
    attrs: FileAttrs,
) -> Fetched:
    shown = shown_url(url)
    timeout = aiohttp.ClientTimeout(total=None, connect=options.connect_timeout_s, sock_read=options.read_timeout_s)
    headers = validators.headers() if validators else {}
    try:
        async with session.get(url, headers=headers, timeout=timeout, allow_redirects=True) as response:
            if response.status == 304 and validators is not None:
                return Fetched(True, -1, validators, 0)
            _check_status(response, shown)
            fresh = Validators(response.headers.get("ETag"), response.headers.get("Last-Modified"))
            received = await _save(response, dest, shown, attrs)
            return Fetched(False, received, fresh, received)
    except TimeoutError as exc:
        failure = StagingFailed(
            "BlobDownloadTimedOut",
            f"downloading {shown} timed out (no answer within {options.connect_timeout_s:g} s to connect "
            f"or {options.read_timeout_s:g} s between reads)",
        )
        raise _Transient(failure) from exc
    except aiohttp.InvalidURL as exc:
        raise StagingFailed("BlobDownloadMiscError", f"the URL {shown} is invalid") from exc
    except aiohttp.ClientError as exc:
        failure = StagingFailed("BlobDownloadMiscError", f"downloading {shown} failed: {type(exc).__name__}: {exc}")
        raise _Transient(failure) from exc


def _check_status(response: aiohttp.ClientResponse, shown: str) -> None:
    status = response.status
    if status == 200:
        return
    if status == 404:
        raise StagingFailed("BlobNotFound", f"{shown} does not exist (HTTP 404)")
    if status in (401, 403):
        raise StagingFailed("BlobAccessDenied", f"access to {shown} was denied (HTTP {status})")
    failure = StagingFailed("BlobDownloadMiscError", f"downloading {shown} failed with HTTP {status} {response.reason}")
    if status in (408, 429) or status >= 500:
        raise _Transient(failure, _retry_after(response))
    raise failure


def _retry_after(response: aiohttp.ClientResponse) -> float | None:
    value = response.headers.get("Retry-After", "")
    return float(value) if value.isdigit() else None


async def _save(response: aiohttp.ClientResponse, dest: Path, shown: str, attrs: FileAttrs) -> int:
    """Stream the body into a temporary file beside ``dest``; fsync and rename it only once complete."""
    temp = dest.with_name(f".{dest.name}.part-{secrets.token_hex(4)}")
    fd = await asyncio.to_thread(_open_temp, temp, response.content_length, shown, attrs)
    loop = asyncio.get_running_loop()
    pending: asyncio.Future[None] | None = None
    complete = False
    received = 0
    try:
        batch: list[bytes] = []
        batch_bytes = 0
        async for chunk in response.content.iter_any():
            batch.append(chunk)
            batch_bytes += len(chunk)
            if batch_bytes >= BATCH_BYTES:
                if pending is not None:
                    await pending
                pending = loop.run_in_executor(None, _write_all, fd, batch, shown)
                received += batch_bytes
                batch, batch_bytes = [], 0
        if pending is not None:
            await pending
        pending = None
        received += batch_bytes
        length = response.content_length
        if length is not None and received != length:
            failure = StagingFailed("BlobDownloadMiscError", f"{shown} ended after {received} of {length} bytes")
            raise _Transient(failure)
        await asyncio.to_thread(_flush, fd, batch, shown)
        complete = True
    finally:
        if pending is not None:
            await asyncio.wait({pending})
        await asyncio.to_thread(_close, fd, temp, dest if complete else None, shown)
    return received


def _open_temp(temp: Path, length: int | None, shown: str, attrs: FileAttrs) -> int:
    if length is not None:
        stats = os.statvfs(temp.parent)
        if stats.f_bavail * stats.f_frsize < length:
            raise StagingFailed(
                "DiskFull", f"the node's disk has no room for {shown} ({length} bytes)", category="servererror"
            )
    try:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise write_failure(exc, f"a temporary file for {shown}") from exc
    try:
        apply_attrs(fd, attrs)
    except OSError as exc:
        os.close(fd)
        temp.unlink(missing_ok=True)
        raise write_failure(exc, shown) from exc
    return fd


def apply_attrs(fd: int, attrs: FileAttrs) -> None:
    """Through the descriptor, so a path swapped for a symlink can never redirect a chmod or chown."""
    if attrs.owner is not None:
        os.fchown(fd, *attrs.owner)
    os.fchmod(fd, attrs.mode)


def _write_all(fd: int, chunks: Sequence[bytes], shown: str) -> None:
    views = [memoryview(chunk) for chunk in chunks if chunk]
    try:
        while views:
            written = os.writev(fd, views[:1024])  # IOV_MAX
            while views and written >= len(views[0]):
                written -= len(views[0])
                views.pop(0)
            if written:
                views[0] = views[0][written:]
    except OSError as exc:
        raise write_failure(exc, shown) from exc


def _flush(fd: int, rest: Sequence[bytes], shown: str) -> None:
    _write_all(fd, rest, shown)
    try:
        os.fsync(fd)
    except OSError as exc:
        raise write_failure(exc, shown) from exc


def _close(fd: int, temp: Path, dest: Path | None, shown: str) -> None:
    """Close the temporary file, then rename it to ``dest`` or (no ``dest``: incomplete) remove it."""
    os.close(fd)
    if dest is None:
        temp.unlink(missing_ok=True)
        return
    try:
        os.rename(temp, dest)
    except OSError as exc:
        temp.unlink(missing_ok=True)
        raise write_failure(exc, shown) from exc
