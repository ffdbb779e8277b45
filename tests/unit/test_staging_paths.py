"""staging/paths.py: a resource file's target stays in the working directory, whatever the path or the links."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from node_agent.errors import StagingFailed
from node_agent.staging.paths import confined_target, relative_parts


@pytest.mark.parametrize("path", ["", "../x", "a/../../x", "a/..", "/etc/passwd", ".", "./", "a\x00b"])
def test_hostile_or_empty_paths_are_refused(path: str) -> None:
    with pytest.raises(StagingFailed) as caught:
        relative_parts(path)
    assert caught.value.code == "ResourceFileCreateFailed"
    assert caught.value.category == "usererror"


def test_plain_paths_split_into_parts() -> None:
    assert relative_parts("a/./b//c.txt") == ("a", "b", "c.txt")


def test_parents_are_created_inside_the_working_directory(tmp_path: Path) -> None:
    target = confined_target(tmp_path, "in/deep/file.bin")
    assert target == tmp_path / "in" / "deep" / "file.bin"
    assert target.parent.is_dir() and not target.exists()


def test_a_symlinked_directory_in_the_working_directory_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    working = tmp_path / "wd"
    working.mkdir()
    os.symlink(outside, working / "link")
    with pytest.raises(StagingFailed, match="'link' is a symbolic link"):
        confined_target(working, "link/x")
    assert list(outside.iterdir()) == []


def test_a_symlink_as_the_file_itself_is_returned_to_be_replaced_not_followed(tmp_path: Path) -> None:
    os.symlink("/etc/passwd", tmp_path / "f")
    assert confined_target(tmp_path, "f") == tmp_path / "f"


def test_a_file_where_a_directory_is_needed_is_refused(tmp_path: Path) -> None:
    (tmp_path / "a").write_text("x")
    with pytest.raises(StagingFailed, match="not a directory"):
        confined_target(tmp_path, "a/b")
    (tmp_path / "d").mkdir()
    with pytest.raises(StagingFailed, match="a directory of that name exists"):
        confined_target(tmp_path, "d")
