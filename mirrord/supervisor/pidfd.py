"""Copies of a traced thread's file descriptors in our own table, via pidfd_getfd(2):
the same open file description, so what we do on the copy (connect, getsockname, a
seccomp listener's ioctls) acts on the program's own file. We may: we are its tracer."""

from __future__ import annotations

import ctypes
import errno
import os
import threading

SYS_PIDFD_GETFD = 438
PIDFD_THREAD = os.O_EXCL  # Linux 6.9+: a pidfd for a thread, not only a process leader
# Thread pidfds kept open for the next copy (most trapped socket calls make one, and
# opening and closing a pidfd each time was a third of a trapped getsockname).
KEPT_PIDFDS = 256

_libc = ctypes.CDLL(None, use_errno=True)
# A fixed prototype rather than the variadic syscall(): ctypes converts the arguments in
# C then (the per-call c_long objects cost more than the syscall).
_getfd_call = ctypes.CFUNCTYPE(
    ctypes.c_long, ctypes.c_long, ctypes.c_int, ctypes.c_int, ctypes.c_uint, use_errno=True
)(("syscall", _libc))


def _getfd(pidfd: int, fd: int) -> int:
    ret = int(_getfd_call(SYS_PIDFD_GETFD, pidfd, fd, 0))
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


class _Pidfds:
    """Thread pidfds by tid, kept open. A pidfd names its thread for good: once the
    thread is gone, a copy through it fails with ESRCH, never reaches whoever reuses the
    tid; then a new one is opened. Only thread pidfds are kept: a process leader's (older
    kernels) would still work after the tid is reused by another process's thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # serving threads and the loop copy fds at once
        self._by_tid: dict[int, int] = {}

    def take_fd(self, tid: int, fd: int) -> int:
        with self._lock:  # held through the copy: an eviction must not close it under us
            pidfd = self._by_tid.get(tid)
            if pidfd is not None:
                try:
                    return _getfd(pidfd, fd)
                except OSError as e:
                    if e.errno != errno.ESRCH:
                        raise
                    del self._by_tid[tid]  # that thread is gone: the tid is someone else's
                    os.close(pidfd)
            try:
                pidfd = os.pidfd_open(tid, PIDFD_THREAD)
            except OSError as e:
                if e.errno not in (errno.EINVAL, errno.ENOENT):
                    raise
                return self._from_leader(tid, fd)
            if len(self._by_tid) >= KEPT_PIDFDS:
                oldest = next(iter(self._by_tid))
                os.close(self._by_tid.pop(oldest))
            self._by_tid[tid] = pidfd
            return _getfd(pidfd, fd)

    @staticmethod
    def _from_leader(tid: int, fd: int) -> int:
        """Kernels before 6.9: the process leader's pidfd, for this copy only."""
        pidfd = os.pidfd_open(_tgid(tid), 0)
        try:
            return _getfd(pidfd, fd)
        finally:
            os.close(pidfd)


_pidfds = _Pidfds()


def take_fd(tid: int, fd: int) -> int:
    """Our copy (close-on-exec) of thread `tid`'s `fd`; the caller closes it.
    OSError(EBADF) when the thread has no such fd."""
    return _pidfds.take_fd(tid, fd)
