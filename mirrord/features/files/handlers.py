"""Syscall handlers for files: decide local/remote by the rules, and for remote paths
either answer from the agent (stat, access, readlink, mkdir…) or materialise the file in
the cache and have the program use the copy, so the kernel does the rest at native speed.

Notify engine (`Syscall.notified`; registers cannot change): a remote open is answered
with OpenFile (the supervisor opens the cached copy and hands the program the fd), a
remote chdir with Chdir (the thread's cwd becomes the copy: inject.py), a /proc fd link
is read here; close/fsync in write mode write the copy back first, then let the call run
(or answer EIO: see close()). openat2's RESOLVE_* flags are applied by the agent, in the
pod's own tree (a copy keeps no symlink it was opened through), both engines.
Ptrace engine: path arguments are rewritten into a scratch buffer below the stopped
thread's stack (Syscall.scratch); Allow's machinery restores the original registers at
the exit stop. Results written into the program's buffers (struct stat, readlink text)
are written only when the call is faked, i.e. the kernel does not run it.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from mirrord.features.files.cache import Cache, sweep_stale
from mirrord.features.files.paths import AT_FDCWD, Named, absolute, as_int
from mirrord.features.files.remote import PathOp, RemoteFs, failure_text
from mirrord.features.files.rules import O_WRITE_INTENT, Access, FsRules
from mirrord.features.files.structs import RemoteStat, pack_stat, pack_statx
from mirrord.supervisor.actions import (
    Action,
    Allow,
    Chdir,
    Defer,
    Fake,
    FastCheck,
    Handler,
    Memory,
    OpenFile,
    RawReader,
    Syscall,
)
from mirrord.supervisor.policy import Feature, SyscallTable, trapped
from mirrord.supervisor.syscalls import NR

log = logging.getLogger("mirrord.fs")

AT_SYMLINK_NOFOLLOW = 0x100
AT_REMOVEDIR = 0x200
AT_EMPTY_PATH = 0x1000
O_TMPFILE = 0o20000000 | os.O_DIRECTORY
REMOTE_OPEN_FLAGS = (
    os.O_ACCMODE | os.O_CREAT | os.O_EXCL | os.O_TRUNC | os.O_DIRECTORY | os.O_NOFOLLOW
)
# Links in /proc whose text may name a cache path: shown as the remote path instead.
_PROC_LINK = re.compile(r"^/proc/(self|thread-self|\d+)(/task/\d+)?/(fd/\d+|cwd)$")
_PROC_SELF = re.compile(r"^/proc/(?:self|(thread-self))/")

MAX_LOCAL_RAW = 65536
RESOLVE_BENEATH = 0x08
RESOLVE_IN_ROOT = 0x10
BENEATH_OR_IN_ROOT = RESOLVE_BENEATH | RESOLVE_IN_ROOT


def _umask(tid: int) -> int:
    try:
        with open(f"/proc/{tid}/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    return 0o022


_said: set[str] = set()  # failures already on the user's terminal


def _failed(result: Any) -> Action | None:
    if isinstance(result, BaseException):
        text = failure_text(result)
        # Once each: a lost agent fails every call the program makes until it is stopped.
        (log.debug if text in _said else log.error)("remote file call failed: %s", text)
        _said.add(text)
        return Fake(-errno.EIO)
    return None


@dataclass
class FsFeature:
    rules: FsRules
    remote: RemoteFs
    cache: Cache
    # Whether the program may hold an fd of a copy / a cwd inside the cache (any of its
    # processes; set once, never cleared): until then fd-based calls need no lookup.
    remote_fds: bool = False
    remote_cwd: bool = False
    # Absolute paths (as the program passed them) decided local: the fast checks answer
    # their next calls without a handler (fast_checks()). Bounded.
    local_raw: set[bytes] = field(default_factory=set)

    def __post_init__(self) -> None:
        # Entries of listings sent ahead are decided while the program works (its stats
        # of them then find the decision made: a rule check is ~3 us of a walk's lstat).
        self.cache.on_listed_ahead = self.rules.prewarm

    # --- helpers ----------------------------------------------------------------------------

    def _name(
        self, sc: Syscall, mem: Memory, dirfd: int, ptr: int, *, in_root: bool = False
    ) -> tuple[str, Named] | None:
        """(raw path, absolute path) or None when the call stays local untouched.
        `in_root`: openat2's RESOLVE_IN_ROOT, where "/" is the dirfd."""
        try:
            raw = mem.read_cstring(ptr)
        except OSError:
            return None  # a bad pointer: the kernel answers EFAULT itself
        return self._named(sc, dirfd, raw, in_root)

    def _named(
        self, sc: Syscall, dirfd: int, raw_bytes: bytes, in_root: bool = False
    ) -> tuple[str, Named] | None:
        raw = os.fsdecode(raw_bytes)
        if not raw or self.cache.owns(raw):
            return None
        rel = raw.lstrip("/") or "." if in_root else raw
        if dirfd != AT_FDCWD and not rel.startswith("/") and not self.remote_fds:
            return None  # relative to a local directory fd: local (no copy handed out yet)
        named = absolute(sc.tid, dirfd, rel, self.cache.from_cache)
        if named is None:
            return None
        return raw, named

    def _local(self, raw: str, path: str) -> Allow:
        """A local path: the call runs as it is. An absolute one the rules make local
        whatever the flags is remembered for the fast checks."""
        if raw.startswith("/") and self.rules.decide(path) is Access.LOCAL:
            if len(self.local_raw) >= MAX_LOCAL_RAW:
                self.local_raw.clear()
            self.local_raw.add(os.fsencode(raw))
        return Allow()

    def _access(self, named: Named, flags: int | None = None) -> tuple[str, Access]:
        path = self.rules.map_path(named.path)
        access = self.rules.decide(path) if flags is None else self.rules.for_open(path, flags)
        if named.in_remote_dir and access is Access.LOCAL:
            access = Access.READ_WRITE if self.rules.mode == "write" else Access.READ_ONLY
        return path, access

    def _fd_remote(self, tid: int, fd: int) -> tuple[str, str] | None:
        """(cache path, remote path) when fd is a materialised remote file or dir. Only
        ever true once the program has been given a copy (or a cwd in the cache): until
        then no /proc lookup."""
        if not (self.remote_cwd if fd == AT_FDCWD else self.remote_fds):
            return None
        try:
            link = os.readlink(f"/proc/{tid}/fd/{fd}" if fd != AT_FDCWD else f"/proc/{tid}/cwd")
        except OSError:
            return None
        remote = self.cache.from_cache(link)
        return (link, remote) if remote is not None else None

    @staticmethod
    def _scratch(sc: Syscall, mem: Memory, *blobs: bytes) -> list[int]:
        sizes = [(len(b) + 15) & ~15 for b in blobs]
        base = sc.scratch(sum(sizes))
        addrs, off = [], base
        for blob, size in zip(blobs, sizes, strict=True):
            mem.write(off, blob)
            addrs.append(off)
            off += size
        return addrs

    def _stat_answer(
        self,
        mem: Memory,
        remote_path: str,
        cache_path: str | None,
        follow: bool,
        out: tuple[int, Callable[[RemoteStat], bytes]],
    ) -> Action:
        """Write the remote stat packed by `out` = (buffer, packer): at once from what
        the cache knows of an open file, else after asking the agent."""
        write = self._writer(*out)
        if cache_path is not None:
            st = self.cache.stat_of(cache_path)
            if st is not None:
                return write(mem, st)
        else:
            st = self.cache.cached_stat(remote_path, follow)
            if st is not None:
                return write(mem, st)  # listed or stat'ed moments ago: no round trip
            if self.cache.known_missing(remote_path, follow):
                return Fake(-errno.ENOENT)  # as moments ago (a program probing for a file)

        async def work() -> tuple[int, RemoteStat | None]:
            generation = self.cache.generation
            err, st = await self.remote.stat(remote_path, follow)
            if not err and st is not None:
                self.cache.remember(remote_path, follow, st)
            elif err == errno.ENOENT:
                self.cache.remember_missing(remote_path, follow, generation)
            return err, st

        return Defer(
            work,
            lambda r, mem: _failed(r) or (Fake(-r[0]) if r[0] else write(mem, r[1])),
        )

    # --- open family --------------------------------------------------------------------------

    def _open(
        self,
        sc: Syscall,
        mem: Memory,
        dirfd: int,
        path_arg: int,
        flags: int,
        mode: int,
        flags_arg: int | None,
        how: bytes | None = None,
        *,
        in_root: bool = False,
    ) -> Action:
        got = self._name(sc, mem, dirfd, sc.args[path_arg], in_root=in_root)
        if got is None:
            return Allow()
        raw = got[0]
        path, access = self._access(got[1], flags)
        if access is Access.LOCAL:
            return self._local(raw, path) if how is None else Allow()
        if access is Access.NOT_FOUND:
            return Fake(-errno.ENOENT)
        if flags & O_TMPFILE == O_TMPFILE:
            return Fake(-errno.EOPNOTSUPP)
        writing = bool(flags & O_WRITE_INTENT)
        # Without O_CREAT open(2) ignores the mode; the agent's openat2 would refuse it.
        mode = mode & ~_umask(sc.tid) & 0o7777 if flags & os.O_CREAT else 0

        resolve = None
        if how is not None:
            resolve = self._resolved_remotely(sc, dirfd, raw, path, how, in_root)

        follow = not flags & os.O_NOFOLLOW
        probe = resolve is None and not flags & os.O_CREAT  # ENOENT: the path is missing
        if probe and self.cache.known_missing(path, follow):
            return Fake(-errno.ENOENT)

        async def work() -> tuple[int, str]:
            generation = self.cache.generation
            result = await self.cache.materialise(
                self.remote,
                path,
                flags & REMOTE_OPEN_FLAGS,
                mode,
                writable=writing,
                resolve=resolve,
            )
            if probe and result[0] == errno.ENOENT:
                self.cache.remember_missing(path, follow, generation)
            return result

        def then(result: Any, m: Memory) -> Action:
            failed = _failed(result)
            if failed is not None:
                return failed
            err, cache_path = result
            if err:
                return Fake(-err)
            # The remote side created/truncated it; locally the copy exists already.
            local_flags = flags & ~(os.O_CREAT | os.O_EXCL)
            self.remote_fds = True
            # openat2's resolve flags were applied in the pod: the copy opens plainly.
            if sc.notified:
                return OpenFile(cache_path, local_flags)
            blob = os.fsencode(cache_path) + b"\0"
            if how is not None:
                new_how = struct.pack("<QQQ", local_flags, 0, 0)
                p, h = self._scratch(sc, m, blob, new_how)
                return Allow(set_args={path_arg: p, 2: h})
            (p,) = self._scratch(sc, m, blob)
            args = {path_arg: p}
            if flags_arg is not None:
                args[flags_arg] = local_flags
            return Allow(set_args=args)

        return Defer(work, then)

    def open(self, sc: Syscall, mem: Memory) -> Action:
        return self._open(sc, mem, AT_FDCWD, 0, sc.args[1], sc.args[2], 1)

    def creat(self, sc: Syscall, mem: Memory) -> Action:
        flags = os.O_CREAT | os.O_WRONLY | os.O_TRUNC
        return self._open(sc, mem, AT_FDCWD, 0, flags, sc.args[1], None)

    def openat(self, sc: Syscall, mem: Memory) -> Action:
        return self._open(sc, mem, as_int(sc.args[0]), 1, sc.args[2], sc.args[3], 2)

    def openat2(self, sc: Syscall, mem: Memory) -> Action:
        try:
            how = mem.read(sc.args[2], 24)
        except OSError:
            return Allow()
        flags, mode, resolve = struct.unpack("<QQQ", how)
        if resolve & RESOLVE_BENEATH:
            try:
                absolute_path = mem.read(sc.args[1], 1) == b"/"
            except OSError:
                return Allow()
            if absolute_path:
                return Allow()  # EXDEV from the kernel, as for any absolute path
        dirfd = as_int(sc.args[0])
        in_root = bool(resolve & RESOLVE_IN_ROOT) and dirfd != AT_FDCWD
        return self._open(sc, mem, dirfd, 1, flags, mode, None, how, in_root=in_root)

    def _resolved_remotely(
        self, sc: Syscall, dirfd: int, raw: str, path: str, how: bytes, in_root: bool
    ) -> tuple[int, str, str]:
        """openat2's resolve flags for the agent: (flags, base, path). With BENEATH or
        IN_ROOT the path stays relative to the remote directory the dirfd (or the cwd)
        names, which those flags mean; the pod's own tree then decides, symlinks included
        (a copy keeps no symlink it was opened through)."""
        resolve = struct.unpack_from("<Q", how, 16)[0]
        if not resolve & BENEATH_OR_IN_ROOT:
            return resolve, "", path
        link = f"/proc/{sc.tid}/cwd" if dirfd == AT_FDCWD else f"/proc/{sc.tid}/fd/{dirfd}"
        try:
            here = os.readlink(link)
        except OSError:
            return resolve, "", path
        base = self.cache.from_cache(here) or here
        return resolve, base, (raw.lstrip("/") or ".") if in_root else raw

    # --- stat family --------------------------------------------------------------------------

    def _stat_path(
        self,
        sc: Syscall,
        mem: Memory,
        dirfd: int,
        ptr: int,
        follow: bool,
        empty_ok: bool,
        pack: Any,
    ) -> Action:
        try:
            raw = mem.read_cstring(ptr)  # one read: most of these are fstat(fd) ("")
        except OSError:
            return Allow()  # EFAULT from the kernel
        if not raw and empty_ok:
            return self._stat_fd(sc, mem, dirfd, pack)
        got = self._named(sc, dirfd, raw)
        if got is None:
            return Allow()
        path, access = self._access(got[1])
        if access is Access.LOCAL:
            return self._local(got[0], path)
        if access is Access.NOT_FOUND:
            return Fake(-errno.ENOENT)
        return self._stat_answer(mem, path, None, follow, pack)

    def _stat_fd(self, sc: Syscall, mem: Memory, fd: int, pack: Any) -> Action:
        found = self._fd_remote(sc.tid, fd)
        if found is None:
            return Allow()
        cache_path, remote_path = found
        return self._stat_answer(mem, remote_path, cache_path, True, pack)

    def _writer(
        self, buf: int, packer: Callable[[RemoteStat], bytes]
    ) -> Callable[[Memory, RemoteStat], Action]:
        def write(mem: Memory, st: RemoteStat) -> Action:
            try:
                mem.write(buf, packer(st))
            except OSError:
                return Fake(-errno.EFAULT)
            return Fake(0)

        return write

    def stat(self, sc: Syscall, mem: Memory) -> Action:
        out = (sc.args[1], pack_stat)
        return self._stat_path(sc, mem, AT_FDCWD, sc.args[0], True, False, out)

    def lstat(self, sc: Syscall, mem: Memory) -> Action:
        out = (sc.args[1], pack_stat)
        return self._stat_path(sc, mem, AT_FDCWD, sc.args[0], False, False, out)

    def newfstatat(self, sc: Syscall, mem: Memory) -> Action:
        flags = sc.args[3]
        follow = not flags & AT_SYMLINK_NOFOLLOW
        empty_ok = bool(flags & AT_EMPTY_PATH)
        out = (sc.args[2], pack_stat)
        return self._stat_path(sc, mem, as_int(sc.args[0]), sc.args[1], follow, empty_ok, out)

    def statx(self, sc: Syscall, mem: Memory) -> Action:
        flags = sc.args[2]
        follow = not flags & AT_SYMLINK_NOFOLLOW
        empty_ok = bool(flags & AT_EMPTY_PATH)
        out = (sc.args[4], pack_statx)
        return self._stat_path(sc, mem, as_int(sc.args[0]), sc.args[1], follow, empty_ok, out)

    def fstat(self, sc: Syscall, mem: Memory) -> Action:
        return self._stat_fd(sc, mem, as_int(sc.args[0]), (sc.args[1], pack_stat))

    # --- access, readlink, chdir, getcwd ------------------------------------------------

    def _access_call(
        self, sc: Syscall, mem: Memory, dirfd: int, ptr: int, mode: int, flags: int
    ) -> Action:
        got = self._name(sc, mem, dirfd, ptr)
        if got is None:
            return Allow()
        path, access = self._access(got[1])
        if access is Access.LOCAL:
            return self._local(got[0], path)
        if access is Access.NOT_FOUND:
            return Fake(-errno.ENOENT)
        if mode & os.W_OK and access is Access.READ_ONLY:
            return Allow()  # a write would be local: ask the local file system
        follow = not flags & AT_SYMLINK_NOFOLLOW
        if self.cache.known_missing(path, follow):
            return Fake(-errno.ENOENT)

        async def work() -> int:
            generation = self.cache.generation
            err = await self.remote.access(path, mode, follow)
            if err == errno.ENOENT:
                self.cache.remember_missing(path, follow, generation)
            return err

        return Defer(work, lambda r, _m: _failed(r) or Fake(-r))

    def access(self, sc: Syscall, mem: Memory) -> Action:
        return self._access_call(sc, mem, AT_FDCWD, sc.args[0], sc.args[1], 0)

    def faccessat(self, sc: Syscall, mem: Memory) -> Action:
        return self._access_call(sc, mem, as_int(sc.args[0]), sc.args[1], sc.args[2], 0)

    def faccessat2(self, sc: Syscall, mem: Memory) -> Action:
        return self._access_call(sc, mem, as_int(sc.args[0]), sc.args[1], sc.args[2], sc.args[3])

    def _readlink(
        self, sc: Syscall, mem: Memory, dirfd: int, ptr: int, buf: int, size: int
    ) -> Action:
        got = self._name(sc, mem, dirfd, ptr)
        if got is None:
            return Allow()
        _raw, named = got
        path, access = self._access(named)
        if access is Access.LOCAL:
            if _PROC_LINK.match(named.path):
                if sc.notified:
                    return self._read_proc_link(sc.tid, named.path, buf, size, mem)
                return Allow(on_exit=self._unmap_link(buf, size))
            return Allow()
        if access is Access.NOT_FOUND:
            return Fake(-errno.ENOENT)

        def then(r: Any, m: Memory) -> Action:
            failed = _failed(r)
            if failed is not None:
                return failed
            err, target = r
            if err:
                return Fake(-err)
            if as_int(size) <= 0:
                return Fake(-errno.EINVAL)
            data = target[: as_int(size)]
            m.write(buf, data)
            return Fake(len(data))

        return Defer(lambda: self.remote.readlink(path), then)

    def _read_proc_link(self, tid: int, path: str, buf: int, size: int, mem: Memory) -> Action:
        """readlink of /proc/…/fd/N or cwd, done here for a notified call: the link's
        text as the program would read it, a cache path shown as the remote one."""
        if as_int(size) <= 0:
            return Fake(-errno.EINVAL)
        # "self" must mean the program, not us; /proc/TID also works for a thread.
        ours = _PROC_SELF.sub(
            lambda m: f"/proc/{tid}/task/{tid}/" if m[1] else f"/proc/{tid}/", path
        )
        try:
            text = os.fsencode(os.readlink(ours))
        except OSError as exc:
            return Fake(-(exc.errno or errno.EIO))
        remote = self.cache.from_cache(os.fsdecode(text))
        data = (os.fsencode(remote) if remote is not None else text)[: as_int(size)]
        try:
            mem.write(buf, data)
        except OSError:
            return Fake(-errno.EFAULT)
        return Fake(len(data))

    def _unmap_link(self, buf: int, size: int) -> Callable[[int, Memory], int | None]:
        def on_exit(ret: int, m: Memory) -> int | None:
            if ret <= 0:
                return None
            remote = self.cache.from_cache(os.fsdecode(m.read(buf, ret)))
            if remote is None:
                return None
            data = os.fsencode(remote)[:size]
            m.write(buf, data)
            return len(data)

        return on_exit

    def readlink(self, sc: Syscall, mem: Memory) -> Action:
        return self._readlink(sc, mem, AT_FDCWD, sc.args[0], sc.args[1], sc.args[2])

    def readlinkat(self, sc: Syscall, mem: Memory) -> Action:
        return self._readlink(sc, mem, as_int(sc.args[0]), sc.args[1], sc.args[2], sc.args[3])

    def chdir(self, sc: Syscall, mem: Memory) -> Action:
        got = self._name(sc, mem, AT_FDCWD, sc.args[0])
        if got is None:
            return Allow()
        path, access = self._access(got[1])
        if access is Access.LOCAL:
            return Allow()
        if access is Access.NOT_FOUND:
            return Fake(-errno.ENOENT)

        async def work() -> tuple[int, str]:
            return await self.cache.materialise(
                self.remote, path, os.O_RDONLY | os.O_DIRECTORY, 0, writable=False
            )

        def then(r: Any, m: Memory) -> Action:
            failed = _failed(r)
            if failed is not None:
                return failed
            err, cache_path = r
            if err:
                return Fake(-err)
            self.remote_fds = self.remote_cwd = True
            if sc.notified:
                return Chdir(cache_path)
            (p,) = self._scratch(sc, m, os.fsencode(cache_path) + b"\0")
            return Allow(set_args={0: p})

        return Defer(work, then)

    def fchdir(self, sc: Syscall, mem: Memory) -> Action:
        """fchdir(2) runs as it is; with an fd of a copy the cwd may now be in the cache."""
        if self.remote_fds:
            self.remote_cwd = True
        return Allow()

    def getcwd(self, sc: Syscall, mem: Memory) -> Action:
        found = self._fd_remote(sc.tid, AT_FDCWD)
        if found is None:
            return Allow()
        data = os.fsencode(found[1]) + b"\0"
        if len(data) > sc.args[1]:
            return Fake(-errno.ERANGE)
        try:
            mem.write(sc.args[0], data)
        except OSError:
            return Fake(-errno.EFAULT)
        return Fake(len(data))

    def _xattr(self, sc: Syscall, mem: Memory, empty: int, follow: bool) -> Action:
        """Remote files carry no extended attributes here (ls -l asks for ACLs); a path
        the agent said moments ago is missing is ENOENT, as natively."""
        got = self._name(sc, mem, AT_FDCWD, sc.args[0])
        if got is None:
            return Allow()
        path, access = self._access(got[1])
        if access is Access.LOCAL:
            return self._local(got[0], path)
        gone = access is Access.NOT_FOUND or self.cache.known_missing(path, follow)
        return Fake(-errno.ENOENT if gone else empty)

    def getxattr(self, sc: Syscall, mem: Memory) -> Action:
        return self._xattr(sc, mem, -errno.ENODATA, True)

    def lgetxattr(self, sc: Syscall, mem: Memory) -> Action:
        return self._xattr(sc, mem, -errno.ENODATA, False)

    def listxattr(self, sc: Syscall, mem: Memory) -> Action:
        return self._xattr(sc, mem, 0, True)

    def llistxattr(self, sc: Syscall, mem: Memory) -> Action:
        return self._xattr(sc, mem, 0, False)

    # --- write mode -------------------------------------------------------------------------

    def _write_back_then_run(self, sc: Syscall, fd: int) -> Action:
        """close/fsync of a changed writable copy: write it back to the pod, then let the
        call run. A failed write-back is EIO. Notify engine: only the kernel's close can
        close the program's fd, and its result cannot be changed after it ran, so a close
        whose write-back failed answers EIO without closing (the fd stays open until the
        program exits; its copy is tried again at the end of the run)."""
        found = self._fd_remote(sc.tid, fd)
        if found is None:
            return Allow()
        cache_path = found[0]
        meta = self.cache.meta.get(cache_path)
        if meta is None or not meta.writable or not _fd_writable(sc.tid, fd):
            return Allow()
        if not self.cache.dirty(cache_path):
            return Allow()

        def then(err: Any, _m: Memory) -> Action:
            if isinstance(err, BaseException) or err:
                if sc.notified:
                    return Fake(-errno.EIO)
                # The local call still runs (a close must close), then reports EIO.
                return Allow(on_exit=lambda _ret, _mem: -errno.EIO)
            return Allow()

        return Defer(lambda: self.cache.write_back(self.remote, cache_path), then)

    def close(self, sc: Syscall, mem: Memory) -> Action:
        return self._write_back_then_run(sc, as_int(sc.args[0]))

    def fsync(self, sc: Syscall, mem: Memory) -> Action:
        return self._write_back_then_run(sc, as_int(sc.args[0]))

    def _remote_op(
        self,
        sc: Syscall,
        mem: Memory,
        dirfd: int,
        ptr: int,
        op: Callable[[str], Awaitable[int]],
        forget: bool = True,
    ) -> Action:
        got = self._name(sc, mem, dirfd, ptr)
        if got is None:
            return Allow()
        path, access = self._access(got[1])
        if access is Access.NOT_FOUND:
            return Fake(-errno.ENOENT)
        if access is not Access.READ_WRITE:
            return Allow()

        async def work() -> int:
            err = await op(path)
            if not err and forget:
                self.cache.forget(path)
            return err

        return Defer(work, lambda r, _m: _failed(r) or Fake(-r))

    def _mkdir(self, sc: Syscall, mem: Memory, dirfd: int, ptr: int, mode: int) -> Action:
        mode = mode & ~_umask(sc.tid) & 0o7777
        return self._remote_op(
            sc, mem, dirfd, ptr, lambda p: self.remote.path_op(PathOp.MKDIR, p, mode=mode)
        )

    def mkdir(self, sc: Syscall, mem: Memory) -> Action:
        return self._mkdir(sc, mem, AT_FDCWD, sc.args[0], sc.args[1])

    def mkdirat(self, sc: Syscall, mem: Memory) -> Action:
        return self._mkdir(sc, mem, as_int(sc.args[0]), sc.args[1], sc.args[2])

    def unlink(self, sc: Syscall, mem: Memory) -> Action:
        return self._remote_op(
            sc, mem, AT_FDCWD, sc.args[0], lambda p: self.remote.path_op(PathOp.UNLINK, p)
        )

    def rmdir(self, sc: Syscall, mem: Memory) -> Action:
        return self._remote_op(
            sc, mem, AT_FDCWD, sc.args[0], lambda p: self.remote.path_op(PathOp.RMDIR, p)
        )

    def unlinkat(self, sc: Syscall, mem: Memory) -> Action:
        op = PathOp.RMDIR if sc.args[2] & AT_REMOVEDIR else PathOp.UNLINK
        return self._remote_op(
            sc, mem, as_int(sc.args[0]), sc.args[1], lambda p: self.remote.path_op(op, p)
        )

    def truncate(self, sc: Syscall, mem: Memory) -> Action:
        length = sc.args[1]
        return self._remote_op(
            sc,
            mem,
            AT_FDCWD,
            sc.args[0],
            lambda p: self.remote.path_op(PathOp.TRUNCATE, p, length=length),
        )

    def _chmod(self, sc: Syscall, mem: Memory, dirfd: int, ptr: int, mode: int) -> Action:
        return self._remote_op(
            sc, mem, dirfd, ptr, lambda p: self.remote.path_op(PathOp.CHMOD, p, mode=mode)
        )

    def chmod(self, sc: Syscall, mem: Memory) -> Action:
        return self._chmod(sc, mem, AT_FDCWD, sc.args[0], sc.args[1])

    def fchmodat(self, sc: Syscall, mem: Memory) -> Action:
        return self._chmod(sc, mem, as_int(sc.args[0]), sc.args[1], sc.args[2])

    def fchmod(self, sc: Syscall, mem: Memory) -> Action:
        found = self._fd_remote(sc.tid, as_int(sc.args[0]))
        if found is None:
            return Allow()
        cache_path, path = found
        mode = sc.args[1] & 0o7777

        async def work() -> int:
            err = await self.remote.path_op(PathOp.CHMOD, path, mode=mode)
            if not err:
                self.cache.invalidate(path)
            meta = self.cache.meta.get(cache_path)
            if not err and meta is not None:
                err2, st = await self.remote.stat(path, True)
                if not err2 and st is not None:
                    meta.stat = st
            return err

        return Defer(work, lambda r, _m: _failed(r) or Fake(-r))

    def _rename(
        self, sc: Syscall, mem: Memory, d1: int, p1: int, d2: int, p2: int, flags: int
    ) -> Action:
        a = self._name(sc, mem, d1, p1)
        b = self._name(sc, mem, d2, p2)
        if a is None and b is None:
            return Allow()
        acc_a = self._access(a[1]) if a is not None else ("", Access.LOCAL)
        acc_b = self._access(b[1]) if b is not None else ("", Access.LOCAL)
        if Access.NOT_FOUND in (acc_a[1], acc_b[1]):
            return Fake(-errno.ENOENT)
        remote_a = acc_a[1] is Access.READ_WRITE
        remote_b = acc_b[1] is Access.READ_WRITE
        if not remote_a and not remote_b:
            return Allow()
        if remote_a != remote_b:
            return Fake(-errno.EXDEV)  # across the local/remote boundary, like two devices

        async def work() -> int:
            err = await self.remote.path_op(PathOp.RENAME, acc_a[0], path2=acc_b[0], flags=flags)
            if not err:
                self.cache.forget(acc_a[0])
                self.cache.forget(acc_b[0])
            return err

        return Defer(work, lambda r, _m: _failed(r) or Fake(-r))

    def rename(self, sc: Syscall, mem: Memory) -> Action:
        return self._rename(sc, mem, AT_FDCWD, sc.args[0], AT_FDCWD, sc.args[1], 0)

    def renameat(self, sc: Syscall, mem: Memory) -> Action:
        a = sc.args
        return self._rename(sc, mem, as_int(a[0]), a[1], as_int(a[2]), a[3], 0)

    def renameat2(self, sc: Syscall, mem: Memory) -> Action:
        a = sc.args
        return self._rename(sc, mem, as_int(a[0]), a[1], as_int(a[2]), a[3], a[4] & 0xFFFFFFFF)

    # --- the feature ----------------------------------------------------------------------------

    def _fast_raw(self, tid: int, ptr: int, mem: RawReader, empty_ok: bool) -> bytes | bool:
        """The path at ptr, or the verdict when that settles the call: True, it runs as it
        is (an absolute path already decided local, or "" for an fstat-like call while the
        program holds no copy); False, to the handler."""
        try:
            data = mem.read_some(tid, ptr, 256)
        except OSError:
            return False
        nul = data.find(b"\0")
        if nul < 0:
            return False
        if nul == 0:
            return not empty_ok or not self.remote_fds
        raw = data[:nul]
        return True if raw in self.local_raw else raw

    def _fast_path(self, tid: int, ptr: int, mem: RawReader, empty_ok: bool) -> bool:
        return self._fast_raw(tid, ptr, mem, empty_ok) is True

    def _fast_stat(
        self,
        tid: int,
        ptr: int,
        mem: RawReader,
        empty_ok: bool,
        follow: bool,
        buf: int,
        packer: Callable[[RemoteStat], bytes],
    ) -> int:
        """As _fast_path, and a stat of a plain absolute remote path the stat cache knows
        (a walk's lstat of every entry it listed) is answered here: the handler's
        decisions (the same rules, hooks included) without its objects."""
        raw = self._fast_raw(tid, ptr, mem, empty_ok)
        if isinstance(raw, bool):
            return raw
        # Absolute and already normal (what _norm would leave as it is), not ours.
        if raw[0] != 0x2F or b"//" in raw or b"/." in raw or (len(raw) > 1 and raw[-1] == 0x2F):
            return False
        path = os.fsdecode(raw)
        if self.cache.owns(path):
            return True
        path = self.rules.map_path(path)
        access = self.rules.decide(path)
        if access is Access.LOCAL:
            return False  # the handler remembers it for _fast_path
        if access is Access.NOT_FOUND:
            return -errno.ENOENT
        st = self.cache.cached_stat(path, follow)
        if st is None:
            # Known missing: as the handler would say; else asked by the handler.
            return -errno.ENOENT if self.cache.known_missing(path, follow) else False
        try:
            mem.write(tid, buf, packer(st))
        except OSError:
            return -errno.EFAULT
        return 0

    def fast_checks(self) -> dict[int, FastCheck]:
        """Notify engine: answers before the handlers for the calls that are mostly on
        local paths (a python3 start-up makes ~600): the same decisions, without building
        the handler's objects. Calls with two paths, /proc links or resolve flags are left
        to the handlers."""

        def path_at(i: int, flags_at: int | None = None) -> FastCheck:
            def check(tid: int, args: tuple[int, ...], mem: RawReader) -> bool:
                empty_ok = flags_at is not None and bool(args[flags_at] & AT_EMPTY_PATH)
                return self._fast_path(tid, args[i], mem, empty_ok)

            return check

        def no_copies(tid: int, args: tuple[int, ...], mem: RawReader) -> bool:
            return not self.remote_fds

        fast_stat = self._fast_stat

        def stat_at(
            i: int,
            buf_at: int,
            flags_at: int | None,
            follow: bool | None,
            packer: Callable[[RemoteStat], bytes],
        ) -> FastCheck:
            def check(tid: int, args: tuple[int, ...], mem: RawReader) -> int:
                flags = 0 if flags_at is None else args[flags_at]
                return fast_stat(
                    tid,
                    args[i],
                    mem,
                    bool(flags & AT_EMPTY_PATH),
                    not flags & AT_SYMLINK_NOFOLLOW if follow is None else follow,
                    args[buf_at],
                    packer,
                )

            return check

        checks: dict[str, FastCheck] = {
            "open": path_at(0),
            "openat": path_at(1),
            "stat": stat_at(0, 1, None, True, pack_stat),
            "lstat": stat_at(0, 1, None, False, pack_stat),
            "newfstatat": stat_at(1, 2, 3, None, pack_stat),
            "statx": stat_at(1, 4, 2, None, pack_statx),
            "access": path_at(0),
            "faccessat": path_at(1),
            "faccessat2": path_at(1),
            "getxattr": path_at(0),
            "lgetxattr": path_at(0),
            "listxattr": path_at(0),
            "llistxattr": path_at(0),
            "fstat": no_copies,
            "fchdir": no_copies,
            "getcwd": lambda tid, args, mem: not self.remote_cwd,
        }
        return {NR[name]: check for name, check in checks.items()}

    def table(self) -> SyscallTable:
        """The files feature's syscall table: every call is trapped; the write calls only
        when something can be written remotely."""
        reads: dict[str, Handler] = {
            "open": self.open,
            "openat": self.openat,
            "openat2": self.openat2,
            "creat": self.creat,
            "stat": self.stat,
            "lstat": self.lstat,
            "newfstatat": self.newfstatat,
            "statx": self.statx,
            "fstat": self.fstat,
            "access": self.access,
            "faccessat": self.faccessat,
            "faccessat2": self.faccessat2,
            "readlink": self.readlink,
            "readlinkat": self.readlinkat,
            "chdir": self.chdir,
            "fchdir": self.fchdir,
            "getcwd": self.getcwd,
            "getxattr": self.getxattr,
            "lgetxattr": self.lgetxattr,
            "listxattr": self.listxattr,
            "llistxattr": self.llistxattr,
        }
        writes: dict[str, Handler] = {
            "close": self.close,
            "fsync": self.fsync,
            "fdatasync": self.fsync,
            "unlink": self.unlink,
            "unlinkat": self.unlinkat,
            "rmdir": self.rmdir,
            "mkdir": self.mkdir,
            "mkdirat": self.mkdirat,
            "rename": self.rename,
            "renameat": self.renameat,
            "renameat2": self.renameat2,
            "truncate": self.truncate,
            "chmod": self.chmod,
            "fchmod": self.fchmod,
            "fchmodat": self.fchmodat,
        }
        chosen = reads | writes if self.rules.writes_remote else reads
        fast = self.fast_checks()
        return {
            NR[name]: trapped(NR[name], handler, fast=fast.get(NR[name]))
            for name, handler in chosen.items()
        }

    async def close_session(self) -> None:
        """End of the run: write back what the program left unclosed, drop the cache."""
        try:
            if self.rules.writes_remote:
                failed = await self.cache.flush(self.remote)
                if failed:
                    log.error("%d file(s) could not be written back to the target", failed)
        finally:
            self.cache.close()


def _fd_writable(tid: int, fd: int) -> bool:
    try:
        with open(f"/proc/{tid}/fdinfo/{fd}") as f:
            for line in f:
                if line.startswith("flags:"):
                    return int(line.split()[1], 8) & os.O_ACCMODE != os.O_RDONLY
    except OSError:
        pass
    return True


def make_fs_feature(rules: FsRules, remote: RemoteFs, *, tmpdir: str | None = None) -> Feature:
    """The files Feature: its syscall table, and the cleanup for the end of the run."""
    sweep_stale(tmpdir)
    fs = FsFeature(rules, remote, Cache(tmpdir))
    return Feature(name="files", table=fs.table(), close=fs.close_session)
