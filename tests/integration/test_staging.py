"""Resource files through the wire (PROTOCOL.md guarantee 4): staged before the command, failures with Azure's
codes and no retry, the node cache in resourceFilesStaged events, a full disk, and the JobPrepRelease variant."""

from __future__ import annotations

import asyncio
import os
import shlex
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from node_agent.client.pool import BatchClient
from node_agent.sample import run_sample
from node_agent.testing.nodes import FakeNode
from node_agent.wire.specs import Job, ResourceFile, TaskConstraints, TaskSpec
from node_agent.wire.status import Event, Task, TaskResult
from tests.http_files import FileServer
from tests.raw_mqtt import RawMqtt
from tests.tmpfs import small_tmpfs

TIMEOUT_S = 30.0
FAST_STAGING = {"NODE_AGENT_STAGING_RETRIES": "1", "NODE_AGENT_STAGING_RETRY_DELAY": "PT0.05S"}


@pytest.fixture
async def server() -> AsyncIterator[FileServer]:
    files = FileServer(files={"input.txt": b"forty-two\n"})
    await files.start()
    yield files
    await files.stop()


class StagedEvents:
    """resourceFilesStaged events as they arrive, waited for by task id."""

    def __init__(self, client: BatchClient) -> None:
        self.events: dict[str, Event] = {}
        self._arrived: dict[str, asyncio.Event] = {}
        client.on_event = self._on_event

    def _on_event(self, event: Event) -> None:
        if event.type == "resourceFilesStaged" and event.task_id is not None:
            self.events[event.task_id] = event
            self._arrived.setdefault(event.task_id, asyncio.Event()).set()

    async def wait(self, task_id: str) -> Event:
        async with asyncio.timeout(TIMEOUT_S):
            await self._arrived.setdefault(task_id, asyncio.Event()).wait()
        return self.events[task_id]


def sh(script: str) -> str:
    return shlex.join(["/bin/sh", "-c", script])


def wd(node: FakeNode, job_id: str, task_id: str) -> Path:
    return node.root / "workitems" / job_id / "job-1" / task_id / "wd"


async def run(client: BatchClient, node: FakeNode, job_id: str, spec: TaskSpec) -> Task:
    await client.add_task(job_id, spec, node_id=node.node_id)
    [task] = await client.wait_for_tasks(job_id, [spec.id], timeout_s=TIMEOUT_S)
    return task


async def test_tasks_get_their_files_before_they_start_and_share_the_node_cache(
    pool, client: BatchClient, server: FileServer
) -> None:
    [node] = await pool(1, env=FAST_STAGING)
    staged = StagedEvents(client)
    await client.create_job(Job(id="j"))
    files = [ResourceFile(http_url=server.url("files/input.txt"), file_path="data/input.txt", file_mode="0750")]
    for task_id in ("first", "second"):
        spec = TaskSpec(id=task_id, command_line=sh("cat data/input.txt"), resource_files=files)
        task = await run(client, node, "j", spec)
        assert task.execution_info.result == TaskResult.SUCCESS, task.execution_info.failure_info
        assert (wd(node, "j", task_id).parent / "stdout.txt").read_text() == "forty-two\n"
        assert (wd(node, "j", task_id) / "data" / "input.txt").stat().st_mode & 0o777 == 0o750
    first, second = (await staged.wait("first")).staging, (await staged.wait("second")).staging
    assert first is not None and second is not None
    assert (first.files, first.cache_misses, first.cache_hits, first.bytes_downloaded) == (1, 1, 0, 10)
    assert (second.files, second.cache_misses, second.cache_hits, second.bytes_downloaded) == (1, 0, 1, 0)
    assert second.bytes_from_cache == 10
    # The second task's download was a conditional request answered 304, without a body.
    assert [(r.conditional, r.status, r.body_bytes) for r in server.requests] == [(False, 200, 10), (True, 304, 0)]
    cache = node.state_dir / "staging-cache"
    assert (cache / "index.json").is_file() and str(node.root) not in str(cache.resolve())


async def test_a_staging_failure_fails_the_attempt_before_the_command_and_is_not_retried(
    pool, client: BatchClient, server: FileServer
) -> None:
    [node] = await pool(1, env=FAST_STAGING)
    await client.create_job(Job(id="j"))
    cases = {"missing": ("files/nope.bin", "BlobNotFound"), "denied": ("status/403/x", "BlobAccessDenied")}
    for task_id, (route, code) in cases.items():
        spec = TaskSpec(
            id=task_id,
            command_line=sh("touch ran"),
            resource_files=[ResourceFile(http_url=server.url(route), file_path="in/file.bin")],
            constraints=TaskConstraints(max_task_retry_count=3),
        )
        info = (await run(client, node, "j", spec)).execution_info
        assert info.result == TaskResult.FAILURE and info.exit_code is None and info.retry_count == 0
        assert info.failure_info is not None
        assert (info.failure_info.code, info.failure_info.category) == (code, "usererror")
        assert "'in/file.bin'" in info.failure_info.message and route in info.failure_info.message
        assert not (wd(node, "j", task_id) / "ran").exists()
    assert len(server.requests) == 2  # one request each: a staging failure is never retried


async def test_terminating_a_task_cancels_its_staging(pool, client: BatchClient, server: FileServer) -> None:
    [node] = await pool(1)  # default timeouts: the stalled download would hang for minutes
    await client.create_job(Job(id="j"))
    spec = TaskSpec(
        id="stuck",
        command_line=sh("touch ran"),
        resource_files=[ResourceFile(http_url=server.url("stall/big.bin"), file_path="big.bin")],
    )
    await client.add_task("j", spec, node_id=node.node_id)
    async with asyncio.timeout(TIMEOUT_S):
        await server.stalled.wait()
    await client.terminate_task("j", "stuck")
    [task] = await client.wait_for_tasks("j", ["stuck"], timeout_s=TIMEOUT_S)
    info = task.execution_info
    assert info.failure_info is not None and info.failure_info.code == "TaskEnded" and info.exit_code is None
    assert not (wd(node, "j", "stuck") / "ran").exists()
    assert [p.name for p in wd(node, "j", "stuck").iterdir()] == []  # no partial file
    assert [p.name for p in (node.state_dir / "staging-cache").iterdir() if ".part-" in p.name] == []


async def test_a_file_path_outside_the_working_directory_is_refused_at_add_task(
    pool, client: BatchClient, raw: RawMqtt, server: FileServer
) -> None:
    [node] = await pool(1, env=FAST_STAGING)
    await client.create_job(Job(id="j"))
    topic = f"{raw.prefix}/nodes/{node.node_id}/commands"
    for number, path in enumerate(["../escape", "/tmp/escape", "a/../../escape"]):
        request_id = f"bad{number}"
        task = {"id": f"t{number}", "commandLine": "/bin/true", "resourceFiles": [{"httpUrl": server.url("x")}]}
        task["resourceFiles"][0]["filePath"] = path  # type: ignore[index]
        body = {"type": "addTask", "jobId": "j", "task": task}
        await raw.publish(topic, raw.command(node.node_id, body, request_id))
        [reply] = await raw.wait_until(lambda rid=request_id: raw.replies(rid))
        assert reply["ok"] is False and "filePath" in reply["error"]["message"], reply
    assert server.requests == [] and not (node.root / "workitems" / "j").exists()


async def test_a_full_disk_fails_with_disk_full_and_the_agent_keeps_serving(
    pool, client: BatchClient, server: FileServer, tmp_path: Path
) -> None:
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(6 << 20))
    server.paths["big.bin"] = big
    with small_tmpfs(tmp_path / "small", "2m") as small:
        [node] = await pool(1, env={**FAST_STAGING, "NODE_AGENT_STAGING_CACHE_DIR": str(small / "cache")})
        await client.create_job(Job(id="j"))
        spec = TaskSpec(
            id="big",
            command_line="/bin/true",
            resource_files=[ResourceFile(http_url=server.url("chunked/big.bin"), file_path="big.bin")],
        )
        info = (await run(client, node, "j", spec)).execution_info
        assert info.failure_info is not None
        assert (info.failure_info.code, info.failure_info.category) == ("DiskFull", "servererror")
        assert [p.name for p in (small / "cache").iterdir() if ".part-" in p.name] == []
        assert not (wd(node, "j", "big") / "big.bin").exists()
        small_file = [ResourceFile(http_url=server.url("files/input.txt"), file_path="input.txt")]
        ok = await run(client, node, "j", TaskSpec(id="ok", command_line="/bin/true", resource_files=small_file))
        assert ok.execution_info.result == TaskResult.SUCCESS
        await node.stop()  # before the tmpfs goes: the agent holds nothing open there


async def test_job_prep_release_variant_downloads_the_data_once_per_node(
    pool, client: BatchClient, server: FileServer
) -> None:
    server.files["data.bin"] = os.urandom(256 << 10)
    nodes = await pool(2, env=FAST_STAGING)
    job_id = f"sample{uuid.uuid4().hex[:6]}"
    lines: list[str] = []
    codes = await run_sample(
        client, [n.node_id for n in nodes], lines.append, job_id=job_id, data_url=server.url("files/data.bin")
    )
    assert codes and all(code == (0, 0) for code in codes.values()), codes
    downloads = server.served("/files/data.bin")
    assert len(downloads) == len(codes)  # once per node that ran the preparation, never per task
    assert sorted(line.strip() for line in lines if line.startswith("  task")) == [f"task{n:03d}" for n in range(1, 9)]
