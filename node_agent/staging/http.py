"""One streamed HTTP download to a file: retries with backoff, conditional requests, temp file, fsync, rename.

Memory stays flat whatever the size: the body is read in pieces of at most ``BATCH_BYTES`` while the previous
batch is written by a worker thread, so the network and the disk overlap and the event loop never blocks.

aiohttp (about 20 MB) is imported by the first download, not with this module: most agents never stage a file.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

import structlog

from node_agent.errors import StagingFailed
from node_agent.staging.sink import Output, Sink

if TYPE_CHECKING:
    import aiohttp

log = structlog.get_logger(__name__)

BATCH_BYTES = 1 << 20
MAX_RETRY_DELAY_S = 30.0


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


async def fetch(
    session: aiohttp.ClientSession,
    url: str,
    outputs: Sequence[Output],
    options: HttpOptions,
    validators: Validators | None = None,
) -> Fetched:
    """Download ``url`` into every output (each replaced atomically), or confirm with 304 that ``validators``
    are current (then nothing is written)."""
    shown = shown_url(url)
    for attempt in range(options.retries + 1):
        try:
            return await _fetch_once(session, url, outputs, options, validators)
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
    outputs: Sequence[Output],
    options: HttpOptions,
    validators: Validators | None,
) -> Fetched:
    import aiohttp  # here, not at the top: see the module's docstring

    shown = shown_url(url)
    # The read timeout is one deadline pushed back as bytes arrive (_Progress), not aiohttp's sock_read, which
    # re-arms a timer on every packet: that cost a tenth of the CPU of a fast download.
    timeout = aiohttp.ClientTimeout(total=None, connect=options.connect_timeout_s, sock_read=None)
    headers = validators.headers() if validators else {}
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(loop.time() + options.connect_timeout_s + options.read_timeout_s) as deadline:
            progress = _Progress(deadline, options.read_timeout_s)
            async with session.get(url, headers=headers, timeout=timeout, allow_redirects=True) as response:
                if response.status == 304 and validators is not None:
                    return Fetched(True, -1, validators, 0)
                _check_status(response, shown)
                fresh = Validators(response.headers.get("ETag"), response.headers.get("Last-Modified"))
                received = await _save(response, outputs, shown, progress)
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


@dataclass(slots=True)
class _Progress:
    """Pushes the download's deadline ``read_timeout_s`` past the last bytes received (a few times per period)."""

    deadline: asyncio.Timeout
    read_timeout_s: float
    _next: float = 0.0

    def tick(self, now: float) -> None:
        if now >= self._next:
            self.deadline.reschedule(now + self.read_timeout_s)
            self._next = now + self.read_timeout_s / 4


async def _save(response: aiohttp.ClientResponse, outputs: Sequence[Output], shown: str, progress: _Progress) -> int:
    """Stream the body into temporary files beside the outputs; fsync and rename them only once complete."""
    sink = Sink(outputs, shown)
    loop = asyncio.get_running_loop()
    pending: asyncio.Future[None] | None = None
    complete = False
    received = 0
    try:
        await asyncio.to_thread(sink.open, response.content_length)  # a cancel here still ends in close() below
        batch: list[bytes] = []
        batch_bytes = 0
        # iter_chunks hands over each received piece as it is; iter_any would join them all into a new copy.
        async for chunk, _ in response.content.iter_chunks():
            progress.tick(loop.time())
            batch.append(chunk)
            batch_bytes += len(chunk)
            if batch_bytes >= BATCH_BYTES:
                if pending is not None:
                    await pending
                pending = loop.run_in_executor(None, sink.write, batch)
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
        await asyncio.to_thread(sink.finish, batch)
        complete = True
    finally:
        if pending is not None:
            await asyncio.wait({pending})
        await asyncio.to_thread(sink.close, complete=complete)
    return received
