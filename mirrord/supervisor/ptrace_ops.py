"""The ptrace requests the tracer loop uses, on python-ptrace's binding layer.

Only the binding layer (raw requests, register structs) is used: python-ptrace's debugger
layer polls with back-off sleeps and pokes memory word by word, which is far too slow for a
hot path (see DESIGN.md, "Traps we already know").
"""

from __future__ import annotations

import ctypes
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


def interrupt(tid: int) -> None:
    _pt.ptrace(PTRACE_INTERRUPT, tid, 0, 0)


def detach(tid: int, sig: int = 0) -> None:
    _pt.ptrace(_pt.PTRACE_DETACH, tid, 0, sig)


def geteventmsg(tid: int) -> int:
    msg = ctypes.c_ulong()
    _pt.ptrace(_pt.PTRACE_GETEVENTMSG, tid, 0, ctypes.addressof(msg))
    return int(msg.value)
