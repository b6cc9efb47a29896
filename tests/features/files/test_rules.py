"""Path rules (upstream feature.fs precedence) and struct layouts, without I/O."""

from __future__ import annotations

import os

import pytest

from mirrord.features.files.paths import absolute
from mirrord.features.files.rules import Access, Context, FsRules
from mirrord.features.files.structs import (
    STAT_SIZE,
    STATX_SIZE,
    RemoteStat,
    pack_stat,
    pack_statx,
    unpack_stat,
    unpack_statx,
)

CTX = Context(cwd="/home/dev/proj", exe="/home/dev/proj/app", home="/home/dev", tmpdir="/tmp")
L, NF, RO, RW = Access.LOCAL, Access.NOT_FOUND, Access.READ_ONLY, Access.READ_WRITE


@pytest.mark.parametrize(
    ("path", "want"),
    [
        ("/srv/app/config.yaml", RO),
        ("/usr/lib/python3.11/os.py", L),
        ("/etc/passwd", L),
        ("/etc/hosts", RO),
        ("/etc/resolv.conf", RO),
        ("/etc/ssl/certs/ca.pem", RO),
        ("/srv/app/main.py", L),
        ("/opt/lib/libx.so", L),
        ("/home/dev/proj/data.txt", L),
        ("/home/dev/.kube/config", NF),
        ("/tmp/x", L),
        ("/", L),
        ("/proc/self/status", L),
    ],
)
def test_read_mode_defaults(path: str, want: Access) -> None:
    assert FsRules.build("read", context=CTX).decide(path) is want


def test_user_lists_precedence() -> None:
    r = FsRules.build(
        "read",
        not_found=[r"secret"],
        read_write=[r"^/srv/rw", r"secret"],
        read_only=[r"^/etc/app/"],
        local=[r"^/srv/local", r"^/etc/app/"],
        context=CTX,
    )
    assert r.decide("/srv/rw/secret") is NF  # not_found beats read_write
    assert r.decide("/srv/rw/x") is RW
    assert r.decide("/etc/app/a.conf") is RO  # read_only beats local and the /etc default
    assert r.decide("/srv/local/x") is L
    assert r.decide("/SRV/RW/X") is RW  # case-insensitive, as upstream


def test_modes() -> None:
    assert FsRules.build("write", context=CTX).decide("/srv/x") is RW
    assert FsRules.build("localwithoverrides", context=CTX).decide("/srv/x") is L
    assert FsRules.build("localwithoverrides", context=CTX).decide("/etc/hostname") is RO
    local = FsRules.build("local", read_only=["^/srv"], context=CTX)
    assert local.decide("/srv/x") is L  # local mode ignores the lists
    assert local.decide("/etc/nsswitch.conf") is RO  # ... but DNS files stay remote
    assert local.anything_remote and not local.writes_remote
    off = FsRules.build("local", dns_remote=False, context=CTX)
    assert off.decide("/etc/hosts") is L and not off.anything_remote


def test_open_for_writing_a_read_only_path_is_local() -> None:
    r = FsRules.build("read", context=CTX)
    assert r.for_open("/srv/a", os.O_RDONLY) is RO
    assert r.for_open("/srv/a", os.O_WRONLY | os.O_CREAT) is L
    assert FsRules.build("write", context=CTX).for_open("/srv/a", os.O_RDWR) is RW
    assert FsRules.build("read", read_write=["^/srv/rw"], context=CTX).writes_remote


def test_mapping_uses_upstream_replacement_syntax() -> None:
    r = FsRules.build("read", mapping=[(r"^/wanted/(?P<rest>.*)$", "/srv/${rest}")], context=CTX)
    assert r.map_path("/wanted/a/b") == "/srv/a/b"
    r = FsRules.build("read", mapping=[(r"^/w/(.*)$", "/srv/$1")], context=CTX)
    assert r.map_path("/w/c") == "/srv/c" and r.map_path("/other") == "/other"


def test_relative_paths_resolve_against_cwd_or_remote_dirfd() -> None:
    links = {"/proc/7/cwd": "/home/dev/proj", "/proc/7/fd/3": "/cache/root/srv/app"}

    def readlink(p: str) -> str:
        return links[p]

    def from_cache(p: str) -> str | None:
        return p.removeprefix("/cache/root") if p.startswith("/cache/root/") else None

    n = absolute(7, -100, "../x/./y", from_cache, readlink)
    assert n is not None and n.path == "/home/dev/x/y" and not n.in_remote_dir
    n = absolute(7, 3, "config.yaml", from_cache, readlink)
    assert n is not None and n.path == "/srv/app/config.yaml" and n.in_remote_dir
    assert absolute(7, 4, "x", from_cache, lambda p: "/local/dir") is None
    n = absolute(7, 3, "//etc//hosts", from_cache, readlink)
    assert n is not None and n.path == "/etc/hosts"


def test_stat_structs_round_trip() -> None:
    st = RemoteStat(
        dev=0x803, ino=42, nlink=2, mode=0o100640, uid=1000, gid=1001, size=123,
        blocks=8, atime_ns=1_700_000_000_123_456_789, mtime_ns=1_600_000_000_000_000_001,
        ctime_ns=5,
    )  # fmt: skip
    raw = pack_stat(st)
    assert len(raw) == STAT_SIZE == 144
    assert unpack_stat(raw) == st
    rx = pack_statx(st)
    assert len(rx) == STATX_SIZE
    back = unpack_statx(rx)
    assert (back.ino, back.mode, back.uid, back.gid, back.size, back.mtime_ns) == (
        42, 0o100640, 1000, 1001, 123, 1_600_000_000_000_000_001,
    )  # fmt: skip


def test_builtin_lists_decide_like_one_searched_regex() -> None:
    """The built-in lists are matched split (anchored patterns at position 0, the rest
    searched) for speed: the same answers as upstream's one case-insensitive search."""
    import re

    from mirrord.features.files import rules as r

    upstream = [
        p.replace(r".\.asdf/.", r".+\.asdf/.+")
        .replace(r"(^|/)jvm\.cfg$", r".*(^|/)jvm\.cfg$")
        .replace(r"/\.tool-versions$", r".*/\.tool-versions$")
        for p in r.DEFAULT_LOCAL
    ]
    one = re.compile("|".join(f"(?:{p})" for p in upstream), re.IGNORECASE)
    split = r._Builtin(r.DEFAULT_LOCAL)
    for path in [
        "/usr/lib/x.py", "/USR/lib/x", "/srv/app/config.yaml", "/srv/a.SO", "/x/.asdf/y",
        "/.asdf/y", "/a/.asdf/", "/jvm.cfg", "/srv/jvm.cfg", "/srv/xjvm.cfg", "/srv/.tool-versions",
        "/.tool-versions", "/srv/node_modules/a", "/procfs", "/proc", "/", "/srv/clr-1-pipe-2",
        "/srv/x.dll", "/srv/package.json", "/tmpx", "/var/tmp/a", "/srv/app\n/x.so",
    ]:  # fmt: skip
        assert split.search(path) == (one.search(path) is not None), path
