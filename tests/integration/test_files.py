"""listFiles and getFile through the wire: contents, chunking, offsets, and confinement to the node root
(PROTOCOL.md "Files on a node": no '..', no absolute path, no symlink escape)."""

from __future__ import annotations

import base64
import os
from pathlib import Path
from typing import Any

import pytest

from node_agent.client.pool import BatchClient, CommandError
from node_agent.testing.nodes import FakeNode
from node_agent.wire.commands import GET_FILE_MAX_LENGTH
from node_agent.wire.specs import Job, TaskSpec

TIMEOUT_S = 20.0


async def get_chunk(client: BatchClient, node: FakeNode, path: str, **extra: int) -> dict[str, Any]:
    result: dict[str, Any] = await client.command(node.node_id, {"type": "getFile", "path": path, **extra})
    return result


async def refused(client: BatchClient, node: FakeNode, body: dict[str, Any]) -> CommandError:
    with pytest.raises(CommandError) as error:
        await client.command(node.node_id, body)
    return error.value


def shared(node: FakeNode) -> Path:
    return node.root / "shared"


# -- getFile -------------------------------------------------------------------------------------------------


async def test_get_file_returns_the_bytes_of_a_file_in_shared(pool, client: BatchClient) -> None:
    [node] = await pool(1)
    data = bytes(range(256)) * 4
    (shared(node) / "small.bin").write_bytes(data)
    result = await get_chunk(client, node, "shared/small.bin")
    assert base64.b64decode(result["content"]) == data
    assert (result["contentLength"], result["offset"], result["eof"]) == (len(data), 0, True)
    assert await client.get_file(node.node_id, "shared/small.bin") == data
    (shared(node) / "empty").write_bytes(b"")
    empty = await get_chunk(client, node, "shared/empty")
    assert (empty["content"], empty["contentLength"], empty["eof"]) == ("", 0, True)


@pytest.mark.every_broker  # a full chunk (about 700 KB of JSON) must fit NATS's 1 MB message limit
async def test_large_file_comes_back_in_chunks_of_at_most_512_kib_and_reassembles_exactly(
    pool, client: BatchClient
) -> None:
    [node] = await pool(1)
    data = os.urandom(2 * GET_FILE_MAX_LENGTH + 12_345)
    (shared(node) / "big.bin").write_bytes(data)
    chunks: list[bytes] = []
    offset = 0
    while True:
        result = await get_chunk(client, node, "shared/big.bin", offset=offset)
        chunk = base64.b64decode(result["content"])
        assert len(chunk) <= GET_FILE_MAX_LENGTH
        assert (result["contentLength"], result["offset"]) == (len(data), offset)
        chunks.append(chunk)
        offset += len(chunk)
        if result["eof"]:
            break
    assert [len(c) for c in chunks] == [GET_FILE_MAX_LENGTH, GET_FILE_MAX_LENGTH, 12_345]
    assert b"".join(chunks) == data
    assert await client.get_file(node.node_id, "shared/big.bin") == data


async def test_get_file_honours_offset_and_length(pool, client: BatchClient) -> None:
    [node] = await pool(1)
    data = b"0123456789abcdefghij"
    (shared(node) / "letters.txt").write_bytes(data)
    middle = await get_chunk(client, node, "shared/letters.txt", offset=5, length=4)
    assert (base64.b64decode(middle["content"]), middle["offset"], middle["eof"]) == (b"5678", 5, False)
    tail = await get_chunk(client, node, "shared/letters.txt", offset=15, length=100)
    assert (base64.b64decode(tail["content"]), tail["eof"]) == (b"fghij", True)
    exact_end = await get_chunk(client, node, "shared/letters.txt", offset=16, length=4)
    assert (base64.b64decode(exact_end["content"]), exact_end["eof"]) == (b"ghij", True)
    past_end = await get_chunk(client, node, "shared/letters.txt", offset=1000)
    assert (past_end["content"], past_end["contentLength"], past_end["eof"]) == ("", len(data), True)


async def test_missing_file_or_a_directory_is_file_not_found(pool, client: BatchClient) -> None:
    [node] = await pool(1)
    for path in ("shared/nothing-here", "nowhere/at/all.txt", "shared"):
        error = await refused(client, node, {"type": "getFile", "path": path})
        assert error.code == "FileNotFound", path
        assert path in error.message
    (shared(node) / "file").write_text("x")
    error = await refused(client, node, {"type": "getFile", "path": "shared/file/below"})
    assert error.code == "FileNotFound"


# -- confinement ---------------------------------------------------------------------------------------------

ESCAPES = [
    "../state",
    "../agent.log",
    "shared/../../agent.log",
    "shared/../shared/x",  # '..' is refused even where it would stay inside
    "/etc/passwd",
    "//etc/passwd",
    "shared/\x00/x",
]


async def test_dot_dot_and_absolute_paths_are_path_not_allowed(pool, client: BatchClient) -> None:
    [node] = await pool(1)
    for path in ESCAPES:
        for body in (
            {"type": "getFile", "path": path},
            {"type": "listFiles", "path": path},
            {"type": "listFiles", "path": path, "recursive": True},
        ):
            error = await refused(client, node, body)
            assert error.code == "PathNotAllowed", (body, error)


async def test_symlinks_leading_out_of_the_root_are_path_not_allowed(pool, client: BatchClient) -> None:
    [node] = await pool(1)
    # a finished task leaves a record in the agent's state directory, which must stay out of reach
    await client.create_job(Job(id="j"))
    await client.add_task("j", TaskSpec(id="t", command_line="/bin/true"), node_id=node.node_id)
    await client.wait_for_tasks("j", ["t"], timeout_s=TIMEOUT_S)
    state_files = sorted(p for p in node.state_dir.rglob("*") if p.is_file())
    assert state_files
    links = shared(node)
    (links / "passwd").symlink_to("/etc/passwd")
    (links / "etc").symlink_to("/etc")
    (links / "state").symlink_to(node.state_dir)
    (links / "state-relative").symlink_to("../../state")  # root is <base>/root, state <base>/state
    (links / "record").symlink_to(state_files[0])
    (links / "chain").symlink_to(links / "state")  # through another link
    for path in ("shared/passwd", "shared/etc/passwd", "shared/record", "shared/chain"):
        error = await refused(client, node, {"type": "getFile", "path": path})
        assert error.code == "PathNotAllowed", (path, error)
    relative = state_files[0].relative_to(node.state_dir).as_posix()
    for path in (f"shared/state/{relative}", f"shared/state-relative/{relative}"):
        error = await refused(client, node, {"type": "getFile", "path": path})
        assert error.code == "PathNotAllowed", (path, error)
    for path in ("shared/state", "shared/state-relative", "shared/etc"):
        error = await refused(client, node, {"type": "listFiles", "path": path, "recursive": True})
        assert error.code == "PathNotAllowed", (path, error)


async def test_symlink_that_stays_inside_the_root_is_followed(pool, client: BatchClient) -> None:
    [node] = await pool(1)
    (shared(node) / "real.txt").write_text("inside")
    (shared(node) / "alias.txt").symlink_to("real.txt")
    (node.root / "startup" / "to-shared").symlink_to("../shared")
    assert await client.get_file(node.node_id, "shared/alias.txt") == b"inside"
    assert await client.get_file(node.node_id, "startup/to-shared/real.txt") == b"inside"


async def test_fifo_device_and_symlink_loop_inside_the_root_are_refused_without_hanging(
    pool, client: BatchClient
) -> None:
    [node] = await pool(1)
    os.mkfifo(shared(node) / "pipe")
    (shared(node) / "pipe-link").symlink_to("pipe")
    for path in ("shared/pipe", "shared/pipe-link"):
        error = await refused(client, node, {"type": "getFile", "path": path})
        assert error.code == "PathNotAllowed", (path, error)
        assert "not a regular file" in error.message
    # a device reached through a link is refused too (it is outside the root)
    (shared(node) / "zero").symlink_to("/dev/zero")
    error = await refused(client, node, {"type": "getFile", "path": "shared/zero"})
    assert error.code == "PathNotAllowed"
    # a symlink loop is refused with a stable code, not an internal error
    (shared(node) / "loop1").symlink_to("loop2")
    (shared(node) / "loop2").symlink_to("loop1")
    for body in ({"type": "getFile", "path": "shared/loop1"}, {"type": "listFiles", "path": "shared/loop2"}):
        error = await refused(client, node, body)
        assert error.code == "PathNotAllowed", (body, error)
    # listing the directory that holds the FIFO does not open it
    names = {f["name"] for f in await client.list_files(node.node_id, "shared")}
    assert {"shared/pipe", "shared/pipe-link", "shared/zero", "shared/loop1"} <= names
    assert '"command.failed"' not in node.log_file.read_text()


# -- listFiles -----------------------------------------------------------------------------------------------


async def test_list_files_names_are_relative_to_the_node_root(pool, client: BatchClient) -> None:
    [node] = await pool(1)
    (shared(node) / "a.txt").write_text("12345")
    (shared(node) / "sub" / "deeper").mkdir(parents=True)
    (shared(node) / "sub" / "b.txt").write_text("b")
    (shared(node) / "sub" / "deeper" / "c.txt").write_text("c")

    top = {f["name"]: f for f in await client.list_files(node.node_id)}
    assert {"shared", "startup", "workitems"} <= set(top)
    assert all("/" not in name for name in top)
    assert top["shared"]["isDirectory"] is True

    flat = {f["name"]: f for f in await client.list_files(node.node_id, "shared")}
    assert set(flat) == {"shared/a.txt", "shared/sub"}
    assert flat["shared/a.txt"]["isDirectory"] is False
    assert flat["shared/a.txt"]["properties"]["contentLength"] == 5
    assert flat["shared/a.txt"]["properties"]["lastModified"].endswith("Z")
    assert flat["shared/sub"]["isDirectory"] is True

    deep = {f["name"] for f in await client.list_files(node.node_id, "shared", recursive=True)}
    assert deep == {
        "shared/a.txt",
        "shared/sub",
        "shared/sub/b.txt",
        "shared/sub/deeper",
        "shared/sub/deeper/c.txt",
    }

    sub = {f["name"] for f in await client.list_files(node.node_id, "shared/sub")}
    assert sub == {"shared/sub/b.txt", "shared/sub/deeper"}


async def test_recursive_list_of_the_root_has_no_entry_outside_it(pool, client: BatchClient) -> None:
    [node] = await pool(1)
    await client.create_job(Job(id="j"))
    await client.add_task("j", TaskSpec(id="t", command_line="echo hi"), node_id=node.node_id)
    await client.wait_for_tasks("j", ["t"], timeout_s=TIMEOUT_S)
    (shared(node) / "etc").symlink_to("/etc")
    (shared(node) / "state").symlink_to(node.state_dir)
    listing = await client.list_files(node.node_id, "", recursive=True)
    names = {f["name"] for f in listing}
    assert "workitems/j/job-1/t/stdout.txt" in names
    assert {"shared/etc", "shared/state"} <= names  # the links themselves, not what they point to
    for name in names:
        assert not name.startswith("/") and ".." not in name.split("/"), name
        assert not name.startswith(("shared/etc/", "shared/state/")), name
    links = {f["name"]: f for f in listing if f["name"] in ("shared/etc", "shared/state")}
    assert all(f["isDirectory"] is False for f in links.values())


async def test_list_files_of_a_missing_directory_or_a_file_is_file_not_found(pool, client: BatchClient) -> None:
    [node] = await pool(1)
    (shared(node) / "file.txt").write_text("x")
    for path in ("shared/none", "shared/file.txt"):
        error = await refused(client, node, {"type": "listFiles", "path": path})
        assert error.code == "FileNotFound", path
