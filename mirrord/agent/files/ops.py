"""The file operations themselves, synchronous, run on a files worker thread.

Each call resolves its path inside the pod's root (resolve.py) with the target's
credentials (creds.py) and answers an errno instead of raising: the program must get
the kernel's own error for its call.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat as statmod
from collections.abc import Iterator

from mirrord.agent.creds import Creds, acting_as, target_creds
from mirrord.agent.files.resolve import PodRoot
from mirrord.v1 import files_pb2

CHUNK = 1 << 20  # 1 MiB per message: well under gRPC's 4 MiB default
# Flags a client may ask the agent to open with; anything else (O_TMPFILE, O_PATH…) is
# refused by the supervisor before it gets here.
OPEN_FLAGS = os.O_ACCMODE | os.O_CREAT | os.O_EXCL | os.O_TRUNC | os.O_DIRECTORY | os.O_NOFOLLOW


def to_pb(st: os.stat_result) -> files_pb2.FileStat:
    return files_pb2.FileStat(
        dev=st.st_dev,
        ino=st.st_ino,
        nlink=st.st_nlink,
        mode=st.st_mode,
        uid=st.st_uid,
        gid=st.st_gid,
        rdev=st.st_rdev,
        size=st.st_size,
        blksize=st.st_blksize,
        blocks=st.st_blocks,
        atime_ns=st.st_atime_ns,
        mtime_ns=st.st_mtime_ns,
        ctime_ns=st.st_ctime_ns,
    )


def entries_of(dfd: int) -> Iterator[files_pb2.DirEntry]:
    """A directory's entries with their lstat (and a symlink's target)."""
    # os.listdir(fd) reads a dup of the fd, so dfd stays usable for the lstat calls.
    for name in os.listdir(dfd):
        raw = os.fsencode(name)
        try:
            st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
        except OSError:
            continue  # removed while we listed
        entry = files_pb2.DirEntry(name=raw, stat=to_pb(st))
        if statmod.S_ISLNK(st.st_mode):
            with contextlib.suppress(OSError):
                entry.link_target = os.readlink(raw, dir_fd=dfd)
        yield entry


def _errno(exc: OSError) -> int:
    return exc.errno or errno.EIO


class FileOps:
    def __init__(self, pid: int | None) -> None:
        self.pid = pid
        self.root = PodRoot(pid)

    def creds(self) -> Creds | None:
        # Read per call: the target may have changed its uid since the session began.
        return target_creds(self.pid) if self.pid is not None else None

    def close(self) -> None:
        self.root.close()

    # --- metadata ---------------------------------------------------------------------

    def stat(self, path: str, follow: bool) -> files_pb2.StatReply:
        try:
            with acting_as(self.creds()):
                if follow:
                    fd = self.root.open(path, os.O_PATH)
                    try:
                        st = os.fstat(fd)
                    finally:
                        os.close(fd)
                else:
                    dfd, name = self.root.parent(path)
                    try:
                        st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
                    finally:
                        os.close(dfd)
        except OSError as e:
            return files_pb2.StatReply(errno=_errno(e))
        return files_pb2.StatReply(stat=to_pb(st))

    def access(self, path: str, mode: int, follow: bool) -> int:
        try:
            with acting_as(self.creds()):
                if follow:
                    fd = self.root.open(path, os.O_PATH)
                    try:
                        # effective_ids: AT_EACCESS, so the check uses the fsuid we set
                        # (plain access(2) would check the real uid: root).
                        ok = os.access(f"/proc/self/fd/{fd}", mode, effective_ids=True)
                    finally:
                        os.close(fd)
                else:
                    dfd, name = self.root.parent(path)
                    try:
                        ok = os.access(
                            name, mode, dir_fd=dfd, effective_ids=True, follow_symlinks=False
                        )
                    finally:
                        os.close(dfd)
        except OSError as e:
            return _errno(e)
        return 0 if ok else errno.EACCES

    def readlink(self, path: str) -> files_pb2.ReadLinkReply:
        try:
            with acting_as(self.creds()):
                dfd, name = self.root.parent(path)
                try:
                    target = os.readlink(name.encode("utf-8", "surrogateescape"), dir_fd=dfd)
                finally:
                    os.close(dfd)
        except OSError as e:
            return files_pb2.ReadLinkReply(errno=_errno(e))
        return files_pb2.ReadLinkReply(target=target)

    # --- open: content or listing -------------------------------------------------------

    def open(self, req: files_pb2.OpenRequest) -> tuple[files_pb2.OpenChunk, int | None]:
        """The first reply message, and for a regular file an fd to stream (caller closes)."""
        flags = (req.flags & OPEN_FLAGS) | os.O_NONBLOCK  # a FIFO must not hang the agent
        try:
            with acting_as(self.creds()):
                fd = self.root.open(
                    req.path, flags, req.mode & 0o7777, resolve=req.resolve, base=req.base
                )
        except OSError as e:
            return files_pb2.OpenChunk(errno=_errno(e)), None
        try:
            st = os.fstat(fd)
            if req.flags & os.O_ACCMODE == os.O_WRONLY and statmod.S_ISREG(st.st_mode):
                # The client needs the content too (its copy is written back whole); the
                # program was allowed to open it, so read it back as ourselves.
                rfd = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC)
                os.close(fd)
                fd = rfd
            first = files_pb2.OpenChunk(stat=to_pb(st))
            if statmod.S_ISDIR(st.st_mode):
                first.entries.extend(entries_of(fd))
                os.close(fd)
                return first, None
            if not statmod.S_ISREG(st.st_mode):
                os.close(fd)  # devices, FIFOs, sockets: metadata only, no content
                return first, None
            known = req.known
            if (
                req.HasField("known")
                and known.ino == st.st_ino
                and known.dev == st.st_dev
                and known.size == st.st_size
                and known.mtime_ns == st.st_mtime_ns
                and known.ctime_ns == st.st_ctime_ns
            ):
                first.unchanged = True
                os.close(fd)
                return first, None
            return first, fd
        except OSError as e:
            os.close(fd)
            return files_pb2.OpenChunk(errno=_errno(e)), None

    @staticmethod
    def read_chunk(fd: int) -> bytes:
        return os.read(fd, CHUNK)

    # --- writing --------------------------------------------------------------------------

    def store_open(self, path: str) -> int:
        """An fd to write a file back through (truncated; same inode, so owner and mode
        stay). Raises OSError."""
        with acting_as(self.creds()):
            return self.root.open(path, os.O_WRONLY | os.O_TRUNC | os.O_NOFOLLOW)

    def path_op(self, req: files_pb2.PathOpRequest) -> int:
        P = files_pb2.PathOpRequest
        try:
            with acting_as(self.creds()):
                if req.op == P.TRUNCATE:
                    fd = self.root.open(req.path, os.O_WRONLY)
                    try:
                        os.ftruncate(fd, req.length)
                    finally:
                        os.close(fd)
                    return 0
                if req.op == P.CHMOD:
                    fd = self.root.open(req.path, os.O_PATH)
                    try:
                        # fchmod refuses O_PATH fds; the /proc/self/fd link names the file.
                        os.chmod(f"/proc/self/fd/{fd}", req.mode & 0o7777)
                    finally:
                        os.close(fd)
                    return 0
                dfd, name = self.root.parent(req.path)
                try:
                    if req.op == P.MKDIR:
                        os.mkdir(name, req.mode & 0o7777, dir_fd=dfd)
                    elif req.op == P.UNLINK:
                        os.unlink(name, dir_fd=dfd)
                    elif req.op == P.RMDIR:
                        os.rmdir(name, dir_fd=dfd)
                    elif req.op == P.RENAME:
                        dfd2, name2 = self.root.parent(req.path2)
                        try:
                            _renameat2(dfd, name, dfd2, name2, req.flags)
                        finally:
                            os.close(dfd2)
                    else:
                        return errno.ENOSYS
                finally:
                    os.close(dfd)
        except OSError as e:
            return _errno(e)
        return 0


def _renameat2(dfd: int, name: str, dfd2: int, name2: str, flags: int) -> None:
    if flags == 0:
        os.rename(name, name2, src_dir_fd=dfd, dst_dir_fd=dfd2)
        return
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    ret = libc.renameat2(dfd, os.fsencode(name), dfd2, os.fsencode(name2), ctypes.c_uint(flags))
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
