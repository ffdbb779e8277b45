"""A task's resourceFiles, from wire models to the staging package, and its resourceFilesStaged event."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

from node_agent.agent.publisher import Publisher
from node_agent.ops import metrics
from node_agent.staging.stage import Source, Stager
from node_agent.wire.specs import ResourceFile
from node_agent.wire.status import StagingStats

Owner = tuple[int, int] | None
StageFn = Callable[[Path, Owner], Awaitable[None]]


class ResourceStaging:
    def __init__(self, stager: Stager, publisher: Publisher) -> None:
        self.stager = stager
        self._publisher = publisher

    def for_task(self, job_id: str, task_id: str, files: Sequence[ResourceFile]) -> StageFn | None:
        """What attempts.run_to_end calls once, before the first attempt; None when there is nothing to stage."""
        if not files:
            return None
        sources = [_source(file) for file in files]

        async def stage(working_dir: Path, owner: Owner) -> None:
            report = await self.stager.stage(sources, working_dir, owner)
            stats = StagingStats(
                files=report.files,
                cache_hits=report.cache_hits,
                cache_misses=report.cache_misses,
                bytes_downloaded=report.bytes_downloaded,
                bytes_from_cache=report.bytes_from_cache,
                duration_ms=report.duration_ms,
            )
            self._publisher.staged(job_id, task_id, stats)
            metrics.staging_bytes.inc(report.bytes_downloaded)
            metrics.staging_cache_hits.inc(report.cache_hits)
            metrics.staging_cache_misses.inc(report.cache_misses)

        return stage


def _source(file: ResourceFile) -> Source:
    return Source(
        http_url=file.http_url,
        storage_container_url=file.storage_container_url,
        auto_storage_container_name=file.auto_storage_container_name,
        blob_prefix=file.blob_prefix,
        file_path=file.file_path,
        file_mode=file.file_mode,
    )
