"""The program's memory. Writes: process_vm_writev. Reads: the ptrace engine preads a
cached /proc/TID/mem fd per thread (it forgets a thread's fd at its exec and exit
events); the notify engine sees no such events, and a cached fd can outlive what it
names (a vfork child's fd is its parent's memory after the child's exec; a dead thread's
tid reused by another process), so it reads with process_vm_readv, which always reads
the thread's memory of the moment (~1.4 us more per read, measured). None of this is a
ptrace request: all need only ptrace *permission* (PTRACE_MODE_ATTACH), which the
supervisor has as the program's ancestor, so they work while a debugger is its tracer.
"""

from __future__ import annotations

import ctypes
import errno
import os
import threading
from typing import Any, Protocol

FIRST_READ = 256


class _IoVec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


_libc = ctypes.CDLL(None, use_errno=True)
_libc.process_vm_writev.restype = ctypes.c_ssize_t
_vm_args: list[Any] = [
    ctypes.c_int,
    ctypes.POINTER(_IoVec),
    ctypes.c_ulong,
    ctypes.POINTER(_IoVec),
    ctypes.c_ulong,
    ctypes.c_ulong,
]
_libc.process_vm_writev.argtypes = _vm_args
_libc.process_vm_readv.restype = ctypes.c_ssize_t
_libc.process_vm_readv.argtypes = _vm_args


class MemFiles:
    """Reads of tracee memory through /proc/TID/mem with pread: one plain syscall from C,
    where a ctypes process_vm_readv call cost as much again in argument conversion (the
    hot path of every trapped syscall). One fd per thread, kept while it lives (owned by
    one tracer: the tracer forgets a thread when it exec's or dies, and closes all at
    the end). A read that returns nothing means the fd is stale: reopen once. Writes
    stay on process_vm_writev, which, unlike /proc/TID/mem, refuses read-only pages."""

    MAX = 512

    def __init__(self) -> None:
        self._fds: dict[int, int] = {}
        # Uncontended in use (one thread per instance); it makes close() from the end of
        # the run safe against a late reader: no fd is closed while it is being read.
        self._lock = threading.Lock()
        self._closed = False

    def _fd(self, tid: int) -> int:
        fd = self._fds.get(tid)
        if fd is None:
            if self._closed:
                raise OSError(errno.ESRCH, "the run is over")
            if len(self._fds) >= self.MAX:
                self._drop_all()
            fd = self._fds[tid] = os.open(f"/proc/{tid}/mem", os.O_RDONLY | os.O_CLOEXEC)
        return fd

    def _forget(self, tid: int) -> None:
        fd = self._fds.pop(tid, None)
        if fd is not None:
            os.close(fd)

    def _drop_all(self) -> None:
        for tid in list(self._fds):
            self._forget(tid)

    def forget(self, tid: int) -> None:
        with self._lock:
            self._forget(tid)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._drop_all()

    def read_some(self, tid: int, addr: int, size: int) -> bytes:
        """Up to `size` bytes from addr, fewer where the mapping ends; OSError(EFAULT)
        if addr itself is not mapped."""
        with self._lock:
            for attempt in (0, 1):
                try:
                    data = os.pread(self._fd(tid), size, addr)
                except OSError as exc:
                    if exc.errno in (errno.EIO, errno.EFAULT):
                        raise OSError(errno.EFAULT, "bad address in the program") from None
                    raise
                if data or not size:
                    return data
                self._forget(tid)
                if attempt:
                    break
        raise OSError(errno.ESRCH, "the thread's memory is gone")

    def read(self, tid: int, addr: int, size: int) -> bytes:
        """Exactly `size` bytes; OSError(EFAULT) when the range is not all mapped."""
        data = self.read_some(tid, addr, size)
        if len(data) != size:
            raise OSError(errno.EFAULT, "short read of tracee memory")
        return data


def write_mem(tid: int, addr: int, data: bytes) -> None:
    """Write tracee memory (even read-only pages are not writable this way: EFAULT)."""
    buf = ctypes.create_string_buffer(data, len(data))
    local = _IoVec(ctypes.cast(buf, ctypes.c_void_p), len(data))
    remote = _IoVec(addr, len(data))
    n = _libc.process_vm_writev(tid, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0)
    if n < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    if n != len(data):
        raise OSError(14, "short write of tracee memory")


class Reader(Protocol):
    def read(self, tid: int, addr: int, size: int) -> bytes: ...
    def read_some(self, tid: int, addr: int, size: int) -> bytes: ...


class ThreadMemory:
    """One thread's memory (actions.Memory)."""

    __slots__ = ("files", "tid")

    def __init__(self, tid: int, files: Reader) -> None:
        self.tid = tid
        self.files = files

    def read(self, addr: int, size: int) -> bytes:
        return self.files.read(self.tid, addr, size)

    def write(self, addr: int, data: bytes) -> None:
        write_mem(self.tid, addr, data)

    def read_cstring(self, addr: int, limit: int = 4096) -> bytes:
        """A NUL-terminated string: a short first read (most paths are short), more
        only if needed. A read stops where the mapping ends; reading on from there
        fails with EFAULT, as the kernel would."""
        out = b""
        want = FIRST_READ
        while len(out) < limit:
            data = self.files.read_some(self.tid, addr, min(want, limit - len(out)))
            nul = data.find(b"\0")
            if nul >= 0:
                return out + data[:nul]
            out += data
            addr += len(data)
            want = 4096
        raise OSError(errno.ENAMETOOLONG, "string too long")


class TraceeMemory(MemFiles):
    """MemFiles with `of(tid)`: the Memory a handler gets (ptrace engine)."""

    def of(self, tid: int) -> ThreadMemory:
        return ThreadMemory(tid, self)


class VmReader:
    """Reads with process_vm_readv (notify engine). One per thread: the buffer is reused."""

    SIZE = 1 << 16

    def __init__(self) -> None:
        self._buf = ctypes.create_string_buffer(self.SIZE)
        self._local = _IoVec(ctypes.cast(self._buf, ctypes.c_void_p), 0)
        self._remote = _IoVec(0, 0)
        self._local_p = ctypes.byref(self._local)
        self._remote_p = ctypes.byref(self._remote)

    def read_some(self, tid: int, addr: int, size: int) -> bytes:
        """Up to `size` bytes from addr, fewer where the mapping ends; OSError(EFAULT)
        if addr itself is not mapped, ESRCH if the thread is gone."""
        if size > self.SIZE:
            buf = ctypes.create_string_buffer(size)
            local = _IoVec(ctypes.cast(buf, ctypes.c_void_p), size)
            remote = _IoVec(addr, size)
            n = _libc.process_vm_readv(tid, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0)
            return self._result(n, buf)
        self._local.iov_len = size
        self._remote.iov_base = addr
        self._remote.iov_len = size
        n = _libc.process_vm_readv(tid, self._local_p, 1, self._remote_p, 1, 0)
        return self._result(n, self._buf)

    @staticmethod
    def _result(n: int, buf: Any) -> bytes:
        if n < 0:
            err = ctypes.get_errno()
            if err in (errno.EFAULT, errno.EIO):
                raise OSError(errno.EFAULT, "bad address in the program")
            raise OSError(err, os.strerror(err))
        return ctypes.string_at(ctypes.addressof(buf), n)  # only the n bytes read

    def read(self, tid: int, addr: int, size: int) -> bytes:
        data = self.read_some(tid, addr, size)
        if len(data) != size:
            raise OSError(errno.EFAULT, "short read of the program's memory")
        return data

    def of(self, tid: int) -> ThreadMemory:
        return ThreadMemory(tid, self)

    def close(self) -> None:
        pass
