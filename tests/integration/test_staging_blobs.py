"""Blob containers against the real Azurite emulator: listing by prefix, SAS, autoStorageContainerName, the cache,
Azure's failure codes, hostile blob names, and one container staged through the wire."""

from __future__ import annotations

import asyncio
import concurrent.futures
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from node_agent.client.pool import BatchClient
from node_agent.errors import StagingFailed
from node_agent.staging.http import HttpOptions
from node_agent.staging.stage import Source, Stager, StagingOptions
from node_agent.wire.specs import Job, ResourceFile, TaskSpec
from node_agent.wire.status import TaskResult
from tests.azurite import Azurite, azurite_server

FAST = HttpOptions(connect_timeout_s=5, read_timeout_s=5, retries=1, retry_delay_s=0.01)
BLOBS = {"in/a.txt": b"alpha\n", "in/sub/b.txt": b"bravo\n", "other/c.txt": b"charlie\n"}


@pytest.fixture(scope="module")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Azurite]:
    """One Azurite for the module: every test only reads the ``data`` container; a test that writes blobs makes a
    container of its own."""
    with azurite_server(tmp_path_factory.mktemp("azurite")) as emulator:
        with concurrent.futures.ThreadPoolExecutor(1) as executor:  # a loop of its own, whatever runs here
            executor.submit(asyncio.run, emulator.create_container("data", BLOBS)).result()
        yield emulator


def options(tmp_path: Path, **changes: object) -> StagingOptions:
    base: dict[str, object] = {"http": FAST, "cache_dir": tmp_path / "cache", "cache_max_bytes": 1 << 20}
    base.update(changes)
    return StagingOptions(**base)  # type: ignore[arg-type]


def wd(folder: Path) -> Path:
    folder.mkdir(exist_ok=True)  # attempts.py creates it before staging
    return folder


def placed(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


async def test_a_container_prefix_is_staged_below_file_path_keeping_blob_paths(
    azurite: Azurite, tmp_path: Path
) -> None:
    source = Source(storage_container_url=azurite.container_sas_url("data"), blob_prefix="in/", file_path="inputs")
    async with Stager(options(tmp_path)) as stager:
        first = await stager.stage([source], wd(tmp_path / "one"))
        second = await stager.stage([source], wd(tmp_path / "two"))
    expected = {"inputs/in/a.txt": b"alpha\n", "inputs/in/sub/b.txt": b"bravo\n"}
    assert placed(tmp_path / "one") == expected and placed(tmp_path / "two") == expected
    assert (first.files, first.cache_misses) == (2, 2)
    assert (second.cache_hits, second.bytes_downloaded) == (2, 0)  # Azurite answered the conditional GETs with 304
    assert ((tmp_path / "one" / "inputs" / "in" / "a.txt").stat().st_mode & 0o777) == 0o770


async def test_a_whole_container_without_file_path_goes_to_the_working_directory(
    azurite: Azurite, tmp_path: Path
) -> None:
    async with Stager(options(tmp_path, cache_max_bytes=0)) as stager:
        await stager.stage([Source(storage_container_url=azurite.container_sas_url("data"))], wd(tmp_path / "wd"))
    assert placed(tmp_path / "wd") == BLOBS


async def test_auto_storage_container_name_uses_the_configured_account(azurite: Azurite, tmp_path: Path) -> None:
    source = Source(auto_storage_container_name="data", blob_prefix="other/")
    async with Stager(options(tmp_path, auto_storage_url=azurite.account_sas_url())) as stager:
        await stager.stage([source], wd(tmp_path / "wd"))
    assert placed(tmp_path / "wd") == {"other/c.txt": b"charlie\n"}


async def test_auto_storage_without_an_account_fails_with_a_clear_message(tmp_path: Path) -> None:
    async with Stager(options(tmp_path)) as stager:
        with pytest.raises(StagingFailed, match="NODE_AGENT_AUTO_STORAGE_URL"):
            await stager.stage([Source(auto_storage_container_name="data")], wd(tmp_path / "wd"))


async def test_container_failures_have_azure_codes(azurite: Azurite, tmp_path: Path) -> None:
    no_list = azurite.container_sas_url("data", list_=False)
    cases = {
        azurite.container_sas_url("nosuchcontainer"): "BlobNotFound",
        no_list: "BlobAccessDenied",
        azurite.container_sas_url("data").replace("sig=", "sig=AAAA"): "BlobAccessDenied",
    }
    async with Stager(options(tmp_path)) as stager:
        for url, code in cases.items():
            with pytest.raises(StagingFailed) as caught:
                await stager.stage([Source(storage_container_url=url)], wd(tmp_path / "wd"))
            assert caught.value.code == code, caught.value.message
            assert "sig=" not in caught.value.message  # the SAS never reaches a message
    assert placed(tmp_path / "wd") == {}


@pytest.mark.parametrize("hostile", ["%2E%2E/escape.txt", "in/%2E%2E/%2E%2E/escape.txt", "%2Fescape.txt"])
async def test_hostile_blob_names_are_refused_before_anything_is_written(
    azurite: Azurite, tmp_path: Path, hostile: str
) -> None:
    container = f"hostile-{uuid.uuid4().hex[:8]}"  # each case on a container of its own: the server is shared
    await azurite.create_container(container, {"fine.txt": b"ok\n"})
    await azurite.put_raw_blob(container, hostile, b"evil\n")
    source = Source(storage_container_url=azurite.container_sas_url(container))
    async with Stager(options(tmp_path)) as stager:
        with pytest.raises(StagingFailed) as caught:
            await stager.stage([source], wd(tmp_path / "wd"))
    assert caught.value.code == "ResourceFileCreateFailed"
    assert "'..'" in caught.value.message or "absolute" in caught.value.message
    assert not (tmp_path / "escape.txt").exists() and not (tmp_path / "wd" / "fine.txt").exists()


async def test_a_container_is_staged_for_a_task_through_the_wire(
    pool, client: BatchClient, azurite: Azurite, tmp_path: Path
) -> None:
    [node] = await pool(1, env={"NODE_AGENT_AUTO_STORAGE_URL": azurite.account_sas_url()})
    await client.create_job(Job(id="j"))
    files = [
        ResourceFile(storage_container_url=azurite.container_sas_url("data"), blob_prefix="in/", file_path="d"),
        ResourceFile(auto_storage_container_name="data", blob_prefix="other/"),
    ]
    spec = TaskSpec(id="t", command_line="/bin/cat d/in/a.txt d/in/sub/b.txt other/c.txt", resource_files=files)
    await client.add_task("j", spec, node_id=node.node_id)
    [task] = await client.wait_for_tasks("j", ["t"], timeout_s=30)
    assert task.execution_info.result == TaskResult.SUCCESS, task.execution_info.failure_info
    stdout = node.root / "workitems" / "j" / "job-1" / "t" / "stdout.txt"
    assert stdout.read_text() == "alpha\nbravo\ncharlie\n"
