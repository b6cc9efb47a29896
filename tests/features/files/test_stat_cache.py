"""The short-lived stat cache: a remote directory's listing (and Open/Stat answers) answer
stat/lstat of those paths without an agent round trip, for STAT_TTL_S at most, and our
own changes drop what they made stale. Handlers run on a fake remote and fake memory."""

from __future__ import annotations

import asyncio
import errno
import os
import stat as statmod
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from mirrord.features.files import cache as cache_mod
from mirrord.features.files.cache import STAT_TTL_S, Cache
from mirrord.features.files.handlers import AT_SYMLINK_NOFOLLOW, FsFeature
from mirrord.features.files.paths import AT_FDCWD
from mirrord.features.files.remote import Entry, Listing, Opened, PathOp
from mirrord.features.files.rules import Context, FsRules
from mirrord.features.files.structs import STAT_SIZE, RemoteStat, unpack_stat
from mirrord.features.files.walks import PREFETCH_ENTRIES
from mirrord.supervisor.actions import Action, Allow, Defer, Fake, Memory, Syscall

DIR = RemoteStat(ino=10, mode=statmod.S_IFDIR | 0o755, uid=1000, gid=1000, mtime_ns=7)
A = RemoteStat(ino=11, mode=statmod.S_IFREG | 0o640, uid=1000, gid=2000, size=321, mtime_ns=5)
LINK = RemoteStat(ino=12, mode=statmod.S_IFLNK | 0o777, size=1)
NAME_AT, BUF_AT = 0x1000, 0x8000


class FakeRemote:
    def __init__(self) -> None:
        self.files: dict[str, RemoteStat] = {"/srv/d": DIR, "/srv/d/a": A, "/srv/d/l": LINK}
        self.calls: list[str] = []
        self.also: list[list[str]] = []  # each open's `also`
        self.prefetch: list[int] = []  # and its `prefetch`
        self.release = asyncio.Event()
        self.release.set()
        self.walks: list[asyncio.Future[None]] = []
        self.ahead = True  # answer prefetch (as a 1.4 agent)

    async def stat(self, path: str, follow: bool) -> tuple[int, RemoteStat | None]:
        self.calls.append(f"stat {path}")
        st = self.files.get(path)
        if st is not None and follow and statmod.S_ISLNK(st.mode):
            st = None  # its target (never there)
        return (0, st) if st is not None else (errno.ENOENT, None)

    async def access(self, path: str, mode: int, follow: bool) -> int:
        self.calls.append(f"access {path}")
        answer = 0 if path in self.files else errno.ENOENT  # as the pod is when asked
        await self.release.wait()
        return answer

    async def readlink(self, path: str) -> tuple[int, bytes]:
        return 0, b"a"

    async def open(
        self,
        path: str,
        flags: int,
        mode: int,
        known: RemoteStat | None,
        sink: Callable[[bytes], object],
        resolve: int = 0,
        base: str = "",
        prefetch: int = 0,
        also: Sequence[str] = (),
        below: Callable[[list[Listing]], None] | None = None,
        below_end: Callable[[], None] | None = None,
    ) -> Opened:
        """As the agent: for a directory, the listings below it (then `also`), breadth
        first within `prefetch` entries, come after open() returned, once `release` is
        set (at once by default)."""
        self.calls.append(f"open {path}")
        self.also.append(list(also))
        self.prefetch.append(prefetch)
        st = self.files.get(path)
        if st is None:
            return Opened(errno=errno.ENOENT)
        opened = Opened(stat=st, entries=self._entries(path))
        if self.ahead and prefetch and below is not None and statmod.S_ISDIR(st.mode):
            opened.below_follows = True
            start = [*self._subdirs(path), *also]
            self.walks.append(asyncio.ensure_future(self._walk(start, prefetch, below, below_end)))
        return opened

    def _entries(self, path: str) -> list[Entry]:
        return [
            Entry(os.fsencode(p.rsplit("/", 1)[1]), s)
            for p, s in self.files.items()
            if p.startswith(path + "/") and "/" not in p[len(path) + 1 :]
        ]

    def _subdirs(self, path: str) -> list[str]:
        return [f"{path}/{os.fsdecode(e.name)}" for e in self._entries(path)
                if statmod.S_ISDIR(e.stat.mode)]  # fmt: skip

    async def _walk(
        self,
        queue: list[str],
        left: int,
        below: Callable[[list[Listing]], None],
        end: Callable[[], None] | None,
    ) -> None:
        await self.release.wait()
        while queue:
            path = queue.pop(0)
            entries = self._entries(path)
            if len(entries) > left:
                break
            left -= len(entries)
            below([Listing(path, self.files[path], lambda e=entries: e)])
            queue.extend(self._subdirs(path))
            await asyncio.sleep(0)
        if end is not None:
            end()

    async def store(self, path: str, chunks: AsyncIterator[bytes]) -> tuple[int, RemoteStat | None]:
        return 0, None

    async def path_op(
        self,
        op: PathOp,
        path: str,
        *,
        path2: str = "",
        mode: int = 0,
        flags: int = 0,
        length: int = 0,
    ) -> int:
        self.calls.append(f"{op.name.lower()} {path}")
        if op is PathOp.UNLINK:
            self.files.pop(path, None)
        elif op is PathOp.MKDIR:
            self.files[path] = DIR
        return 0


class FakeMem:
    def __init__(self) -> None:
        self.data: dict[int, bytes] = {}

    def put(self, addr: int, data: bytes) -> None:
        self.data[addr] = data

    def read(self, addr: int, size: int) -> bytes:
        return self.data[addr][:size]

    def write_pair(self, addr1: int, data1: bytes, addr2: int, data2: bytes) -> None:
        self.write(addr1, data1)
        self.write(addr2, data2)

    def write(self, addr: int, data: bytes) -> None:
        self.data[addr] = data

    def read_cstring(self, addr: int, limit: int = 4096) -> bytes:
        return self.data[addr].split(b"\0", 1)[0]


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[tuple[FsFeature, FakeRemote, Clock]]:
    clock = Clock()
    remote = FakeRemote()
    rules = FsRules.build("write", context=Context(cwd="/home/dev", tmpdir=str(tmp_path)))
    cache = Cache(str(tmp_path), clock=clock)
    try:
        yield FsFeature(rules, remote, cache), remote, clock
    finally:
        cache.close()


async def run(action: Action, mem: Memory) -> Action:
    """Apply Defers as the tracer would (work on the loop, then on "the tracer")."""
    while isinstance(action, Defer):
        try:
            result: Any = await action.work()
        except Exception as e:
            result = e
        action = action.then(result, mem)
    return action


async def lstat(fs: FsFeature, path: str, follow: bool = False) -> tuple[Action, FakeMem]:
    mem = FakeMem()
    mem.put(NAME_AT, path.encode() + b"\0")
    flags = 0 if follow else AT_SYMLINK_NOFOLLOW
    sc = Syscall(1, 262, (AT_FDCWD & 0xFFFFFFFF, NAME_AT, BUF_AT, flags, 0, 0), 0x7FFF0000)
    return await run(fs.newfstatat(sc, mem), mem), mem


async def opendir(fs: FsFeature, path: str) -> None:
    mem = FakeMem()
    mem.put(NAME_AT, path.encode() + b"\0")
    sc = Syscall(1, 257, (AT_FDCWD & 0xFFFFFFFF, NAME_AT, os.O_DIRECTORY, 0, 0, 0), 0x7FFF0000)
    action = await run(fs.openat(sc, mem), mem)
    assert isinstance(action, Allow) and action.set_args  # rewritten to the copy


def stat_written(mem: FakeMem) -> RemoteStat:
    raw = mem.data[BUF_AT]
    assert len(raw) == STAT_SIZE
    return unpack_stat(raw)


async def test_listing_answers_lstat_of_entries_without_a_round_trip(
    setup: tuple[FsFeature, FakeRemote, Clock],
) -> None:
    fs, remote, _clock = setup
    await opendir(fs, "/srv/d")
    assert remote.calls == ["open /srv/d"]
    action, mem = await lstat(fs, "/srv/d/a")
    assert action == Fake(0)
    assert stat_written(mem) == A  # the remote's mode, uid/gid, size, times, inode
    action, mem = await lstat(fs, "/srv/d/l")
    assert action == Fake(0) and stat_written(mem) == LINK
    action, mem = await lstat(fs, "/srv/d/a", follow=True)  # not a symlink: same stat
    assert action == Fake(0) and stat_written(mem) == A
    action, mem = await lstat(fs, "/srv/d", follow=True)  # the directory itself
    assert action == Fake(0) and stat_written(mem) == DIR
    assert remote.calls == ["open /srv/d"]
    # Following a symlink needs its target: asked.
    await lstat(fs, "/srv/d/l", follow=True)
    assert remote.calls == ["open /srv/d", "stat /srv/d/l"]


async def test_stat_answers_are_kept_and_go_stale_after_the_ttl(
    setup: tuple[FsFeature, FakeRemote, Clock],
) -> None:
    fs, remote, clock = setup
    await opendir(fs, "/srv/d")
    remote.files["/srv/d/a"] = changed = RemoteStat(ino=11, mode=A.mode, size=999)
    clock.now += STAT_TTL_S / 2
    _, mem = await lstat(fs, "/srv/d/a")
    assert stat_written(mem) == A  # within the bound: the listed metadata
    clock.now += STAT_TTL_S  # past the bound: asked again, and the answer is kept
    _, mem = await lstat(fs, "/srv/d/a")
    assert stat_written(mem) == changed
    assert remote.calls == ["open /srv/d", "stat /srv/d/a"]
    _, mem = await lstat(fs, "/srv/d/a")
    assert stat_written(mem) == changed
    assert remote.calls == ["open /srv/d", "stat /srv/d/a"]


async def test_our_own_changes_drop_cached_stats(
    setup: tuple[FsFeature, FakeRemote, Clock],
) -> None:
    fs, remote, _clock = setup
    await opendir(fs, "/srv/d")
    mem = FakeMem()
    mem.put(NAME_AT, b"/srv/d/a\0")
    action = await run(fs.unlink(Syscall(1, 87, (NAME_AT, 0, 0, 0, 0, 0)), mem), mem)
    assert action == Fake(0)
    action, _ = await lstat(fs, "/srv/d/a")
    assert action == Fake(-errno.ENOENT)  # not the listed stat of the removed file
    remote.files["/srv/d"] = newer = RemoteStat(ino=10, mode=DIR.mode, mtime_ns=8)
    _, mem = await lstat(fs, "/srv/d")  # the parent changed too: asked again
    assert stat_written(mem) == newer
    assert remote.calls == ["open /srv/d", "unlink /srv/d/a", "stat /srv/d/a", "stat /srv/d"]


def test_cache_invalidate_is_by_prefix(tmp_path: Path) -> None:
    clock = Clock()
    cache = Cache(str(tmp_path), clock=clock)
    try:
        for p in ("/a", "/a/b", "/a/b/c", "/a/bc", "/x"):
            cache.remember(p, False, A)
        cache.invalidate("/a/b")
        assert cache.cached_stat("/a/b", False) is None
        assert cache.cached_stat("/a/b/c", True) is None
        assert cache.cached_stat("/a", False) is None  # the parent
        assert cache.cached_stat("/a/bc", False) == A
        assert cache.cached_stat("/x", True) == A
    finally:
        cache.close()


async def call(fs: FsFeature, name: str, path: str, *rest: int) -> Action:
    """A one-path call (access, openat with AT_FDCWD, mkdir) run to its answer."""
    mem = FakeMem()
    mem.put(NAME_AT, path.encode() + b"\0")
    nr = {"access": 21, "openat": 257, "mkdir": 83, "getxattr": 191, "lgetxattr": 192}[name]
    head = (AT_FDCWD & 0xFFFFFFFF, NAME_AT) if name == "openat" else (NAME_AT,)
    args = (*head, *rest, 0, 0, 0, 0, 0)[:6]
    return await run(getattr(fs, name)(Syscall(1, nr, args, 0x7FFF0000), mem), mem)


async def test_a_missing_path_is_remembered_as_missing(
    setup: tuple[FsFeature, FakeRemote, Clock],
) -> None:
    """A program probing for a file the pod does not have (a config it polls, a
    library path) asks the agent once per STAT_TTL_S, not once per call: stat, lstat,
    open and access of it answer ENOENT from what the agent said moments ago."""
    fs, remote, clock = setup
    action, _ = await lstat(fs, "/srv/d/new")
    assert action == Fake(-errno.ENOENT)
    assert remote.calls == ["stat /srv/d/new"]
    for follow in (False, True):
        assert (await lstat(fs, "/srv/d/new", follow))[0] == Fake(-errno.ENOENT)
    assert await call(fs, "openat", "/srv/d/new", os.O_RDONLY) == Fake(-errno.ENOENT)
    assert await call(fs, "access", "/srv/d/new", os.R_OK) == Fake(-errno.ENOENT)
    assert remote.calls == ["stat /srv/d/new"]
    # Created in the pod by someone else: seen once the bound has passed.
    remote.files["/srv/d/new"] = A
    clock.now += STAT_TTL_S + 0.1
    _, mem = await lstat(fs, "/srv/d/new")
    assert stat_written(mem) == A
    assert remote.calls == ["stat /srv/d/new", "stat /srv/d/new"]
    # A symlink's target missing says nothing of the link itself (lstat).
    remote.files["/srv/d/dangling"] = LINK
    assert (await lstat(fs, "/srv/d/dangling", follow=True))[0] == Fake(-errno.ENOENT)
    _, mem = await lstat(fs, "/srv/d/dangling")
    assert stat_written(mem) == LINK
    # Extended attributes (none remotely): ENOENT only for what is known missing.
    assert await call(fs, "getxattr", "/srv/d/dangling", 0) == Fake(-errno.ENOENT)
    assert await call(fs, "lgetxattr", "/srv/d/dangling", 0) == Fake(-errno.ENODATA)
    assert await call(fs, "lgetxattr", "/srv/d/a", 0) == Fake(-errno.ENODATA)
    # An open's and an access's ENOENT are remembered too.
    assert await call(fs, "openat", "/srv/d/gone", os.O_RDONLY) == Fake(-errno.ENOENT)
    assert await call(fs, "access", "/srv/x", os.R_OK) == Fake(-errno.ENOENT)
    calls = len(remote.calls)
    assert (await lstat(fs, "/srv/d/gone", follow=True))[0] == Fake(-errno.ENOENT)
    assert (await lstat(fs, "/srv/x", follow=True))[0] == Fake(-errno.ENOENT)
    assert len(remote.calls) == calls


async def test_our_own_creation_ends_a_missing_answer(
    setup: tuple[FsFeature, FakeRemote, Clock],
) -> None:
    fs, remote, _clock = setup
    assert (await lstat(fs, "/srv/d/sub"))[0] == Fake(-errno.ENOENT)
    assert await call(fs, "mkdir", "/srv/d/sub", 0o755) == Fake(0)
    _, mem = await lstat(fs, "/srv/d/sub")
    assert stat_written(mem) == DIR
    # An ENOENT asked for before our change is not kept: it may predate the creation.
    remote.release.clear()
    probe = asyncio.ensure_future(call(fs, "access", "/srv/d/late", os.R_OK))
    await asyncio.sleep(0)
    assert remote.calls[-1] == "access /srv/d/late"
    assert await call(fs, "mkdir", "/srv/d/late", 0o755) == Fake(0)
    remote.release.set()
    assert await probe == Fake(-errno.ENOENT)  # answered before the mkdir, in the pod
    _, mem = await lstat(fs, "/srv/d/late", follow=True)
    assert stat_written(mem) == DIR
    assert remote.calls[-1] == "stat /srv/d/late"


def test_the_stat_cache_is_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A walk of a huge tree keeps at most MAX_STATS answers: expired ones go first,
    then the oldest half."""
    monkeypatch.setattr(cache_mod, "MAX_STATS", 100)
    clock = Clock()
    cache = Cache(str(tmp_path), clock=clock)
    try:
        for i in range(60):
            cache.remember(f"/old/{i}", True, A)
        clock.now += STAT_TTL_S + 1
        for i in range(60):
            cache.remember(f"/new/{i}", True, A)  # the 100th expires the old ones
        assert cache.cached_stat("/new/0", True) == A
        assert cache.cached_stat("/old/59", True) is None
        for i in range(60, 200):
            cache.remember(f"/new/{i}", True, None)
        assert cache.known_missing("/new/199", True)
        assert cache.cached_stat("/new/0", True) is None  # the oldest went
        assert len(cache._stats) <= 100
    finally:
        cache.close()


def test_no_event_loop_needed_for_hits(tmp_path: Path) -> None:
    """A hit is answered on the tracer thread at once (a Fake, never a Defer)."""
    clock = Clock()
    cache = Cache(str(tmp_path), clock=clock)
    fs = FsFeature(FsRules.build("read"), FakeRemote(), cache)
    try:
        cache.remember("/srv/d/a", False, A)
        action, mem = asyncio.run(lstat(fs, "/srv/d/a"))
        assert action == Fake(0) and stat_written(mem) == A
    finally:
        cache.close()


def test_placeholders_are_shared_links_of_the_right_type(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A listed directory's entries are hard links to one inode per type (cheap), of the
    right type for getdents64's d_type; a full link count starts a new shared inode."""
    cache = Cache(str(tmp_path))
    try:
        entries = [
            Entry(b"f1", A),
            Entry(b"f2", A),
            Entry(b"sub", DIR),
            Entry(b"l", LINK),
            Entry(b"p", RemoteStat(mode=statmod.S_IFIFO | 0o600)),
            Entry(b"dev", RemoteStat(mode=statmod.S_IFCHR | 0o600)),  # as a regular file
        ]
        d = cache.to_cache("/srv/d")
        os.makedirs(d)
        real_link = os.link
        calls = {"n": 0}

        def link(src: str, dst: str, *, follow_symlinks: bool = True) -> None:
            calls["n"] += 1
            if calls["n"] == 2:  # the second file finds its shared inode full
                raise OSError(errno.EMLINK, "too many links")
            real_link(src, dst, follow_symlinks=follow_symlinks)

        monkeypatch.setattr(os, "link", link)
        cache._sync_dir(d, entries)
        kinds = {e.name: statmod.S_IFMT(os.lstat(e.path).st_mode) for e in os.scandir(d)}
        assert kinds == {
            "f1": statmod.S_IFREG,
            "f2": statmod.S_IFREG,
            "sub": statmod.S_IFDIR,
            "l": statmod.S_IFLNK,
            "p": statmod.S_IFIFO,
            "dev": statmod.S_IFREG,
        }
        assert os.lstat(f"{d}/f1").st_ino != os.lstat(f"{d}/f2").st_ino  # rotated
        assert os.lstat(f"{d}/f2").st_ino == os.lstat(f"{d}/dev").st_ino  # shared
        target = os.readlink(f"{d}/l")
        assert target.startswith(cache.base + "/") and not os.path.lexists(target)
        # Listing again with one entry gone and one changed type keeps the rest.
        cache._sync_dir(d, [Entry(b"f1", DIR), *entries[1:3]])
        assert sorted(os.listdir(d)) == ["f1", "f2", "sub"]
        assert os.path.isdir(f"{d}/f1") and not os.path.islink(f"{d}/f1")
    finally:
        cache.close()


# --- walks: listings sent ahead (walks.py) ---------------------------------------------------

TREE_DIR = RemoteStat(ino=20, mode=statmod.S_IFDIR | 0o755)


def tree(remote: FakeRemote, dirs: int = 3, files: int = 4) -> None:
    """/srv/w/s{i}/f{j} and /srv/w/s{i}/n/deep."""
    remote.files["/srv/w"] = TREE_DIR
    for i in range(dirs):
        remote.files[f"/srv/w/s{i}"] = TREE_DIR
        remote.files[f"/srv/w/s{i}/n"] = TREE_DIR
        remote.files[f"/srv/w/s{i}/n/deep"] = A
        for j in range(files):
            remote.files[f"/srv/w/s{i}/f{j}"] = RemoteStat(ino=100 * i + j, mode=A.mode, size=j)


async def settle(remote: FakeRemote) -> None:
    for _ in range(20):  # the walks ahead start (tasks of their own)
        await asyncio.sleep(0)
    for walk in remote.walks:
        await walk
    for _ in range(50):  # the copies are made one directory per loop turn
        await asyncio.sleep(0)


def local_order(fs: FsFeature, path: str) -> list[str]:
    """`path`'s subdirectories in its copy's getdents64 order (the program's)."""
    return [f"{path}/{n}" for n in os.listdir(fs.cache.to_cache(path)) if n.startswith("s")]


async def test_a_walk_costs_one_round_trip(setup: tuple[FsFeature, FakeRemote, Clock]) -> None:
    """Opening /srv/w has the agent list, in the background, everything below it, in the
    order the program meets it (its copy's, not the pod's): one more round trip, not one
    per directory."""
    fs, remote, _clock = setup
    tree(remote)
    await opendir(fs, "/srv/w")
    await settle(remote)
    order = local_order(fs, "/srv/w")
    assert remote.calls == ["open /srv/w", f"open {order[0]}"]
    assert remote.prefetch == [0, PREFETCH_ENTRIES]
    assert remote.also == [[], order[1:]]
    for i in range(3):
        await opendir(fs, f"/srv/w/s{i}")
        action, mem = await lstat(fs, f"/srv/w/s{i}/f2")
        assert action == Fake(0) and stat_written(mem).ino == 100 * i + 2
        await opendir(fs, f"/srv/w/s{i}/n")
        action, mem = await lstat(fs, f"/srv/w/s{i}/n/deep")
        assert action == Fake(0) and stat_written(mem) == A
    assert len(remote.calls) == 2  # everything below came with the walk
    # The copies are the listings': names and types as in the pod.
    copy = fs.cache.to_cache("/srv/w/s1")
    assert sorted(os.listdir(copy)) == ["f0", "f1", "f2", "f3", "n"]
    # A second open of a directory asks again (a prefetched listing is used once).
    await opendir(fs, "/srv/w/s1")
    assert remote.calls[2] == "open /srv/w/s1"


async def test_the_walk_goes_in_the_order_the_program_meets_directories(
    setup: tuple[FsFeature, FakeRemote, Clock], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pod lists s0, s1, s2; the copy (a local file system) lists them in its own
    order, which find and os.walk follow: the walk asks in that one."""
    real = os.listdir
    monkeypatch.setattr(os, "listdir", lambda p: sorted(real(p), reverse=True))
    fs, remote, _clock = setup
    tree(remote)
    await opendir(fs, "/srv/w")
    await settle(remote)
    assert remote.calls == ["open /srv/w", "open /srv/w/s2"]
    assert remote.also[1] == ["/srv/w/s1", "/srv/w/s0"]


async def test_a_listing_sent_ahead_goes_stale_after_the_ttl(
    setup: tuple[FsFeature, FakeRemote, Clock],
) -> None:
    fs, remote, clock = setup
    tree(remote)
    await opendir(fs, "/srv/w")
    await settle(remote)
    remote.files["/srv/w/s0/new"] = A  # changed in the pod meanwhile
    clock.now += STAT_TTL_S + 0.1
    asked = len(remote.calls)
    await opendir(fs, "/srv/w/s0")
    assert remote.calls[asked] == "open /srv/w/s0"
    assert "new" in os.listdir(fs.cache.to_cache("/srv/w/s0"))


async def test_an_open_waits_a_moment_for_the_walk_that_will_list_it(
    setup: tuple[FsFeature, FakeRemote, Clock], monkeypatch: pytest.MonkeyPatch
) -> None:
    fs, remote, clock = setup
    monkeypatch.setattr("mirrord.features.files.cache.WAIT_S", 5.0)  # a busy machine
    tree(remote)
    remote.release.clear()  # the listings are late
    await opendir(fs, "/srv/w")
    order = local_order(fs, "/srv/w")
    waiting = asyncio.ensure_future(opendir(fs, order[-1]))
    for _ in range(5):
        await asyncio.sleep(0)
    assert not waiting.done()
    remote.release.set()
    await waiting
    assert remote.calls == ["open /srv/w", f"open {order[0]}"]
    clock.now += STAT_TTL_S + 0.1  # all stale: the walk starts over, and is slow
    monkeypatch.setattr("mirrord.features.files.cache.WAIT_S", 0.01)
    remote.release.clear()
    await opendir(fs, "/srv/w")
    await opendir(fs, order[-1])  # not come within WAIT_S: asked for alone, no walk
    assert remote.calls[2:] == ["open /srv/w", f"open {order[0]}", f"open {order[-1]}"]
    assert remote.prefetch == [0, PREFETCH_ENTRIES, 0, PREFETCH_ENTRIES, 0]
    remote.release.set()
    await settle(remote)


async def test_a_walk_that_ends_short_leaves_the_rest_to_their_opens(
    setup: tuple[FsFeature, FakeRemote, Clock], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("mirrord.features.files.cache.PREFETCH_ENTRIES", 7)
    fs, remote, _clock = setup
    tree(remote)  # after the first s{i} (the answer): its n (1 entry), the next s (5)
    await opendir(fs, "/srv/w")
    await settle(remote)
    order = local_order(fs, "/srv/w")
    for path in order:
        await opendir(fs, path)
    assert remote.calls[:3] == ["open /srv/w", f"open {order[0]}", f"open {order[2]}"]


async def test_siblings_are_asked_for_while_the_program_walks_their_parent(
    setup: tuple[FsFeature, FakeRemote, Clock],
) -> None:
    fs, remote, _clock = setup
    tree(remote)
    remote.ahead = False  # an agent that sends nothing ahead: the walk lists one
    await opendir(fs, "/srv/w")
    await settle(remote)
    order = local_order(fs, "/srv/w")
    await opendir(fs, order[1])
    await settle(remote)
    # Its own subdirectory, then its sibling not listed yet (the first one was).
    assert remote.calls[-2:] == [f"open {order[1]}", f"open {order[1]}/n"]
    assert remote.also[-1] == [order[2]]
    assert remote.also[0] == []  # nobody walks /srv's listing


async def test_our_change_drops_listings_asked_for_before_it(
    setup: tuple[FsFeature, FakeRemote, Clock],
) -> None:
    fs, remote, _clock = setup
    tree(remote)
    remote.release.clear()
    await opendir(fs, "/srv/w")
    await asyncio.sleep(0)
    mem = FakeMem()
    mem.put(NAME_AT, b"/srv/w/s0/f1\0")
    action = await run(fs.unlink(Syscall(1, 87, (NAME_AT, 0, 0, 0, 0, 0)), mem), mem)
    assert action == Fake(0)
    remote.release.set()  # listed before our unlink: stale
    await settle(remote)
    await opendir(fs, "/srv/w/s0")
    assert remote.calls.index("open /srv/w/s0") > remote.calls.index("unlink /srv/w/s0/f1")
    assert "f1" not in os.listdir(fs.cache.to_cache("/srv/w/s0"))
