"""files.resolve_inside and the listFiles/getFile handlers on a tmp_path node root: nothing leaves it."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest

from node_agent.agent import files
from node_agent.errors import InputError


@pytest.fixture
def root(tmp_path: Path) -> Path:
    node_root = tmp_path / "root"
    (node_root / "shared" / "sub").mkdir(parents=True)
    (node_root / "shared" / "a.txt").write_text("hello")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret").write_text("secret")
    return node_root


def refused_code(root: Path, relative: str) -> str:
    with pytest.raises(InputError) as error:
        files.resolve_inside(root, relative)
    return error.value.code


def test_relative_path_resolves_under_the_root(root: Path) -> None:
    assert files.resolve_inside(root, "shared/a.txt") == (root / "shared" / "a.txt").resolve()
    assert files.resolve_inside(root, "shared/./sub/") == (root / "shared" / "sub").resolve()
    assert files.resolve_inside(root, "") == root.resolve()
    assert files.resolve_inside(root, ".") == root.resolve()
    assert files.resolve_inside(root, "not/there/yet") == root.resolve() / "not" / "there" / "yet"


@pytest.mark.parametrize(
    "relative",
    ["..", "../outside/secret", "shared/../../outside", "shared/../a.txt", "/etc/passwd", "//x", "a\x00b"],
)
def test_dot_dot_absolute_and_nul_paths_are_not_allowed(root: Path, relative: str) -> None:
    assert refused_code(root, relative) == "PathNotAllowed"


def test_symlink_to_a_file_outside_is_not_allowed(root: Path) -> None:
    (root / "shared" / "leak").symlink_to(root.parent / "outside" / "secret")
    assert refused_code(root, "shared/leak") == "PathNotAllowed"


def test_symlink_to_a_directory_outside_is_not_allowed_nor_anything_below_it(root: Path) -> None:
    (root / "shared" / "out").symlink_to(root.parent / "outside")
    (root / "shared" / "rel").symlink_to("../../outside")
    for relative in ("shared/out", "shared/out/secret", "shared/rel/secret", "shared/rel/missing"):
        assert refused_code(root, relative) == "PathNotAllowed", relative


def test_symlink_loop_is_not_allowed(root: Path) -> None:
    (root / "shared" / "loop1").symlink_to("loop2")
    (root / "shared" / "loop2").symlink_to("loop1")
    assert refused_code(root, "shared/loop1") == "PathNotAllowed"
    assert refused_code(root, "shared/loop2/below") == "PathNotAllowed"


def test_symlink_that_stays_inside_is_resolved(root: Path) -> None:
    (root / "shared" / "alias").symlink_to("a.txt")
    assert files.resolve_inside(root, "shared/alias") == (root / "shared" / "a.txt").resolve()


def test_a_root_that_is_itself_a_symlink_still_confines(tmp_path: Path, root: Path) -> None:
    link = tmp_path / "root-link"
    link.symlink_to(root)
    assert files.resolve_inside(link, "shared/a.txt") == (root / "shared" / "a.txt").resolve()
    assert refused_code(link, "../outside/secret") == "PathNotAllowed"


# -- the handlers --------------------------------------------------------------------------------------------


async def test_get_file_reads_a_slice_and_reports_eof(root: Path) -> None:
    result = await files.get_file(root, "shared/a.txt", 1, 3)
    assert (base64.b64decode(result["content"]), result["contentLength"], result["eof"]) == (b"ell", 5, False)
    result = await files.get_file(root, "shared/a.txt", 0, 100)
    assert (base64.b64decode(result["content"]), result["eof"]) == (b"hello", True)


async def test_get_file_refuses_missing_files_directories_and_special_files(root: Path) -> None:
    os.mkfifo(root / "shared" / "pipe")
    (root / "shared" / "outlink").symlink_to(root.parent / "outside" / "secret")
    expected = {
        "shared/missing": "FileNotFound",
        "shared/a.txt/below": "FileNotFound",
        "shared/sub": "FileNotFound",
        "shared/pipe": "PathNotAllowed",
        "shared/outlink": "PathNotAllowed",
    }
    for relative, code in expected.items():
        with pytest.raises(InputError) as error:
            await files.get_file(root, relative, 0, 10)
        assert error.value.code == code, relative


async def test_list_files_is_relative_to_the_root_and_does_not_follow_links_out(root: Path) -> None:
    (root / "shared" / "sub" / "b.txt").write_text("b")
    (root / "shared" / "out").symlink_to(root.parent / "outside")
    flat = {f["name"]: f for f in (await files.list_files(root, "shared", False))["value"]}
    assert set(flat) == {"shared/a.txt", "shared/out", "shared/sub"}
    assert flat["shared/out"]["isDirectory"] is False  # the link itself, not the directory it names
    assert flat["shared/a.txt"]["properties"]["contentLength"] == 5
    deep = {f["name"] for f in (await files.list_files(root, "", True))["value"]}
    assert deep == {"shared", "shared/a.txt", "shared/out", "shared/sub", "shared/sub/b.txt"}


async def test_list_files_stops_at_the_limit(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for number in range(5):
        (root / "shared" / "sub" / f"f{number}").write_text("")
    monkeypatch.setattr(files, "LIST_LIMIT", 3)
    assert len((await files.list_files(root, "", True))["value"]) == 3


async def test_list_files_of_a_file_or_missing_directory_is_file_not_found(root: Path) -> None:
    for relative in ("shared/a.txt", "nothing"):
        with pytest.raises(InputError) as error:
            await files.list_files(root, relative, False)
        assert error.value.code == "FileNotFound"


# Found by the hostile-input property test (tests/integration/test_hostile_input.py): both once reached the
# agent's InternalError boundary instead of getting a clear error reply.


async def test_get_file_past_the_end_or_at_a_huge_offset_reads_nothing(root: Path) -> None:
    (root / "f.txt").write_bytes(b"hello")
    for offset in (5, 6, 1 << 62, (1 << 63) - 1):
        result = await files.get_file(root, "f.txt", offset, 10)
        assert (result["content"], result["eof"], result["contentLength"]) == ("", True, 5)


async def test_list_files_with_an_overlong_name_is_file_not_found(root: Path) -> None:
    with pytest.raises(InputError) as refused:
        await files.list_files(root, "a" * 5000, recursive=False)
    assert refused.value.code == "FileNotFound" and "longer than 255" in refused.value.message
