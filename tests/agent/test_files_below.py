"""The agent's listings below an opened directory (agent/files/below.py), on a real tree:
breadth first, whole listings within the budget, never through a symlink, and as the
target's credentials."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from mirrord.agent.creds import Creds
from mirrord.agent.files.below import Below, subdirs
from mirrord.agent.files.ops import FileOps
from mirrord.v1 import files_pb2


def walk(root: Path, start: list[str], budget: int, creds: Creds | None = None) -> list[str]:
    ops = FileOps(None)  # the host's root: paths are tmp_path's
    try:
        below = Below(ops.root, start, budget, lambda: creds)
        out: list[files_pb2.DirListing] = []
        while batch := below.next_batch():
            out.extend(batch)
        return [os.path.relpath(d.path, root) + f":{len(d.entries)}" for d in out]
    finally:
        ops.close()


@pytest.fixture
def tree() -> Iterator[Path]:
    # Not under pytest's tmp_path, whose parents only root may enter.
    top = Path(tempfile.mkdtemp(prefix="mirrord-below-"))
    try:
        top.chmod(0o755)
        for d in ("a/a1/a11", "a/a2", "b", "c/c1"):
            (top / d).mkdir(parents=True, mode=0o755)
        for f in ("a/x", "a/a1/y", "b/z", "c/c1/w"):
            (top / f).write_text(f)
        (top / "b" / "to-a").symlink_to(top / "a")  # a symlink to a directory
        yield top
    finally:
        shutil.rmtree(top)


def test_breadth_first_below_then_the_named_ones(tree: Path) -> None:
    top = [str(tree / "a/a1"), str(tree / "a/a2")]  # as the service seeds it for `a`
    got = walk(tree, [*top, str(tree / "c")], 100)
    assert got == ["a/a1:2", "a/a2:0", "c:1", "a/a1/a11:0", "c/c1:1"]


def test_a_symlinked_directory_is_listed_as_a_link_not_walked(tree: Path) -> None:
    got = walk(tree, [str(tree / "b")], 100)
    assert got == ["b:2"]  # z and the link itself; nothing through it
    assert walk(tree, [str(tree / "b/to-a")], 100) == []  # named directly: not followed


def test_the_budget_keeps_whole_listings(tree: Path) -> None:
    start = [str(tree / "a"), str(tree / "c")]
    assert walk(tree, start, 3) == ["a:3"]  # c's 1 entry would fit, but the walk ends
    assert walk(tree, start, 2) == []


def test_directories_the_target_cannot_read_are_left_out(tree: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (credentials)")
    os.chmod(tree / "a" / "a1", 0o700)  # root's only
    got = walk(tree, [str(tree / "a/a1"), str(tree / "a/a2"), str(tree / "c")], 100,
               Creds(1000, 1000, ()))  # fmt: skip
    assert got == ["a/a2:0", "c:1", "c/c1:1"]


def test_subdirs_are_the_real_directories_of_a_listing() -> None:
    d = files_pb2.DirEntry(name=b"d", stat=files_pb2.FileStat(mode=0o040755))
    f = files_pb2.DirEntry(name=b"f", stat=files_pb2.FileStat(mode=0o100644))
    link = files_pb2.DirEntry(name=b"l", stat=files_pb2.FileStat(mode=0o120777))
    assert subdirs("/top/", [d, f, link]) == ["/top/d"]
