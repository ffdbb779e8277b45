"""Staging a task's resource files into its working directory: the one entry point, ``Stager.stage``.

Azure Batch's rules: ``httpUrl`` goes to ``filePath``; a container (``storageContainerUrl``, or
``autoStorageContainerName`` on the configured account) puts every blob under ``blobPrefix`` below the directory
``filePath``, keeping the blob's path. Every target is confined to the working directory before anything is
downloaded. Files of one task are fetched concurrently (bounded); the first failure cancels the others and fails
the attempt with Azure's code.
"""

from __future__ import annotations

import asyncio
import importlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Self

import structlog

from node_agent.errors import StagingFailed
from node_agent.staging.blobs import container_url, list_blobs
from node_agent.staging.cache import DownloadCache, StagingCounters
from node_agent.staging.http import Fetched, HttpOptions, Validators, fetch, shown_url
from node_agent.staging.paths import confined_target, refuse, relative_parts
from node_agent.staging.placement import place_copy
from node_agent.staging.sink import FileAttrs, Output

if TYPE_CHECKING:
    import aiohttp

log = structlog.get_logger(__name__)

DEFAULT_FILE_MODE = 0o770


@dataclass(frozen=True, slots=True)
class Source:
    """One resourceFile, as plain data (exactly one of the three sources is set; the wire model checks it)."""

    http_url: str | None = None
    storage_container_url: str | None = None
    auto_storage_container_name: str | None = None
    blob_prefix: str | None = None
    file_path: str | None = None
    file_mode: str | None = None


@dataclass(frozen=True, slots=True)
class StagingOptions:
    http: HttpOptions = HttpOptions()
    concurrency: int = 4  # files of one task fetched at once
    auto_storage_url: str | None = None
    cache_dir: Path | None = None  # None or cache_max_bytes 0: no cache, files go straight to the task
    cache_max_bytes: int = 0


@dataclass(slots=True)
class StagingReport:
    """What one task's staging did; published in its resourceFilesStaged event."""

    files: int = 0
    cache_hits: int = 0
    cache_misses: int = 0
    bytes_downloaded: int = 0
    bytes_from_cache: int = 0
    duration_ms: int = 0


@dataclass(frozen=True, slots=True)
class _Item:
    url: str
    path: str  # relative to the working directory
    attrs: FileAttrs


@dataclass(slots=True)
class _Run:
    working_dir: Path
    report: StagingReport = field(default_factory=StagingReport)


class Stager:
    """Owns the HTTP session and the node's download cache; ``async with`` opens and closes them.

    The session (and aiohttp with it) is made by the first download, not on entry: most agents never stage a
    file, and aiohttp's import is about 20 MB of the agent's memory."""

    def __init__(self, options: StagingOptions) -> None:
        self.options = options
        self.counters = StagingCounters()
        self._session: aiohttp.ClientSession | None = None
        self._is_open = False
        self.cache: DownloadCache | None = None
        if options.cache_dir is not None and options.cache_max_bytes > 0:
            self.cache = DownloadCache(options.cache_dir, options.cache_max_bytes, self._fetch_to, self.counters)

    async def __aenter__(self) -> Self:
        self._is_open = True
        if self.cache is not None:
            await self.cache.load()
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._is_open = False
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def stage(
        self, sources: Sequence[Source], working_dir: Path, owner: tuple[int, int] | None = None
    ) -> StagingReport:
        """Place every resource file in ``working_dir`` (owned by ``owner`` when given) or raise StagingFailed."""
        started = time.monotonic()
        run = _Run(working_dir)
        try:
            items = [item for source in sources for item in await self._expand(source, owner)]
            for item in items:
                relative_parts(item.path)  # refuse a hostile path before the first byte is fetched
            limit = asyncio.Semaphore(self.options.concurrency)
            try:
                async with asyncio.TaskGroup() as group:
                    for item in items:
                        group.create_task(self._stage_one(run, item, limit))
            except* StagingFailed as failures:
                raise failures.exceptions[0] from None
        except StagingFailed as exc:
            self.counters.failures += 1
            log.info("staging.failed", code=exc.code, message=exc.message)
            raise
        run.report.duration_ms = int((time.monotonic() - started) * 1000)
        log.info("staging.completed", **_log_fields(run.report))
        return run.report

    async def _expand(self, source: Source, owner: tuple[int, int] | None) -> list[_Item]:
        attrs = FileAttrs(int(source.file_mode, 8) if source.file_mode else DEFAULT_FILE_MODE, owner)
        if source.http_url is not None:
            if not source.file_path:
                raise refuse(shown_url(source.http_url), "httpUrl needs a filePath")
            return [_Item(source.http_url, source.file_path, attrs)]
        if source.storage_container_url is not None:
            url = source.storage_container_url
        elif source.auto_storage_container_name is not None:
            if self.options.auto_storage_url is None:
                raise StagingFailed(
                    "BlobDownloadMiscError",
                    f"autoStorageContainerName {source.auto_storage_container_name!r} needs a storage account: "
                    "set NODE_AGENT_AUTO_STORAGE_URL on the node",
                )
            url = container_url(self.options.auto_storage_url, source.auto_storage_container_name)
        else:
            raise StagingFailed("BlobDownloadMiscError", "a resourceFile names no source")
        base = source.file_path.rstrip("/") if source.file_path else ""
        blobs = await list_blobs(url, source.blob_prefix, self.options.http)
        return [_Item(blob.url, f"{base}/{blob.name}" if base else blob.name, attrs) for blob in blobs]

    async def _stage_one(self, run: _Run, item: _Item, limit: asyncio.Semaphore) -> None:
        async with limit:
            try:
                await self._place(run, item)
            except StagingFailed as exc:
                message = f"resource file {item.path!r}: {exc.message}"
                raise StagingFailed(exc.code, message, category=exc.category) from exc
            run.report.files += 1
            self.counters.files_staged += 1
            log.debug("staging.placed", path=item.path, url=shown_url(item.url))

    async def _place(self, run: _Run, item: _Item) -> None:
        target = await asyncio.to_thread(confined_target, run.working_dir, item.path)
        shown = f"{item.path!r} from {shown_url(item.url)}"
        if self.cache is None:
            fetched = await self._fetch_to(item.url, [Output(target, item.attrs)], None)
            run.report.cache_misses += 1
            run.report.bytes_downloaded += fetched.bytes_received
            self.counters.bytes_downloaded += fetched.bytes_received
        else:
            async with self.cache.use(item.url, Output(target, item.attrs)) as lookup:
                if not lookup.is_placed:
                    await asyncio.to_thread(place_copy, lookup.path, target, item.attrs, shown)
            if lookup.is_hit:
                run.report.cache_hits += 1
                run.report.bytes_from_cache += lookup.size
            else:
                run.report.cache_misses += 1
                run.report.bytes_downloaded += lookup.bytes_received

    async def _fetch_to(self, url: str, outputs: Sequence[Output], validators: Validators | None) -> Fetched:
        return await fetch(await self._http_session(), url, outputs, self.options.http, validators)

    async def _http_session(self) -> aiohttp.ClientSession:
        if not self._is_open:
            raise RuntimeError("Stager used outside 'async with'")
        if self._session is None:
            # Here, not at the top (see the class docstring); in a thread, as an import this size blocks a while.
            await asyncio.to_thread(importlib.import_module, "aiohttp")
            import aiohttp

            if self._session is None:  # another download may have made it while this one waited for the import
                self._session = aiohttp.ClientSession(
                    connector=aiohttp.TCPConnector(limit=64, limit_per_host=16),
                    read_bufsize=1 << 20,
                    auto_decompress=False,  # the file is the bytes the server holds, as Azure Batch stores a blob
                    headers={"Accept-Encoding": "identity"},
                )
        return self._session


def _log_fields(report: StagingReport) -> dict[str, int]:
    return {
        "files": report.files,
        "cache_hits": report.cache_hits,
        "cache_misses": report.cache_misses,
        "bytes_downloaded": report.bytes_downloaded,
        "bytes_from_cache": report.bytes_from_cache,
        "duration_ms": report.duration_ms,
    }
