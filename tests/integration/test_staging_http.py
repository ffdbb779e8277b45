"""Stager against a real loopback HTTP server: placement, revalidation, failure codes, retries, cache, limits.

No broker here: these drive ``Stager.stage`` (the entry point attempts.py calls) directly; test_staging.py
goes through the wire.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from node_agent.errors import StagingFailed
from node_agent.staging.http import HttpOptions
from node_agent.staging.stage import Source, Stager, StagingOptions
from tests.http_files import FileServer
from tests.tmpfs import small_tmpfs

FAST = HttpOptions(connect_timeout_s=5, read_timeout_s=10, retries=2, retry_delay_s=0.01)
MakeStager = Callable[..., Stager]


@pytest.fixture
async def server() -> AsyncIterator[FileServer]:
    files = FileServer(files={"a.txt": b"alpha\n", "b.txt": b"bravo\n" * 20, "c.txt": b"c" * 100})
    await files.start()
    yield files
    await files.stop()


@pytest.fixture
def make_stager(tmp_path: Path) -> MakeStager:
    def make(cache_max_bytes: int = 1 << 30, http: HttpOptions = FAST, concurrency: int = 4) -> Stager:
        options = StagingOptions(
            http=http, concurrency=concurrency, cache_dir=tmp_path / "cache", cache_max_bytes=cache_max_bytes
        )
        return Stager(options)

    return make


def wd(tmp_path: Path, name: str = "wd") -> Path:
    folder = tmp_path / name
    folder.mkdir(exist_ok=True)
    return folder


def leftovers(*folders: Path) -> list[Path]:
    return [p for folder in folders if folder.exists() for p in folder.rglob("*") if ".part-" in p.name]


async def test_http_file_is_placed_at_its_path_with_its_mode(server, make_stager, tmp_path: Path) -> None:
    async with make_stager() as stager:
        report = await stager.stage(
            [
                Source(http_url=server.url("files/a.txt"), file_path="in/a.txt", file_mode="0640"),
                Source(http_url=server.url("files/b.txt"), file_path="b.txt"),
            ],
            wd(tmp_path),
        )
    assert (tmp_path / "wd" / "in" / "a.txt").read_bytes() == b"alpha\n"
    assert (tmp_path / "wd" / "in" / "a.txt").stat().st_mode & 0o777 == 0o640
    assert (tmp_path / "wd" / "b.txt").stat().st_mode & 0o777 == 0o770  # Azure Batch's default fileMode
    assert (report.files, report.cache_misses, report.bytes_downloaded) == (2, 2, 6 + 120)
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("route", ["files", "lastmod"])
async def test_a_second_use_revalidates_with_a_conditional_request_and_moves_no_body(
    server, make_stager, tmp_path: Path, route: str
) -> None:
    source = Source(http_url=server.url(f"{route}/a.txt"), file_path="a.txt")
    async with make_stager() as stager:
        first = await stager.stage([source], wd(tmp_path, "one"))
        second = await stager.stage([source], wd(tmp_path, "two"))
    assert (tmp_path / "two" / "a.txt").read_bytes() == b"alpha\n"
    assert [(r.conditional, r.status, r.body_bytes) for r in server.requests] == [(False, 200, 6), (True, 304, 0)]
    assert (first.cache_misses, first.bytes_downloaded) == (1, 6)
    assert (second.cache_hits, second.bytes_downloaded, second.bytes_from_cache) == (1, 0, 6)
    assert stager.counters.cache_hits == 1 and stager.counters.cache_misses == 1


async def test_a_changed_file_is_downloaded_again(server, make_stager, tmp_path: Path) -> None:
    source = Source(http_url=server.url("files/a.txt"), file_path="a.txt")
    async with make_stager() as stager:
        await stager.stage([source], wd(tmp_path, "one"))
        server.files["a.txt"] = b"changed\n"
        report = await stager.stage([source], wd(tmp_path, "two"))
    assert (tmp_path / "two" / "a.txt").read_bytes() == b"changed\n"
    assert (tmp_path / "one" / "a.txt").read_bytes() == b"alpha\n"  # a copy, not a link to the cache
    assert report.cache_misses == 1 and [r.status for r in server.requests] == [200, 200]


async def test_the_cache_survives_a_restart_of_the_agent(server, make_stager, tmp_path: Path) -> None:
    source = Source(http_url=server.url("files/b.txt"), file_path="b.txt")
    async with make_stager() as stager:
        await stager.stage([source], wd(tmp_path, "one"))
    (tmp_path / "cache" / ".stray.part-1234").write_bytes(b"interrupted download")
    async with make_stager() as stager:
        report = await stager.stage([source], wd(tmp_path, "two"))
    assert report.cache_hits == 1 and server.requests[-1].status == 304
    assert not (tmp_path / "cache" / ".stray.part-1234").exists()


async def test_concurrent_uses_of_one_url_share_a_single_download(server, make_stager, tmp_path: Path) -> None:
    source = Source(http_url=server.url("files/b.txt"), file_path="b.txt")
    async with make_stager() as stager:
        reports = await asyncio.gather(*(stager.stage([source], wd(tmp_path, f"t{n}")) for n in range(8)))
    assert len(server.requests) == 1
    assert sum(r.cache_misses for r in reports) == 1 and sum(r.cache_hits for r in reports) == 7
    assert all((tmp_path / f"t{n}" / "b.txt").read_bytes() == b"bravo\n" * 20 for n in range(8))


async def test_least_recently_used_files_are_evicted_past_the_limit(server, make_stager, tmp_path: Path) -> None:
    async with make_stager(cache_max_bytes=250) as stager:
        for name in ("a.txt", "b.txt", "c.txt"):  # 6 + 120 + 100 bytes
            await stager.stage([Source(http_url=server.url(f"files/{name}"), file_path=name)], wd(tmp_path))
        assert stager.counters.evictions == 0
        await stager.stage([Source(http_url=server.url("files/a.txt"), file_path="a2")], wd(tmp_path))  # a is used
        server.files["d.txt"] = b"d" * 100
        await stager.stage([Source(http_url=server.url("files/d.txt"), file_path="d")], wd(tmp_path))
        assert stager.cache is not None and stager.cache.total_bytes <= 250
        assert stager.counters.evictions == 1
    await_b = [r for r in server.requests if r.path.endswith("b.txt")]
    assert len(await_b) == 1  # b (least recently used) went; a, c and d stay
    cached = {p.name for p in (tmp_path / "cache").iterdir()}
    assert hashlib.sha256(server.url("files/b.txt").encode()).hexdigest() not in cached
    assert hashlib.sha256(server.url("files/a.txt").encode()).hexdigest() in cached


async def test_a_file_larger_than_the_cache_is_still_placed_then_evicted(server, make_stager, tmp_path: Path) -> None:
    async with make_stager(cache_max_bytes=50) as stager:
        report = await stager.stage([Source(http_url=server.url("files/c.txt"), file_path="c")], wd(tmp_path))
        assert stager.cache is not None and stager.cache.total_bytes == 0
    assert report.files == 1 and (tmp_path / "wd" / "c").read_bytes() == b"c" * 100


async def test_without_a_cache_files_go_straight_to_the_task(server, make_stager, tmp_path: Path) -> None:
    async with make_stager(cache_max_bytes=0) as stager:
        source = Source(http_url=server.url("files/a.txt"), file_path="x/a", file_mode="0600")
        await stager.stage([source], wd(tmp_path))
        await stager.stage([source], wd(tmp_path))
    assert (tmp_path / "wd" / "x" / "a").stat().st_mode & 0o777 == 0o600
    assert [r.conditional for r in server.requests] == [False, False]
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize(
    ("route", "code"),
    [
        ("status/404/x", "BlobNotFound"),
        ("files/missing.txt", "BlobNotFound"),
        ("status/403/x", "BlobAccessDenied"),
        ("status/401/x", "BlobAccessDenied"),
        ("status/400/x", "BlobDownloadMiscError"),
    ],
)
async def test_http_errors_fail_with_azure_codes_and_are_not_retried(
    server, make_stager, tmp_path: Path, route: str, code: str
) -> None:
    async with make_stager() as stager:
        with pytest.raises(StagingFailed) as caught:
            await stager.stage([Source(http_url=server.url(route), file_path="in/x.bin")], wd(tmp_path))
    assert (caught.value.code, caught.value.category) == (code, "usererror")
    assert "'in/x.bin'" in caught.value.message and route in caught.value.message
    assert len(server.requests) == 1
    assert leftovers(tmp_path) == [] and not (tmp_path / "wd" / "in" / "x.bin").exists()


@pytest.mark.parametrize("route", ["flaky/2/a.txt", "drop/2/a.txt"])
async def test_5xx_and_dropped_connections_are_retried(server, make_stager, tmp_path: Path, route: str) -> None:
    async with make_stager() as stager:
        await stager.stage([Source(http_url=server.url(route), file_path="a.txt")], wd(tmp_path))
    assert (tmp_path / "wd" / "a.txt").read_bytes() == b"alpha\n"
    assert len(server.requests) == 3 and leftovers(tmp_path) == []


@pytest.mark.parametrize(("route", "code"), [("flaky/9/a.txt", "BlobDownloadMiscError"), ("drop/9/a.txt", None)])
async def test_retries_end_with_a_failure_and_no_partial_file(
    server, make_stager, tmp_path: Path, route: str, code: str | None
) -> None:
    async with make_stager() as stager:
        with pytest.raises(StagingFailed) as caught:
            await stager.stage([Source(http_url=server.url(route), file_path="a.txt")], wd(tmp_path))
    assert caught.value.code == (code or "BlobDownloadMiscError")
    assert len(server.requests) == FAST.retries + 1
    assert not (tmp_path / "wd" / "a.txt").exists() and leftovers(tmp_path) == []


async def test_a_stalled_response_times_out(server, make_stager, tmp_path: Path) -> None:
    http = HttpOptions(connect_timeout_s=5, read_timeout_s=0.2, retries=1, retry_delay_s=0.01)
    async with make_stager(http=http) as stager:
        with pytest.raises(StagingFailed) as caught:
            await stager.stage([Source(http_url=server.url("stall/x"), file_path="x")], wd(tmp_path))
    assert caught.value.code == "BlobDownloadTimedOut" and "0.2 s" in caught.value.message
    assert len(server.requests) == 2 and leftovers(tmp_path) == []


async def test_one_failure_cancels_the_others_of_the_task(server, make_stager, tmp_path: Path) -> None:
    async with make_stager(concurrency=2) as stager:
        with pytest.raises(StagingFailed) as caught:
            await stager.stage(
                [
                    Source(http_url=server.url("stall/x"), file_path="slow"),
                    Source(http_url=server.url("status/404/y"), file_path="missing"),
                ],
                wd(tmp_path),
            )
    assert caught.value.code == "BlobNotFound" and leftovers(tmp_path) == []


@pytest.mark.parametrize("path", ["../escape", "/etc/escape", "a/../../escape"])
async def test_paths_that_leave_the_working_directory_are_refused(
    server, make_stager, tmp_path: Path, path: str
) -> None:
    async with make_stager() as stager:
        with pytest.raises(StagingFailed) as caught:
            await stager.stage([Source(http_url=server.url("files/a.txt"), file_path=path)], wd(tmp_path))
    assert caught.value.code == "ResourceFileCreateFailed" and server.requests == []
    assert not (tmp_path / "escape").exists()


async def test_a_symlink_in_the_working_directory_is_not_followed(server, make_stager, tmp_path: Path) -> None:
    outside = wd(tmp_path, "outside")
    os.symlink(outside, wd(tmp_path) / "data")
    async with make_stager() as stager:
        with pytest.raises(StagingFailed, match="symbolic link") as caught:
            await stager.stage([Source(http_url=server.url("files/a.txt"), file_path="data/a.txt")], tmp_path / "wd")
    assert caught.value.code == "ResourceFileCreateFailed" and list(outside.iterdir()) == []


async def test_a_large_file_streams_through_and_revalidates(server, make_stager, tmp_path: Path) -> None:
    size = 300 << 20
    big = tmp_path / "served" / "big.bin"
    big.parent.mkdir()
    with big.open("wb") as out:  # sparse, with distinct bytes at both ends so the checksum means something
        out.write(os.urandom(1 << 20))
        out.seek(size - (1 << 20))
        out.write(os.urandom(1 << 20))
    server.paths["big.bin"] = big
    async with make_stager() as stager:
        report = await stager.stage([Source(http_url=server.url("files/big.bin"), file_path="big.bin")], wd(tmp_path))
        again = await stager.stage([Source(http_url=server.url("files/big.bin"), file_path="big.bin")], wd(tmp_path))
    placed = tmp_path / "wd" / "big.bin"
    assert placed.stat().st_size == size and report.bytes_downloaded == size
    assert again.cache_hits == 1 and again.bytes_downloaded == 0  # aiohttp's FileResponse answered 304
    assert _sha256(placed) == _sha256(big)
    for large in (placed, big, *(tmp_path / "cache").iterdir()):
        large.unlink()  # pytest keeps the last runs' temporary directories: do not keep 600 MB in them


async def test_chunked_responses_of_unknown_size_are_placed(server, make_stager, tmp_path: Path) -> None:
    served = tmp_path / "chunky"
    served.write_bytes(b"0123456789" * 300_000)
    server.paths["chunky"] = served
    async with make_stager() as stager:
        report = await stager.stage([Source(http_url=server.url("chunked/chunky"), file_path="c")], wd(tmp_path))
    assert report.bytes_downloaded == 3_000_000 and (tmp_path / "wd" / "c").read_bytes() == served.read_bytes()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as source:
        while block := source.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


@pytest.mark.parametrize("on_tmpfs", ["cache", "task"])
async def test_a_full_disk_fails_with_disk_full_and_leaves_no_partial_file(
    server, tmp_path: Path, on_tmpfs: str
) -> None:
    served = tmp_path / "eight-mib"
    served.write_bytes(os.urandom(8 << 20))
    server.paths["eight-mib"] = served
    with small_tmpfs(tmp_path / "small", "2m") as small:
        cache = small / "cache" if on_tmpfs == "cache" else tmp_path / "cache"
        working = wd(small if on_tmpfs == "task" else tmp_path)
        options = StagingOptions(http=FAST, cache_dir=cache, cache_max_bytes=(1 << 30) if on_tmpfs == "cache" else 0)
        async with Stager(options) as stager:
            for route in ("chunked/eight-mib", "files/eight-mib"):  # size unknown: mid-body; known: before
                with pytest.raises(StagingFailed) as caught:
                    await stager.stage([Source(http_url=server.url(route), file_path="big")], working)
                assert (caught.value.code, caught.value.category) == ("DiskFull", "servererror")
                assert "'big'" in caught.value.message
            assert leftovers(small) == [] and not (working / "big").exists()
            server.files["small.txt"] = b"fits\n"  # the stager goes on serving
            await stager.stage([Source(http_url=server.url("files/small.txt"), file_path="small")], working)
            assert (working / "small").read_bytes() == b"fits\n"
