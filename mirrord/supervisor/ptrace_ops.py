"""The ptrace requests the tracer loop uses, on python-ptrace's binding layer.

Only the binding layer (raw requests, register structs) is used: python-ptrace's debugger
layer polls with back-off sleeps and pokes memory word by word, which is far too slow for a
hot path (see DESIGN.md, "Traps we already know").
"""

from __future__ import annotations

import ctypes
import errno
import os
import threading
from typing import Any

from ptrace.binding import func as _pt
from ptrace.binding.func import PtraceError

__all__ = ["PtraceError"]

PTRACE_SEIZE = 0x4206
PTRACE_INTERRUPT = 0x4207
PTRACE_LISTEN = 0x4208

PTRACE_O_TRACESYSGOOD = 0x1
PTRACE_O_TRACEFORK = 0x2
PTRACE_O_TRACEVFORK = 0x4
PTRACE_O_TRACECLONE = 0x8
PTRACE_O_TRACEEXEC = 0x10
PTRACE_O_TRACESECCOMP = 0x80
PTRACE_O_EXITKILL = 0x100000

PTRACE_EVENT_FORK = 1
PTRACE_EVENT_VFORK = 2
PTRACE_EVENT_CLONE = 3
PTRACE_EVENT_EXEC = 4
PTRACE_EVENT_VFORK_DONE = 5
PTRACE_EVENT_EXIT = 6
PTRACE_EVENT_SECCOMP = 7
PTRACE_EVENT_STOP = 128

TRACE_OPTIONS = (
    PTRACE_O_TRACESYSGOOD
    | PTRACE_O_TRACEFORK
    | PTRACE_O_TRACEVFORK
    | PTRACE_O_TRACECLONE
    | PTRACE_O_TRACEEXEC
    | PTRACE_O_TRACESECCOMP
    | PTRACE_O_EXITKILL
)

Regs = Any  # python-ptrace's user_regs_struct (ctypes); fields rax, orig_rax, rdi, ...


def seize(pid: int, options: int = TRACE_OPTIONS) -> None:
    _pt.ptrace(PTRACE_SEIZE, pid, 0, options)


def listen(tid: int) -> None:
    _pt.ptrace(PTRACE_LISTEN, tid, 0, 0)


def cont(tid: int, sig: int = 0) -> None:
    _pt.ptrace_cont(tid, sig)


def syscall(tid: int, sig: int = 0) -> None:
    """Resume, stopping again at the next syscall exit (or entry)."""
    _pt.ptrace_syscall(tid, sig)


def getregs(tid: int) -> Regs:
    return _pt.ptrace_getregs(tid)


def setregs(tid: int, regs: Regs) -> None:
    _pt.ptrace_setregs(tid, regs)


def geteventmsg(tid: int) -> int:
    msg = ctypes.c_ulong()
    _pt.ptrace(_pt.PTRACE_GETEVENTMSG, tid, 0, ctypes.addressof(msg))
    return int(msg.value)


# --- tracee memory: reads via /proc/TID/mem (MemFiles), writes via process_vm_writev --


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
