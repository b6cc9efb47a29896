"""The ptrace requests the tracer loop uses, on python-ptrace's binding layer.

Only the binding layer (raw requests, register structs) is used: python-ptrace's debugger
layer polls with back-off sleeps and pokes memory word by word, which is far too slow for a
hot path (see DESIGN.md, "Traps we already know").
"""

from __future__ import annotations

import ctypes
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


# --- tracee memory: process_vm_readv/writev, one syscall per access -------------------


class _IoVec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


_libc = ctypes.CDLL(None, use_errno=True)
_libc.process_vm_readv.restype = ctypes.c_ssize_t
_libc.process_vm_writev.restype = ctypes.c_ssize_t
_vm_args: list[Any] = [
    ctypes.c_int,
    ctypes.POINTER(_IoVec),
    ctypes.c_ulong,
    ctypes.POINTER(_IoVec),
    ctypes.c_ulong,
    ctypes.c_ulong,
]
_libc.process_vm_readv.argtypes = _vm_args
_libc.process_vm_writev.argtypes = _vm_args


# One reusable buffer and iovec pair for the common small read (a path, a struct): the
# hot path of every trapped syscall; building ctypes objects per call cost as much as
# the syscall. A lock, as handlers may (rarely) read from another thread.
_SMALL = 4096
_sbuf = ctypes.create_string_buffer(_SMALL)
_slocal = _IoVec(ctypes.addressof(_sbuf), 0)
_sremote = _IoVec(0, 0)
_slocal_ref = ctypes.byref(_slocal)
_sremote_ref = ctypes.byref(_sremote)
_slock = threading.Lock()


def read_mem(tid: int, addr: int, size: int) -> bytes:
    """Read tracee memory; OSError(EFAULT) when the range is not mapped."""
    if 0 < size <= _SMALL:
        with _slock:
            _slocal.iov_len = _sremote.iov_len = size
            _sremote.iov_base = addr
            n = _libc.process_vm_readv(tid, _slocal_ref, 1, _sremote_ref, 1, 0)
            if n == size:
                return ctypes.string_at(_sbuf, size)
        if n < 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
        raise OSError(14, "short read of tracee memory")
    buf = ctypes.create_string_buffer(size)
    local = _IoVec(ctypes.cast(buf, ctypes.c_void_p), size)
    remote = _IoVec(addr, size)
    n = _libc.process_vm_readv(tid, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0)
    if n < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    if n != size:
        raise OSError(14, "short read of tracee memory")
    return buf.raw


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
