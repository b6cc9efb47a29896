"""The per-session cache directory remote files are materialised into.

Layout: `<tmp>/mirrord-fs-<pid>-<random>/root/<remote path>` mirrors the remote paths
that were opened; `staging/` holds files being downloaded (renamed into place when
complete, so a reader never sees half a file). A remote file opened by the program is a
real local file there, so reads, seeks and mmap run at native speed; a remote directory
is a real directory whose entries are placeholders of the right type (empty files,
directories, symlinks to nowhere, FIFOs; all but directories hard links to one shared
inode per type, `shared/`), so getdents64 runs natively with the right names and
d_type. Placeholder content and local metadata are never shown: every path and fd
syscall on them is answered with the remote metadata (handlers.py).

Since the mapping between cache paths and remote paths is a prefix, an fd is remote iff
/proc/TID/fd/N points into `root/`: dup, fork, exec and close_range need no tracking.

The directory is removed when the session ends (`close`); `sweep_stale` removes those
of mirrord processes that died without cleaning up (SIGKILL).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import re
import shutil
import stat as statmod
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from mirrord.features.files.remote import Entry, Listing, RemoteFs, failure_text
from mirrord.features.files.structs import RemoteStat
from mirrord.features.files.walks import PREFETCH_ENTRIES, WAIT_S, Walk, Walks

log = logging.getLogger("mirrord.fs")
PREFIX = "mirrord-fs-"
_STALE = re.compile(rf"^{PREFIX}(\d+)-")
CHUNK = 1 << 20
# How long a remote stat learnt from a directory listing, an open or a Stat call answers
# stat/lstat of that path without asking the agent again. It bounds how stale the
# metadata we show can be with respect to changes made in the pod by others (our own
# changes drop the entries at once): 2 s covers a walk's listing -> lstat of every entry
# (find, ls -lR, rglob) and stays well below what a human notices.
STAT_TTL_S = 2.0
# How many (path, follow) answers the stat cache holds: past it, what has expired goes,
# then the oldest (a walk of a huge tree must not grow the session without bound).
MAX_STATS = 1 << 17


@dataclass
class Meta:
    """What we know of a materialised path: the remote stat, and the local mtime it had
    right after materialising (a different mtime later = the program wrote to it)."""

    stat: RemoteStat
    local_mtime_ns: int
    writable: bool = False  # opened for writing at least once: write it back if changed


def sweep_stale(tmpdir: str | None = None) -> None:
    """Remove cache dirs whose mirrord process is gone."""
    base = tmpdir or tempfile.gettempdir()
    with contextlib.suppress(OSError):
        for name in os.listdir(base):
            m = _STALE.match(name)
            if m is None:
                continue
            try:
                os.kill(int(m.group(1)), 0)
                continue  # alive
            except ProcessLookupError:
                shutil.rmtree(os.path.join(base, name), ignore_errors=True)
            except PermissionError:
                continue  # someone else's live process


class Cache:
    def __init__(
        self, tmpdir: str | None = None, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.base = tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-", dir=tmpdir)
        self.root = os.path.join(self.base, "root")
        self._staging = os.path.join(self.base, "staging")
        # Symlink placeholders point here: inside our private dir, never created, so the
        # kernel can never follow one out of the cache.
        self._nowhere = os.path.join(self.base, "nowhere")
        os.mkdir(self.root, 0o700)
        os.mkdir(self._staging, 0o700)
        # The shared inodes placeholders are hard links of (outside root/: never remote).
        self._shared = os.path.join(self.base, "shared")
        os.mkdir(self._shared, 0o700)
        self._sources: dict[int, str] = {}
        self._n_sources = 0
        self.meta: dict[str, Meta] = {}
        self._prefix = self.root + "/"
        self._clock = clock
        # (remote path, follow) -> (expiry, stat, or None: it does not exist): the
        # short-lived stat cache, in insertion order (the oldest go first when full).
        self._stats: dict[tuple[str, bool], tuple[float, RemoteStat | None]] = {}
        # Bumped by every change of ours: an answer asked for before it is not kept.
        self.generation = 0
        self.walks = Walks(clock, STAT_TTL_S)
        self._making: asyncio.Future[None] | None = None  # copies of arrived listings
        self._walking: set[asyncio.Future[None]] = set()  # walks ahead (_walk_ahead)
        self._closed = False
        # Told the entries of each listing made into a copy ahead (FsFeature: the rules).
        self.on_listed_ahead: Callable[[list[str]], None] | None = None

    # --- the mapping ----------------------------------------------------------------------

    def to_cache(self, remote: str) -> str:
        return self.root + remote if remote != "/" else self.root

    def from_cache(self, local: str) -> str | None:
        if local == self.root:
            return "/"
        if local.startswith(self._prefix):
            return local[len(self.root) :]
        return None

    def owns(self, path: str) -> bool:
        return path == self.base or path.startswith(self.base + "/")

    # --- metadata -------------------------------------------------------------------------

    def stat_of(self, cache_path: str) -> RemoteStat | None:
        """The remote stat of a materialised path, with the local size and times if the
        program changed the copy (write mode, not yet written back)."""
        meta = self.meta.get(cache_path)
        if meta is None:
            return None
        try:
            local = os.lstat(cache_path)
        except OSError:
            return meta.stat
        if local.st_mtime_ns == meta.local_mtime_ns or statmod.S_ISDIR(local.st_mode):
            return meta.stat
        return meta.stat.with_local(
            local.st_size, local.st_blocks, local.st_mtime_ns, local.st_ctime_ns
        )

    def remember(
        self, path: str, follow: bool, st: RemoteStat | None, since: float | None = None
    ) -> None:
        """Keep a remote stat of `path` (None: it does not exist) for STAT_TTL_S
        (follow: stat, else lstat) from `since` (when it was read; default now). An
        lstat of anything but a symlink is also its stat; an lstat's ENOENT, too."""
        expiry = (self._clock() if since is None else since) + STAT_TTL_S
        if len(self._stats) >= MAX_STATS:
            self._shrink()
        self._stats[(path, follow)] = (expiry, st)
        if not follow and (st is None or not statmod.S_ISLNK(st.mode)):
            self._stats[(path, True)] = (expiry, st)

    def remember_missing(self, path: str, follow: bool, generation: int) -> None:
        """The agent said ENOENT for `path`, asked at `generation`: kept as a stat,
        unless a change of ours came in between (it may have created the path)."""
        if generation == self.generation:
            self.remember(path, follow, None)

    def _shrink(self) -> None:
        now = self._clock()
        for key in [k for k, v in self._stats.items() if v[0] < now]:
            del self._stats[key]
        if len(self._stats) >= MAX_STATS // 2:
            for key in list(self._stats)[: len(self._stats) // 2]:  # the oldest half
                del self._stats[key]

    def _fresh(self, path: str, follow: bool) -> tuple[float, RemoteStat | None] | None:
        hit = self._stats.get((path, follow))
        if hit is not None and hit[0] < self._clock():
            self._stats.pop((path, follow), None)
            return None
        return hit

    def cached_stat(self, path: str, follow: bool) -> RemoteStat | None:
        """The remembered remote stat of `path` if still fresh. None for a copy open for
        writing (its size and times are the local copy's until written back: the caller
        asks the agent, as for any miss), and for a path known not to exist (known_missing)."""
        hit = self._fresh(path, follow)
        if hit is None or hit[1] is None:
            return None
        meta = self.meta.get(self.to_cache(path))
        if meta is not None and meta.writable:
            return None
        return hit[1]

    def known_missing(self, path: str, follow: bool) -> bool:
        """The agent said moments ago that `path` does not exist (within STAT_TTL_S, and
        no change of ours since)."""
        hit = self._fresh(path, follow)
        return hit is not None and hit[1] is None

    def invalidate(self, path: str) -> None:
        """Forget remembered stats of `path`, of what is below it, and of its parent
        (whose mtime/nlink our change moved)."""
        self.generation += 1
        parent = os.path.dirname(path) or "/"
        below = path.rstrip("/") + "/"
        for key in [k for k in self._stats if k[0] in (path, parent) or k[0].startswith(below)]:
            self._stats.pop(key, None)
        self.walks.invalidate(path)

    def dirty(self, cache_path: str) -> bool:
        meta = self.meta.get(cache_path)
        if meta is None:
            return True
        try:
            return os.lstat(cache_path).st_mtime_ns != meta.local_mtime_ns
        except OSError:
            return False  # gone locally: nothing to write back

    def forget(self, remote: str) -> None:
        """Drop a path (and what is below it) after a remote change made it stale."""
        self.invalidate(remote)
        cp = self.to_cache(remote)
        for key in [k for k in self.meta if k == cp or k.startswith(cp + "/")]:
            del self.meta[key]
        with contextlib.suppress(OSError):
            if os.path.isdir(cp) and not os.path.islink(cp):
                shutil.rmtree(cp)
            else:
                os.unlink(cp)

    # --- materialising -------------------------------------------------------------------

    def _ensure_dir(self, cache_path: str) -> None:
        """mkdir -p, replacing anything in the way that is not a real directory (a
        placeholder file or symlink): the kernel must never follow a link out."""
        rel = cache_path[len(self.root) :].strip("/")
        cur = self.root
        for part in rel.split("/") if rel else ():
            cur = f"{cur}/{part}"
            try:
                st = os.lstat(cur)
            except FileNotFoundError:
                os.mkdir(cur, 0o700)
                continue
            if not statmod.S_ISDIR(st.st_mode):
                os.unlink(cur)
                os.mkdir(cur, 0o700)

    def _sync_dir(self, cache_dir: str, entries: list[Entry]) -> None:
        want: dict[str, Entry] = {os.fsdecode(e.name): e for e in entries}
        kept: set[str] = set()
        for name in os.listdir(cache_dir):
            path = f"{cache_dir}/{name}"
            e = want.get(name)
            st = os.lstat(path)
            if e is not None and statmod.S_IFMT(st.st_mode) == _placeholder_fmt(e.stat.mode):
                kept.add(name)
                continue
            if statmod.S_ISDIR(st.st_mode):
                shutil.rmtree(path, ignore_errors=True)
            else:
                os.unlink(path)
            self.meta.pop(path, None)
        for name, e in want.items():
            if name not in kept:
                self._placeholder(_placeholder_fmt(e.stat.mode), f"{cache_dir}/{name}")

    def _placeholder(self, fmt: int, path: str) -> None:
        """A placeholder entry of type `fmt`. Files, symlinks and FIFOs are hard links
        to one shared inode per type (a link is ~100x cheaper than a new inode here: a
        5 000-entry tree materialised in ms, not a second); directories are made. The
        shared inode is never shown (its metadata and content are not the remote's
        anyway) and is replaced by rename when the entry itself is materialised."""
        if fmt == statmod.S_IFDIR:
            os.mkdir(path, 0o700)
            return
        for _ in range(2):
            src = self._sources.get(fmt) or self._new_source(fmt)
            try:
                os.link(src, path, follow_symlinks=False)
                return
            except OSError as e:
                if e.errno == errno.EEXIST:
                    raise
                # EMLINK (the link count is full): start a new shared inode; anything
                # else (a file system without hard links): make this one on its own.
                del self._sources[fmt]
                if e.errno != errno.EMLINK:
                    break
        self._make(fmt, path)

    def _new_source(self, fmt: int) -> str:
        self._n_sources += 1
        src = f"{self._shared}/{self._n_sources}"
        self._make(fmt, src)
        self._sources[fmt] = src
        return src

    def _make(self, fmt: int, path: str) -> None:
        if fmt == statmod.S_IFLNK:
            os.symlink(self._nowhere, path)
        elif fmt == statmod.S_IFIFO:
            os.mkfifo(path, 0o600)
        else:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))

    async def materialise(
        self,
        remote: RemoteFs,
        path: str,
        flags: int,
        mode: int,
        *,
        writable: bool,
        resolve: tuple[int, str, str] | None = None,
    ) -> tuple[int, str]:
        """Open `path` remotely and make its local copy. Returns (errno, cache path).
        `resolve`: openat2's (RESOLVE_* flags, base directory, path relative to it),
        applied by the agent in the pod's tree; the copy is kept at `path`."""
        cp = self.to_cache(path)
        plain = resolve is None and not flags & (os.O_ACCMODE | os.O_CREAT | os.O_TRUNC)
        walk = plain
        if plain:
            if self.walks.take_ready(path) and cp in self.meta:
                return 0, cp  # its copy was made ahead from a listing moments old
            walk = await self.walks.wait_for(path, WAIT_S)  # else coming: ask for it alone
            listing = self.walks.take(path)
            if listing is not None:
                self._ensure_dir(os.path.dirname(cp))
                self.remember(path, True, listing.stat)
                self._adopt_dir(path, cp, listing.stat, listing.load())
                return 0, cp
            if self.walks.take_ready(path) and cp in self.meta:
                return 0, cp  # made meanwhile
        known = None
        meta = self.meta.get(cp)
        if meta is not None and not self.dirty(cp):
            known = meta.stat
        self._ensure_dir(os.path.dirname(cp))
        fd, tmp = tempfile.mkstemp(dir=self._staging)
        try:
            with os.fdopen(fd, "wb", buffering=0) as out:
                if resolve is None:
                    opened = await remote.open(path, flags, mode, known, out.write)
                else:
                    flags_, base, rel = resolve
                    opened = await remote.open(
                        rel, flags, mode, known, out.write, resolve=flags_, base=base
                    )
            if opened.errno:
                return opened.errno, cp
            st = opened.stat
            assert st is not None
            if flags & (os.O_CREAT | os.O_TRUNC):
                self.invalidate(path)  # created or truncated remotely: the parent moved
            self.remember(path, True, st)
            if statmod.S_ISDIR(st.mode):
                self._adopt_dir(path, cp, st, opened.entries)
                if plain and walk:
                    self._walk_ahead(remote, path)
                return 0, cp
            if opened.unchanged and meta is not None:
                meta.writable = meta.writable or writable
                return 0, cp
            # Times as the remote file's: the local mtime is then also the "clean" mark.
            os.utime(tmp, ns=(st.atime_ns, st.mtime_ns))
            if os.path.isdir(cp) and not os.path.islink(cp):
                shutil.rmtree(cp, ignore_errors=True)
            os.rename(tmp, cp)
            tmp = ""
            was_writable = meta.writable if meta is not None else False
            self.meta[cp] = Meta(st, os.lstat(cp).st_mtime_ns, writable or was_writable)
            return 0, cp
        finally:
            if tmp:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)

    def _walk_ahead(self, remote: RemoteFs, path: str) -> None:
        """The program opened directory `path` (its copy is made): have the agent list,
        in the background, its subdirectories and, when the program is walking their
        parent, its siblings not listed yet, each followed by what is below it (walks.py).
        In the order the program will meet them: the copies' own (getdents64 of a local
        directory lists in its file system's order, not the pod's; find and os.walk go
        in it), so each open finds its listing already there."""
        walked = self.walks.walked.get(path)
        subdirs = walked[1] if walked is not None else []
        order = [p for p in subdirs if not self.walks.coming(p)]
        order = [*order, *self.walks.siblings(path)][:PREFETCH_ENTRIES]  # a bounded ask
        if not order or self._closed:
            return
        walk = self.walks.begin()
        self.walks.expect(walk, order)
        task = asyncio.ensure_future(self._walk(remote, walk, order))
        self._walking.add(task)
        task.add_done_callback(self._walking.discard)

    async def _walk(self, remote: RemoteFs, walk: Walk, order: list[str]) -> None:
        """Open order[0] with prefetch and the rest as `also`: its listing is the answer,
        the others come after it. Best effort: on a failure the program's opens ask."""
        ends = True
        try:
            opened = await remote.open(
                order[0], _WALK_FLAGS, 0, None, _no_data, prefetch=PREFETCH_ENTRIES,
                also=order[1:], below=lambda listings: self._arrived(walk, listings),
                below_end=lambda: self.walks.end(walk),
            )  # fmt: skip
            ends = not opened.below_follows
            st = opened.stat
            if not opened.errno and st is not None and statmod.S_ISDIR(st.mode):
                entries = opened.entries
                self._arrived(walk, [Listing(order[0], st, lambda: entries)])
        except asyncio.CancelledError:
            raise
        except Exception as e:
            log.debug("a walk ahead from %s ended: %s", order[0], failure_text(e))
        finally:
            if ends:
                self.walks.end(walk)

    def _arrived(self, walk: Walk, listings: list[Listing]) -> None:
        self.walks.arrive(walk, listings)
        if self._closed:
            return
        if self._making is None or self._making.done():
            self._making = asyncio.ensure_future(self._make_arrived())

    async def _make_arrived(self) -> None:
        """Copies of the arrived listings, in the background, one directory per loop turn:
        the program's open of one then finds it ready."""
        while not self._closed and (got := self.walks.next_arrived()) is not None:
            path, since, listing = got
            cp = self.to_cache(path)
            try:
                self._ensure_dir(os.path.dirname(cp))
                children = self._adopt_dir(path, cp, listing.stat, listing.load(), since)
                if self.on_listed_ahead is not None:
                    self.on_listed_ahead(children)
            except OSError as e:
                log.debug("a prefetched copy of %s failed: %s", path, e)
                continue
            self.walks.made_ahead(path, since)
            await asyncio.sleep(0)

    def _adopt_dir(
        self, path: str, cp: str, st: RemoteStat, entries: list[Entry], since: float | None = None
    ) -> list[str]:
        """Make a remote directory's copy: its placeholders, and its entries' stats
        (`since`: when they were listed, if not just now). Returns the entries' paths."""
        self._ensure_dir(cp)
        self._sync_dir(cp, entries)
        self.meta[cp] = Meta(st, os.lstat(cp).st_mtime_ns)
        base = path.rstrip("/")
        children = []
        dirs = set()
        for e in entries:
            name = os.fsdecode(e.name)
            children.append(f"{base}/{name}")
            self.remember(children[-1], False, e.stat, since)
            if statmod.S_ISDIR(e.stat.mode):
                dirs.add(name)
        if dirs:  # in the copy's order: the one the program walks them in
            try:
                local = [name for name in os.listdir(cp) if name in dirs]
            except OSError:
                local = sorted(dirs)
        else:
            local = []
        subdirs = [f"{base}/{name}" for name in local]
        self.walks.listed(path, self._clock() if since is None else since, subdirs)
        return children

    async def write_back(self, remote: RemoteFs, cache_path: str) -> int:
        """Send the local copy to the remote file. Returns an errno (0: done)."""
        path = self.from_cache(cache_path)
        if path is None:
            return 0
        try:
            before = os.lstat(cache_path).st_mtime_ns
            f = open(cache_path, "rb")  # noqa: SIM115 (closed by the generator below)
        except OSError as e:
            log.error("write-back of %s failed: %s", path, e)
            return 5  # EIO

        async def chunks() -> AsyncIterator[bytes]:
            with f:
                while data := f.read(CHUNK):
                    yield data

        try:
            err, st = await remote.store(path, chunks())
        except Exception as e:
            log.error("write-back of %s failed: %s", path, failure_text(e))
            return 5
        if err:
            log.error("write-back of %s failed: %s", path, os.strerror(err))
            return 5
        self.invalidate(path)
        meta = self.meta.get(cache_path)
        if st is not None and meta is not None:
            meta.stat = st
            meta.local_mtime_ns = before
        return 0

    async def flush(self, remote: RemoteFs) -> int:
        """Write back every changed writable copy (at the end: a program may exit without
        closing its files). Returns how many failed."""
        failed = 0
        for cp, meta in list(self.meta.items()):
            changed = meta.writable and self.dirty(cp) and os.path.exists(cp)
            if changed and await self.write_back(remote, cp):
                failed += 1
        return failed

    def close(self) -> None:
        self._closed = True  # copies being made ahead stop here (they would remake the dir)
        if self._making is not None:
            self._making.cancel()
        for task in list(self._walking):
            task.cancel()
        shutil.rmtree(self.base, ignore_errors=True)


# A walk's directories are opened as its own listing does (agent/files/below.py): real
# directories only, never through a symlink.
_WALK_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW


def _no_data(data: bytes) -> None:
    """A directory's Open carries no data."""


def _placeholder_fmt(mode: int) -> int:
    fmt = statmod.S_IFMT(mode)
    if fmt in (statmod.S_IFDIR, statmod.S_IFLNK, statmod.S_IFIFO):
        return fmt
    return statmod.S_IFREG  # regular files, and devices/sockets we cannot make
