"""The node's download cache: one file per URL, revalidated with ETag/Last-Modified, shared, bounded, durable.

Files are named by the SHA-256 of their full URL (a SAS query included: a task only gets what its own URL may
read), and ``index.json`` beside them keeps their size, validators and last use, so the cache survives agent
restarts. Concurrent uses of one URL share a single request (single flight). A use pins its file until it has
been copied into place; least-recently-used eviction skips pinned files.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import structlog

from node_agent.staging.http import Fetched, Validators
from node_agent.staging.sink import Output

log = structlog.get_logger(__name__)

INDEX = "index.json"
Fetcher = Callable[[str, Sequence[Output], Validators | None], Awaitable[Fetched]]


@dataclass(slots=True)
class StagingCounters:
    """Node-wide totals since the agent started, for a metrics exporter to read."""

    cache_hits: int = 0
    cache_misses: int = 0
    bytes_downloaded: int = 0
    bytes_from_cache: int = 0
    evictions: int = 0
    files_staged: int = 0
    failures: int = 0


@dataclass(slots=True)
class Entry:
    size: int
    etag: str | None
    last_modified: str | None
    last_used: float

    @property
    def validators(self) -> Validators | None:
        if self.etag or self.last_modified:
            return Validators(self.etag, self.last_modified)
        return None


@dataclass(frozen=True, slots=True)
class Lookup:
    path: Path
    is_hit: bool  # no body bytes moved for this use
    is_placed: bool  # the download also wrote the caller's file: nothing left to copy
    bytes_received: int
    size: int


class _LeaderGone(Exception):
    """The use that was downloading for everyone was cancelled; a waiter takes over."""


class DownloadCache:
    def __init__(self, directory: Path, max_bytes: int, fetcher: Fetcher, counters: StagingCounters) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.counters = counters
        self._fetch = fetcher
        self._entries: dict[str, Entry] = {}
        self._pins: dict[str, int] = {}
        self._flights: dict[str, asyncio.Future[Fetched]] = {}
        self._index_lock = asyncio.Lock()

    @property
    def total_bytes(self) -> int:
        return sum(entry.size for entry in self._entries.values())

    async def load(self) -> None:
        """Read the index; drop entries whose file is gone and files no entry names (interrupted downloads)."""
        self._entries = await asyncio.to_thread(self._load_blocking)
        await self._evict()
        log.info("staging.cache_loaded", entries=len(self._entries), size_bytes=self.total_bytes)

    def _load_blocking(self) -> dict[str, Entry]:
        self.directory.mkdir(parents=True, exist_ok=True)
        os.chmod(self.directory, 0o700)
        entries: dict[str, Entry] = {}
        try:
            raw = json.loads((self.directory / INDEX).read_text())
            for key, value in raw.get("entries", {}).items():
                entries[key] = Entry(**value)
        except FileNotFoundError:
            pass
        except (ValueError, TypeError, AttributeError) as exc:
            log.warning("staging.cache_index_unreadable", error=str(exc))  # a cache: start empty, never fail
        for path in self.directory.iterdir():
            if path.name != INDEX and path.name not in entries:
                path.unlink(missing_ok=True)
        return {key: entry for key, entry in entries.items() if (self.directory / key).is_file()}

    @contextlib.asynccontextmanager
    async def use(self, url: str, place: Output | None = None) -> AsyncIterator[Lookup]:
        """The current cached file for ``url`` (downloaded or revalidated first); pinned while the block runs.

        A download this use makes also writes ``place`` (``is_placed``); otherwise the caller copies the file.
        """
        key = hashlib.sha256(url.encode()).hexdigest()
        self._pins[key] = self._pins.get(key, 0) + 1
        try:
            fetched, is_leader = await self._current(key, url, place)
            is_hit = fetched.not_modified or not is_leader
            entry = self._entries[key]
            entry.last_used = time.time()
            received = fetched.bytes_received if is_leader else 0
            if is_hit:
                self.counters.cache_hits += 1
                self.counters.bytes_from_cache += entry.size
            log.debug("staging.cache_hit" if is_hit else "staging.cache_miss", key=key[:16], size_bytes=entry.size)
            is_placed = is_leader and not fetched.not_modified and place is not None
            yield Lookup(self.directory / key, is_hit, is_placed, received, entry.size)
        finally:
            self._pins[key] -= 1
            if not self._pins[key]:
                del self._pins[key]
        await self._evict()
        await self._save_index()

    async def _current(self, key: str, url: str, place: Output | None) -> tuple[Fetched, bool]:
        while (flight := self._flights.get(key)) is not None:
            try:
                return await asyncio.shield(flight), False
            except _LeaderGone:
                continue
        flight = asyncio.get_running_loop().create_future()
        self._flights[key] = flight
        try:
            fetched = await self._refresh(key, url, place)
        except BaseException as exc:
            flight.set_exception(_LeaderGone() if isinstance(exc, asyncio.CancelledError) else exc)
            flight.exception()  # retrieved: no "never retrieved" noise when nobody waited
            raise
        else:
            flight.set_result(fetched)
        finally:
            del self._flights[key]
        return fetched, True

    async def _refresh(self, key: str, url: str, place: Output | None) -> Fetched:
        entry = self._entries.get(key)
        path = self.directory / key
        validators = entry.validators if entry is not None else None
        if validators is not None and not await asyncio.to_thread(path.is_file):
            validators = None  # removed behind our back: a 304 would leave nothing to place
        fetched = await self._fetch(url, [Output(path), *([place] if place else [])], validators)
        if fetched.not_modified and entry is not None:
            return fetched
        self.counters.cache_misses += 1
        self.counters.bytes_downloaded += fetched.bytes_received
        new = fetched.validators
        self._entries[key] = Entry(fetched.size, new.etag, new.last_modified, time.time())
        return fetched

    async def _evict(self) -> None:
        """Least recently used first, never a pinned file, until the cache fits its limit."""
        total = self.total_bytes
        if total <= self.max_bytes:
            return
        for key, entry in sorted(self._entries.items(), key=lambda item: item[1].last_used):
            if total <= self.max_bytes:
                break
            if key in self._pins or key in self._flights:
                continue
            del self._entries[key]
            total -= entry.size
            self.counters.evictions += 1
            await asyncio.to_thread((self.directory / key).unlink, missing_ok=True)
            log.info("staging.cache_evicted", key=key[:16], size_bytes=entry.size)

    async def _save_index(self) -> None:
        async with self._index_lock:
            snapshot = {"version": 1, "entries": {key: asdict(entry) for key, entry in self._entries.items()}}
            await asyncio.to_thread(self._write_index, snapshot)

    def _write_index(self, snapshot: dict[str, Any]) -> None:
        temp = self.directory / f".{INDEX}.{secrets.token_hex(4)}"
        try:
            temp.write_text(json.dumps(snapshot))
            os.replace(temp, self.directory / INDEX)
        except OSError as exc:  # a full disk must not fail a task that was staged: the index catches up later
            temp.unlink(missing_ok=True)
            log.warning("staging.cache_index_not_saved", error=str(exc))
