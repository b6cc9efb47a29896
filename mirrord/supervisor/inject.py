"""chdir into a remote directory, for the notify engine: a short ptrace injection.

No syscall sets another process's working directory, and a notified chdir cannot be
pointed at another path (registers cannot be changed). So, while the thread waits in
the kernel for our answer to its chdir(REMOTE):
1. PTRACE_SEIZE the thread (this thread only, for a few hundred microseconds),
   PTRACE_INTERRUPT it (its wait is killable, so this only marks it), then answer the
   notification with -ERESTARTSYS: the thread stops on its way back to user mode
   (PTRACE_EVENT_STOP), before the restart is applied.
2. Check it is really there (orig_rax = chdir, rax = -ERESTARTSYS), write the copy's
   path below its red zone and point rdi at it.
3. Resume with PTRACE_SYSCALL: the kernel restarts chdir with our path (our own handler
   lets a path in the cache through); at its exit stop, rdi is put back and the thread
   detached. The program's chdir returns the result of ours.
Signals that arrive meanwhile are held (signal-delivery-stops) and sent again after the
detach. If the thread already has a tracer (a debugger: EPERM), nothing is done and the
caller decides. The real cwd is then the copy, so every relative path of every syscall,
and every child, behaves natively.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass

from mirrord.supervisor import ptrace_ops as pt
from mirrord.supervisor.memory import write_mem
from mirrord.supervisor.status import ExitStatus
from mirrord.supervisor.syscalls import NR

log = logging.getLogger("mirrord.supervisor")

ERESTARTSYS = 512
WALL = 0x40000000
SYSCALL_TRAP = signal.SIGTRAP | 0x80
RED_ZONE = 128
DEADLINE_S = 5.0
SYS_TGKILL = 234

_libc = ctypes.CDLL(None, use_errno=True)


@dataclass(frozen=True)
class Outcome:
    ret: int | None = None  # chdir's result, as the program got it; None: not injected
    traced: bool = False  # another tracer holds the thread
    main_status: ExitStatus | None = None  # the thread died meanwhile (reaped here)


def _signed(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def _gone(status: int) -> ExitStatus | None:
    if os.WIFEXITED(status):
        return ExitStatus(code=os.WEXITSTATUS(status))
    if os.WIFSIGNALED(status):
        return ExitStatus(signal=os.WTERMSIG(status))
    return None


class _Gone(Exception):
    def __init__(self, status: ExitStatus | None) -> None:
        self.status = status


def _wait(tid: int) -> int:
    """The next stop of `tid` (the engine's serving thread answers our own restarted
    chdir's notification meanwhile). Raises _Gone when it exits."""
    deadline = time.monotonic() + DEADLINE_S
    delay = 20e-6
    while True:
        try:
            got, status = os.waitpid(tid, os.WNOHANG | WALL)
        except ChildProcessError:
            raise _Gone(None) from None
        if got:
            if os.WIFSTOPPED(status):
                return status
            raise _Gone(_gone(status))
        if time.monotonic() > deadline:
            raise TimeoutError(f"thread {tid} did not stop")
        time.sleep(delay)
        delay = min(delay * 2, 1e-3)


def chdir(tid: int, path: bytes, end_wait: Callable[[], bool]) -> Outcome:
    """Make thread `tid`, waiting on our notification for its chdir, chdir to `path`.
    `end_wait()` answers that notification with -ERESTARTSYS (False: it is gone)."""
    try:
        pt.seize(tid, pt.PTRACE_O_TRACESYSGOOD)
    except pt.PtraceError as exc:
        if getattr(exc, "errno", None) == errno.EPERM:
            return Outcome(traced=True)
        return Outcome()  # gone
    held: list[int] = []
    detached = False
    try:
        pt.interrupt(tid)
        end_wait()  # if it is gone (a fatal signal), the thread still stops or exits
        status = _wait(tid)
        while os.WSTOPSIG(status) != signal.SIGTRAP or status >> 16 != pt.PTRACE_EVENT_STOP:
            # A signal reached it first: hold it, then it stops for the interrupt.
            if status >> 16 == 0 and os.WSTOPSIG(status) != SYSCALL_TRAP:
                held.append(os.WSTOPSIG(status))
            pt.cont(tid, 0)
            status = _wait(tid)
        regs = pt.getregs(tid)
        if regs.orig_rax != NR["chdir"] or _signed(regs.rax) != -ERESTARTSYS:
            return Outcome()  # it moved on (a signal ended the call first): not ours
        original = regs.rdi
        blob = path + b"\0"
        scratch = (regs.rsp - RED_ZONE - len(blob)) & ~0xF
        write_mem(tid, scratch, blob)
        regs.rdi = scratch
        pt.setregs(tid, regs)
        entered = False
        while True:
            pt.syscall(tid, 0)
            status = _wait(tid)
            sig, event = os.WSTOPSIG(status), status >> 16
            if sig == SYSCALL_TRAP:
                if entered:
                    break
                entered = True
            elif event == 0:
                held.append(sig)  # signal-delivery-stop: deliver it after the detach
        regs = pt.getregs(tid)
        ret = _signed(regs.rax)
        regs.rdi = original
        pt.setregs(tid, regs)
        pt.detach(tid, held.pop(0) if held else 0)
        detached = True
        return Outcome(ret=ret)
    except _Gone as gone:
        detached = True
        return Outcome(main_status=gone.status)
    except (pt.PtraceError, OSError, TimeoutError) as exc:
        log.warning("chdir injection into thread %d failed: %s", tid, exc)
        return Outcome()
    finally:
        if not detached:
            with contextlib.suppress(pt.PtraceError, OSError):
                pt.detach(tid, held.pop(0) if held else 0)
        for sig in held:
            with contextlib.suppress(OSError, StopIteration):
                _tgkill(tid, sig)


def _tgkill(tid: int, sig: int) -> None:
    """Send `sig` to this thread again (after the detach)."""
    with open(f"/proc/{tid}/status", "rb") as f:
        tgid = next(int(line.split()[1]) for line in f if line.startswith(b"Tgid:"))
    if _libc.syscall(SYS_TGKILL, tgid, tid, sig) != 0:
        raise OSError(ctypes.get_errno(), "tgkill")
