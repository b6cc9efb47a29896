"""Copies of a traced thread's file descriptors in our own table, via pidfd_getfd(2):
the same open file description, so what we do on the copy (connect, getsockname, a
seccomp listener's ioctls) acts on the program's own file. We may: we are its tracer."""

from __future__ import annotations

import ctypes
import errno
import os

SYS_PIDFD_OPEN = 434
SYS_PIDFD_GETFD = 438
PIDFD_THREAD = os.O_EXCL  # Linux 6.9+: a pidfd for a thread, not only a process leader

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def _syscall(*args: int) -> int:
    ret = int(_libc.syscall(*(ctypes.c_long(a) for a in args)))
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return ret


def _tgid(tid: int) -> int:
    with open(f"/proc/{tid}/status", "rb") as f:
        for line in f:
            if line.startswith(b"Tgid:"):
                return int(line.split()[1])
    raise OSError(errno.ESRCH, "no Tgid")


def _pidfd(tid: int) -> int:
    try:
        return _syscall(SYS_PIDFD_OPEN, tid, PIDFD_THREAD)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.ENOENT):
            raise
    return _syscall(SYS_PIDFD_OPEN, _tgid(tid), 0)  # older kernels: the process leader


def take_fd(tid: int, fd: int) -> int:
    """Our copy (close-on-exec) of thread `tid`'s `fd`; the caller closes it.
    OSError(EBADF) when the thread has no such fd."""
    pidfd = _pidfd(tid)
    try:
        return _syscall(SYS_PIDFD_GETFD, pidfd, fd, 0)
    finally:
        os.close(pidfd)
