"""Paths resolved inside the target's root, never outside it.

The agent does not enter the target's mount namespace (a multithreaded process cannot),
so it walks `/proc/PID/root`. A plain `open("/proc/PID/root" + path)` would resolve an
absolute symlink inside the pod against the *agent's* root; openat2(2) with
RESOLVE_IN_ROOT on a directory fd of the pod's root makes "/" and ".." mean the pod's
root for every step, symlinks included (it also refuses /proc magic links).
"""

from __future__ import annotations

import ctypes
import os
import struct

SYS_OPENAT2 = 437
RESOLVE_NO_XDEV = 0x01
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
RESOLVE_IN_ROOT = 0x10
RESOLVE_CACHED = 0x20
# The program's openat2 resolve flags we apply (all there are, as of Linux 6.x).
PROGRAM_RESOLVE = (
    RESOLVE_NO_XDEV
    | RESOLVE_NO_MAGICLINKS
    | RESOLVE_NO_SYMLINKS
    | RESOLVE_BENEATH
    | RESOLVE_IN_ROOT
    | RESOLVE_CACHED
)

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def openat2(dirfd: int, path: str | bytes, flags: int, mode: int = 0, resolve: int = 0) -> int:
    """openat2(2): struct open_how {u64 flags; u64 mode; u64 resolve}. Raises OSError."""
    raw = path.encode("utf-8", "surrogateescape") if isinstance(path, str) else path
    how = ctypes.create_string_buffer(struct.pack("<QQQ", flags, mode, resolve), 24)
    fd = _libc.syscall(
        ctypes.c_long(SYS_OPENAT2),
        ctypes.c_int(dirfd),
        ctypes.c_char_p(raw),
        how,
        ctypes.c_size_t(24),
    )
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), path)
    return int(fd)


class PodRoot:
    """A directory fd on the target's root (opened once, as root, when the session starts:
    /proc/PID/root needs ptrace access, which the target's own uid would not have)."""

    def __init__(self, pid: int | None) -> None:
        where = f"/proc/{pid}/root" if pid is not None else "/"
        self.fd = os.open(where, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)

    def open(self, path: str, flags: int, mode: int = 0, resolve: int = 0, base: str = "") -> int:
        """open(2) of an absolute pod path, resolved inside the pod's root; with the
        program's openat2 `resolve` flags too. With RESOLVE_BENEATH or RESOLVE_IN_ROOT,
        `path` is relative to the pod directory `base`, which they then mean (so neither
        an absolute symlink nor ".." can leave it, as for the program's own call)."""
        resolve &= PROGRAM_RESOLVE
        if base and resolve & (RESOLVE_BENEATH | RESOLVE_IN_ROOT):
            bfd = self.open(base, os.O_PATH | os.O_DIRECTORY)
            try:
                return openat2(
                    bfd, path, flags | os.O_CLOEXEC, mode, resolve | RESOLVE_NO_MAGICLINKS
                )
            finally:
                os.close(bfd)
        resolve &= ~RESOLVE_BENEATH  # without a base: the pod's root, as below
        return openat2(
            self.fd,
            path,
            flags | os.O_CLOEXEC,
            mode,
            resolve | RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS,
        )

    def parent(self, path: str) -> tuple[int, str]:
        """(fd of the parent directory, last component) for calls that must not follow
        the last component (lstat, readlink, unlink, rename, mkdir). The caller closes fd."""
        head, _, name = path.rstrip("/").rpartition("/")
        if not name:
            # "/" itself: its "parent" is the root, seen as ".".
            return self.open("/", os.O_PATH | os.O_DIRECTORY), "."
        return self.open(head or "/", os.O_PATH | os.O_DIRECTORY), name

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
