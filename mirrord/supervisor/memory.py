"""The program's memory. Writes: process_vm_writev. Reads: pread on a cached
/proc/TID/mem fd per thread (1.3 us; a ctypes process_vm_readv costs 2.7 us, measured).
A cached fd names the memory the thread had when it was opened, which it can outlive:
- exec replaces the memory: the old one is freed and reads return nothing (then the fd is
  reopened), except after a vfork child's exec, where its fd still names the parent's
  memory. The ptrace engine forgets a thread's fd at its exec event; the notify engine
  traps execve/execveat for that (and sees the exec before it happens).
- a dead thread's tid may be reused by another process while the first one lives: the
  notify engine, which sees no exits, drops every fd after MAX_AGE_S; reusing a tid takes
  all the other 32k+ pids to be allocated first, which takes far longer.
None of this is a ptrace request: all need only ptrace *permission* (PTRACE_MODE_ATTACH),
which the supervisor has as the program's ancestor, so they work while a debugger is the
program's tracer.
"""

from __future__ import annotations

import ctypes
import errno
import os
import threading
import time
from typing import Any

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


class MemFiles:
    """Reads of tracee memory through /proc/TID/mem with pread: one plain syscall from C,
    where a ctypes process_vm_readv call cost as much again in argument conversion (the
    hot path of every trapped syscall). One fd per thread, kept while it lives (owned by
    one tracer: the tracer forgets a thread when it exec's or dies, and closes all at
    the end). A read that returns nothing means the fd is stale: reopen once. Writes
    stay on process_vm_writev, which, unlike /proc/TID/mem, refuses read-only pages."""

    MAX = 512

    def __init__(self, max_age: float | None = None, *, locked: bool = True) -> None:
        """`locked=False`: one thread reads and the owner closes only once that thread is
        gone (the notify engine's serving thread): no lock on the hot path."""
        self._locked = locked
        self._fds: dict[int, int] = {}
        self._max_age = max_age
        self._since = time.monotonic()
        # Uncontended in use (one thread per instance); it makes close() from the end of
        # the run safe against a late reader: no fd is closed while it is being read.
        self._lock = threading.Lock()
        self._closed = False

    def _fd(self, tid: int) -> int:
        if self._max_age is not None:
            now = time.monotonic()
            if now - self._since > self._max_age:
                self._drop_all()
                self._since = now
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
        if not self._locked:
            return self._read_some(tid, addr, size)
        with self._lock:
            return self._read_some(tid, addr, size)

    def _read_some(self, tid: int, addr: int, size: int) -> bytes:
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

    @staticmethod
    def write(tid: int, addr: int, data: bytes) -> None:
        write_mem(tid, addr, data)

    def read(self, tid: int, addr: int, size: int) -> bytes:
        """Exactly `size` bytes; OSError(EFAULT) when the range is not all mapped."""
        data = self.read_some(tid, addr, size)
        if len(data) != size:
            raise OSError(errno.EFAULT, "short read of tracee memory")
        return data


class _Writer:
    """process_vm_writev with its arguments built once per thread: building them for
    each write cost 4.2 us of ctypes, more than the rest of a stat answer. Two pieces at
    most, in one call (a sockaddr and its length: every trapped accept and name call
    writes both, and a syscall costs 5-7 us on a VM)."""

    SIZE = 1024

    def __init__(self) -> None:
        self.buf = ctypes.create_string_buffer(self.SIZE)
        self.base = ctypes.addressof(self.buf)
        self.local, self.remote = local, remote = (_IoVec * 2)(), (_IoVec * 2)()
        self.local_p = ctypes.cast(local, ctypes.POINTER(_IoVec))
        self.remote_p = ctypes.cast(remote, ctypes.POINTER(_IoVec))
        # The elements share the arrays' memory: set through them, no indexing per write.
        self.local0, self.local1 = local[0], local[1]
        self.remote0, self.remote1 = remote[0], remote[1]
        self.local0.iov_base = self.base


_writers = threading.local()


def _new_writer() -> _Writer:
    w = _writers.w = _Writer()
    return w


def _written(n: int, size: int) -> None:
    if n < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    if n != size:
        raise OSError(errno.EFAULT, "short write of tracee memory")


def write_mem(tid: int, addr: int, data: bytes) -> None:
    """Write tracee memory (even read-only pages are not writable this way: EFAULT)."""
    size = len(data)
    if size <= _Writer.SIZE:
        w: _Writer = getattr(_writers, "w", None) or _new_writer()
        ctypes.memmove(w.buf, data, size)
        w.local0.iov_len = w.remote0.iov_len = size
        w.remote0.iov_base = addr
        n = _libc.process_vm_writev(tid, w.local_p, 1, w.remote_p, 1, 0)
    else:
        buf = ctypes.create_string_buffer(data, size)
        local = _IoVec(ctypes.cast(buf, ctypes.c_void_p), size)
        remote = _IoVec(addr, size)
        n = _libc.process_vm_writev(tid, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0)
    _written(n, size)


def write_mem_pair(tid: int, addr1: int, data1: bytes, addr2: int, data2: bytes) -> None:
    """write_mem of both, in this order, in one call (EFAULT if either is not writable;
    the first may then be written)."""
    size1, size2 = len(data1), len(data2)
    if size1 + size2 > _Writer.SIZE:
        write_mem(tid, addr1, data1)
        write_mem(tid, addr2, data2)
        return
    w: _Writer = getattr(_writers, "w", None) or _new_writer()
    ctypes.memmove(w.buf, data1, size1)
    ctypes.memmove(w.base + size1, data2, size2)
    w.local0.iov_len = w.remote0.iov_len = size1
    w.local1.iov_base = w.base + size1
    w.local1.iov_len = w.remote1.iov_len = size2
    w.remote0.iov_base = addr1
    w.remote1.iov_base = addr2
    _written(_libc.process_vm_writev(tid, w.local_p, 2, w.remote_p, 2, 0), size1 + size2)


class ThreadMemory:
    """One thread's memory (actions.Memory)."""

    __slots__ = ("files", "tid")

    def __init__(self, tid: int, files: MemFiles) -> None:
        self.tid = tid
        self.files = files

    def read(self, addr: int, size: int) -> bytes:
        return self.files.read(self.tid, addr, size)

    def write(self, addr: int, data: bytes) -> None:
        write_mem(self.tid, addr, data)

    def write_pair(self, addr1: int, data1: bytes, addr2: int, data2: bytes) -> None:
        write_mem_pair(self.tid, addr1, data1, addr2, data2)

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
    """MemFiles with `of(tid)`: the Memory a handler gets."""

    def of(self, tid: int) -> ThreadMemory:
        return ThreadMemory(tid, self)


MAX_AGE_S = 1.0  # notify engine: see the module docstring
