"""The files feature's fast checks (notify engine) agree with its handlers: a call they let
run is one the handler would have let run. Pure: fake memory, no tracee, no agent."""

from __future__ import annotations

import errno
import os
from pathlib import Path

from mirrord.features.files.cache import Cache
from mirrord.features.files.handlers import AT_EMPTY_PATH, AT_SYMLINK_NOFOLLOW, FsFeature
from mirrord.features.files.paths import AT_FDCWD
from mirrord.features.files.rules import Context, FsRules
from mirrord.features.files.structs import RemoteStat, pack_stat, pack_statx
from mirrord.supervisor.actions import Allow, Fake, Syscall
from mirrord.supervisor.syscalls import NR

PATH_AT = 0x1000


class Mem:
    def __init__(self, path: bytes) -> None:
        self.data = path + b"\0"

    def read_some(self, tid: int, addr: int, size: int) -> bytes:
        return self.data[:size]

    def read(self, addr: int, size: int) -> bytes:
        return self.data[:size].ljust(size, b"\0")

    def read_cstring(self, addr: int, limit: int = 4096) -> bytes:
        return self.data.split(b"\0", 1)[0]

    def write_pair(self, addr1: int, data1: bytes, addr2: int, data2: bytes) -> None:
        self.write(addr1, data1)
        self.write(addr2, data2)

    def write(self, addr: int, data: bytes) -> None:
        pass


def feature(tmp_path: Path, **lists: list[str]) -> FsFeature:
    rules = FsRules.build("read", context=Context(cwd="/home/dev", tmpdir=str(tmp_path)), **lists)
    return FsFeature(rules, None, Cache(str(tmp_path)))  # type: ignore[arg-type]


def stat_call(fs: FsFeature, path: bytes, flags: int = 0) -> tuple[object, bool]:
    """(the handler's answer, the fast check's) for newfstatat(AT_FDCWD, path, …)."""
    args = (AT_FDCWD & 0xFFFFFFFF, PATH_AT, 0x8000, flags, 0, 0)
    mem = Mem(path)
    fast = fs.fast_checks()[NR["newfstatat"]](os.getpid(), args, mem)
    return fs.newfstatat(Syscall(os.getpid(), NR["newfstatat"], args, 0, True), mem), fast


def test_a_local_path_is_fast_once_the_handler_decided_it(tmp_path: Path) -> None:
    fs = feature(tmp_path)
    action, fast = stat_call(fs, b"/usr/lib/python3.11/os.py")
    assert action == Allow() and not fast  # first: the handler decides
    action, fast = stat_call(fs, b"/usr/lib/python3.11/os.py")
    assert action == Allow() and fast


def test_remote_paths_are_never_fast(tmp_path: Path) -> None:
    fs = feature(tmp_path)
    for _ in range(2):
        action, fast = stat_call(fs, b"/srv/app/config.yaml")
        assert action != Allow() and not fast


def test_a_path_local_only_for_writing_is_not_remembered(tmp_path: Path) -> None:
    """read_only + an open for writing is local; a later read of it is remote."""
    fs = feature(tmp_path, read_only=["^/srv/ro"])
    args = (AT_FDCWD & 0xFFFFFFFF, PATH_AT, os.O_WRONLY, 0, 0, 0)
    mem = Mem(b"/srv/ro/file")
    sc = Syscall(os.getpid(), NR["openat"], args, 0, True)
    assert fs.openat(sc, mem) == Allow()
    assert not fs.fast_checks()[NR["openat"]](os.getpid(), args, mem)
    action, fast = stat_call(fs, b"/srv/ro/file")
    assert action != Allow() and not fast


def test_fstat_like_calls_are_fast_only_while_no_copy_was_handed_out(tmp_path: Path) -> None:
    fs = feature(tmp_path)
    assert stat_call(fs, b"", AT_EMPTY_PATH)[1]
    fs.remote_fds = True
    assert not stat_call(fs, b"", AT_EMPTY_PATH)[1]
    assert fs.fast_checks()[NR["getcwd"]](1, (0,) * 6, Mem(b""))  # type: ignore[arg-type]
    fs.remote_cwd = True
    assert not fs.fast_checks()[NR["getcwd"]](1, (0,) * 6, Mem(b""))  # type: ignore[arg-type]


class RawMem(Mem):
    """Memory as the fast checks see it (with a thread id), recording writes."""

    def __init__(self, path: bytes) -> None:
        super().__init__(path)
        self.written: dict[int, bytes] = {}

    def write(self, *args: object) -> None:  # (tid, addr, data) or a handler's (addr, data)
        addr, data = args[-2:]
        assert isinstance(addr, int) and isinstance(data, bytes)
        self.written[addr] = data


def test_a_remote_stat_the_cache_knows_is_answered_by_the_fast_check(tmp_path: Path) -> None:
    """A walk's lstat of an entry it listed: answered on the serving thread, with what
    the handler would have written."""
    fs = feature(tmp_path, not_found=["^/srv/gone"])
    st = RemoteStat(ino=7, mode=0o100640, uid=1000, size=42, mtime_ns=5_000_000_123)
    fs.cache.remember("/srv/app/config.yaml", False, st)
    nofollow = AT_SYMLINK_NOFOLLOW
    args = (AT_FDCWD & 0xFFFFFFFF, PATH_AT, 0x8000, nofollow, 0, 0)
    mem = RawMem(b"/srv/app/config.yaml")
    checks = fs.fast_checks()
    assert checks[NR["newfstatat"]](1, args, mem) == 0
    assert mem.written == {0x8000: pack_stat(st)}
    assert fs.newfstatat(Syscall(1, NR["newfstatat"], args, 0, True), mem) == Fake(0)
    statx_args = (AT_FDCWD & 0xFFFFFFFF, PATH_AT, nofollow, 0x7FF, 0x9000, 0)
    assert checks[NR["statx"]](1, statx_args, mem) == 0
    assert mem.written[0x9000] == pack_statx(st)
    # Rules still apply: a not_found path is ENOENT, as from the handler.
    gone = RawMem(b"/srv/gone/x")
    assert checks[NR["newfstatat"]](1, args, gone) == -errno.ENOENT
    assert fs.newfstatat(Syscall(1, NR["newfstatat"], args, 0, True), gone) == Fake(-errno.ENOENT)
    # Known missing (the agent said ENOENT moments ago): ENOENT, as from the handler.
    fs.cache.remember("/srv/app/none", False, None)
    none = RawMem(b"/srv/app/none")
    assert checks[NR["newfstatat"]](1, args, none) == -errno.ENOENT
    assert fs.newfstatat(Syscall(1, NR["newfstatat"], args, 0, True), none) == Fake(-errno.ENOENT)
    # Not known (a symlink's lstat says nothing of its target), or not in normal form:
    # the handler's.
    fs.cache.remember("/srv/app/link", False, RemoteStat(ino=8, mode=0o120777))
    link = RawMem(b"/srv/app/link")
    assert checks[NR["newfstatat"]](1, args, link) == 0
    assert checks[NR["newfstatat"]](1, (*args[:3], 0, 0, 0), link) is False
    for odd in (b"/srv/app//config.yaml", b"/srv/app/./config.yaml", b"srv/app/config.yaml"):
        assert checks[NR["newfstatat"]](1, args, RawMem(odd)) is False
