"""What a syscall handler sees and what it may answer.

A handler gets a `Syscall` (number, argument registers, stack pointer) and a `Memory`
of the stopped thread, and returns one of:
- `Allow(set_args, on_exit)`: run the syscall, with some argument registers changed. If
  anything changed or `on_exit` is given, the tracer also stops at the syscall's exit,
  puts the original argument registers back (the program must not see our pointers; and
  a syscall restarted after a signal is then rewritten afresh on re-entry) and lets
  `on_exit(ret, mem)` replace the result (return None to keep it).
- `Fake(ret)`: skip the syscall; the program sees `ret` (-errno for errors).
- `Defer(work, then)`: the thread stays stopped while `work()` runs on the asyncio loop
  (an agent round trip); then `then(result, mem)` runs on the tracer thread and returns
  the action to apply. `result` is the exception instance if `work` raised. Every other
  traced thread keeps running meanwhile.
Only for a `Syscall` that came as a user notification (`notified`: the notify engine,
where registers cannot be changed, so `Allow` may not set arguments or exit hooks):
- `OpenFile(path, flags, mode)`: the supervisor opens `path` and the program gets that
  open file as the syscall's result, in its lowest free fd.
- `InstallFd(fd, cloexec)`: our `fd` (an accepted connection) becomes the result the same way.
- `Chdir(path)`: the thread's working directory becomes `path` (a local directory).
A notified call can be interrupted by a signal before it is answered (the kernel then
drops it, and usually makes the call again: see inflight.py): `Fake.on_lost` and
`InstallFd.on_lost` give back what was taken for an answer that could not be delivered.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

RED_ZONE = 128  # the x86_64 ABI lets leaf code use 128 bytes below rsp without moving it


class Memory(Protocol):
    def read(self, addr: int, size: int) -> bytes: ...
    def write(self, addr: int, data: bytes) -> None: ...
    def write_pair(self, addr1: int, data1: bytes, addr2: int, data2: bytes) -> None:
        """Both writes, in this order (one syscall where the engine can)."""
        ...

    def read_cstring(self, addr: int, limit: int = 4096) -> bytes: ...


class Syscall(NamedTuple):
    """A trapped syscall (a NamedTuple: one is made per trapped call, cheaply)."""

    tid: int
    nr: int
    args: tuple[int, int, int, int, int, int]
    sp: int = 0
    # A seccomp user notification, not a ptrace stop: answer with Fake, OpenFile, Defer or
    # a plain Allow() (no scratch, no register changes, no exit hook).
    notified: bool = False

    def scratch(self, size: int) -> int:
        """An address for `size` bytes of scratch below this thread's red zone.

        Below the stopped thread's own stack pointer: no other thread uses it, and the
        program itself does not until this syscall returns. 16-byte aligned."""
        return (self.sp - RED_ZONE - size) & ~0xF


ExitHook = Callable[[int, Memory], int | None]


@dataclass(frozen=True)
class Allow:
    set_args: Mapping[int, int] = field(default_factory=dict)
    on_exit: ExitHook | None = None


@dataclass(frozen=True)
class Fake:
    ret: int
    on_lost: Callable[[], None] | None = field(default=None, compare=False)


@dataclass(frozen=True)
class Defer:
    work: Callable[[], Awaitable[Any]]
    then: Callable[[Any, Memory], Action]
    # Notify engine. interruptible: the call natively blocks in an interruptible wait
    # (accept, recv, connect): a signal for the thread ends it (-ERESTARTSYS: the kernel
    # restarts it or returns EINTR, as natively; sigwatch.py). cancel_if_gone: cancel
    # `work` when the call is ended so or its thread dies; for waits that take nothing
    # themselves (readiness). Other work (a pod connect) runs on, for the restart.
    interruptible: bool = False
    cancel_if_gone: bool = False
    # interruptible after this many seconds of work only: a connect gets time to finish,
    # as natively it finishes in the background after EINTR (we cannot leave the socket
    # "connecting": it would poll writable with no error, unconnected).
    grace: float = 0.0


@dataclass(frozen=True)
class OpenFile:
    path: str
    flags: int  # the program's open flags; O_CLOEXEC decides the new fd's close-on-exec
    mode: int = 0


@dataclass(frozen=True)
class InstallFd:
    fd: int  # ours: closed by the engine once installed, else handed to on_lost
    cloexec: bool
    on_lost: Callable[[int], None] | None = field(default=None, compare=False)


@dataclass(frozen=True)
class Chdir:
    path: str  # a local directory (a remote one's cached copy)


Action = Allow | Fake | Defer | OpenFile | InstallFd | Chdir
Handler = Callable[[Syscall, Memory], Action]


class RawReader(Protocol):
    def read_some(self, tid: int, addr: int, size: int) -> bytes: ...
    def write(self, tid: int, addr: int, data: bytes) -> None: ...


# Notify engine: a feature's check before its handler, on the serving thread with no
# Syscall and no Memory built: (tid, args, memory) -> True: the call runs as it is;
# False: on to the handler; any other int: the call's result, answered at once (>= 0, or
# -errno; what it returns in memory written already). Must agree with the handler, which
# still runs when it says False.
FastCheck = Callable[[int, tuple[int, int, int, int, int, int], RawReader], int]
