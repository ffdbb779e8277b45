"""Removing a task directory never follows a link out of it, and copes with read-only and open files; the state lock."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from node_agent.retention.removal import Removal, is_symlink_safe, remove_below, usage_below
from node_agent.store.lock import StateLocked, lock_state_dir

NOBODY = 65534
TASK = ("workitems", "j1", "job-1", "t1")


@pytest.fixture
def root(tmp_path: Path) -> Path:
    task_dir = tmp_path.joinpath("root", *TASK)
    (task_dir / "wd").mkdir(parents=True)
    (task_dir / "stdout.txt").write_text("hello\n")
    return tmp_path / "root"


def test_shutil_rmtree_is_the_variant_that_never_follows_links() -> None:
    assert shutil.rmtree.avoids_symlink_attacks
    assert is_symlink_safe()


def test_removes_the_directory_and_counts_its_blocks(root: Path) -> None:
    (root.joinpath(*TASK) / "wd" / "big").write_bytes(b"x" * 100_000)
    size = usage_below(root, TASK)

    removal = remove_below(root, TASK)

    assert removal == Removal(existed=True, complete=True, bytes_freed=size or -1)
    assert removal.bytes_freed >= 100_000
    assert not root.joinpath(*TASK).exists()
    assert root.joinpath(*TASK[:-1]).is_dir()  # only the task's own directory goes


def test_missing_directory_is_reported_as_not_there(root: Path) -> None:
    assert remove_below(root, ("workitems", "j1", "job-1", "other")) == Removal(False, True, 0)
    assert remove_below(root, ("workitems", "nojob", "job-1", "t1")) == Removal(False, True, 0)
    assert usage_below(root, ("workitems", "nojob", "job-1", "t1")) is None


def test_links_inside_are_removed_not_their_targets(root: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious.txt").write_text("keep me")
    other_task = root.joinpath(*TASK[:-1], "t2")
    other_task.mkdir()
    (other_task / "stdout.txt").write_text("other")
    wd = root.joinpath(*TASK) / "wd"
    (wd / "dir-link").symlink_to(outside)
    (wd / "file-link").symlink_to(outside / "precious.txt")
    (wd / "task-link").symlink_to(other_task)
    (wd / "shared-link").symlink_to(root / "shared", target_is_directory=True)

    assert remove_below(root, TASK).complete

    assert (outside / "precious.txt").read_text() == "keep me"
    assert (other_task / "stdout.txt").read_text() == "other"
    assert not root.joinpath(*TASK).exists()


def test_a_task_directory_replaced_by_a_link_loses_the_link_only(root: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious.txt").write_text("keep me")
    shutil.rmtree(root.joinpath(*TASK))
    root.joinpath(*TASK).symlink_to(outside)

    assert remove_below(root, TASK).complete

    assert not root.joinpath(*TASK).is_symlink()
    assert (outside / "precious.txt").read_text() == "keep me"


def test_a_link_planted_above_the_task_directory_is_not_followed(root: Path, tmp_path: Path) -> None:
    decoy = tmp_path / "decoy"
    decoy.joinpath("t1").mkdir(parents=True)
    (decoy / "t1" / "precious.txt").write_text("keep me")
    job_1 = root.joinpath(*TASK[:-1])
    shutil.rmtree(job_1)
    job_1.symlink_to(decoy)  # workitems/j1/job-1 -> decoy, so workitems/j1/job-1/t1 "is" decoy/t1

    removal = remove_below(root, TASK)

    assert (removal.existed, removal.complete, removal.bytes_freed) == (True, False, 0)
    assert removal.error is not None and "job-1" in removal.error
    assert (decoy / "t1" / "precious.txt").read_text() == "keep me"


def test_an_open_file_does_not_stop_the_removal(root: Path) -> None:
    with open(root.joinpath(*TASK) / "wd" / "held.log", "w") as held:
        held.write("still writing")
        assert remove_below(root, TASK).complete
    assert not root.joinpath(*TASK).exists()


def test_files_of_another_user_in_read_only_directories_are_removed_by_root(root: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to create another user's files")
    locked = root.joinpath(*TASK) / "wd" / "locked"
    (locked / "sub").mkdir(parents=True)
    (locked / "sub" / "f").write_text("x")
    for path in (locked, locked / "sub", locked / "sub" / "f"):
        os.chown(path, NOBODY, NOBODY)
    os.chmod(locked / "sub", 0)
    os.chmod(locked, 0o500)

    assert remove_below(root, TASK).complete
    assert not root.joinpath(*TASK).exists()


@pytest.fixture
def as_owner() -> Iterator[tuple[Path, Callable[[Callable[[], bool]], bool]]]:
    """A root (outside pytest's private temp dir) and a way to run a check as the user who owns it:
    the test's own user, or, when the tests run as root, nobody (in a forked child)."""
    base = Path(tempfile.mkdtemp(prefix="removal-", dir="/tmp"))
    is_root = os.geteuid() == 0

    def run(check: Callable[[], bool]) -> bool:
        if not is_root:
            return check()
        pid = os.fork()
        if pid == 0:  # the child: drop to nobody, run, report through the exit status
            try:
                os.setgid(NOBODY)
                os.setuid(NOBODY)
                os._exit(0 if check() else 1)
            except BaseException:
                os._exit(2)
        return os.waitpid(pid, 0)[1] == 0

    try:
        yield base, run
    finally:
        for folder, _, _ in os.walk(base):
            os.chmod(folder, 0o700)
        shutil.rmtree(base)


def test_read_only_directories_left_by_a_task_are_made_removable(
    as_owner: tuple[Path, Callable[[Callable[[], bool]], bool]],
) -> None:
    base, run = as_owner
    task_dir = base.joinpath("root", *TASK)
    deep = task_dir / "wd" / "ro" / "deeper"
    deep.mkdir(parents=True)
    (deep / "f").write_text("x")
    for path in [base, *base.rglob("*")]:
        os.chown(path, NOBODY, NOBODY) if os.geteuid() == 0 else None
    os.chmod(deep, 0)  # neither listable nor searchable
    os.chmod(task_dir / "wd" / "ro", 0o500)  # entries cannot be unlinked

    assert run(lambda: remove_below(base / "root", TASK).complete)
    assert not task_dir.exists()


def test_the_state_directory_lock_admits_one_holder_at_a_time(tmp_path: Path) -> None:
    first = lock_state_dir(tmp_path)
    try:
        with pytest.raises(StateLocked, match="in use by another node-agent process"):
            lock_state_dir(tmp_path)
    finally:
        os.close(first)
    os.close(lock_state_dir(tmp_path))  # free again once the holder let go
