"""Syscall handlers: pure decisions about one stopped syscall.

A handler gets the syscall (number and argument registers) and a way to touch the
tracee's memory, and returns what the tracer should do. No ptrace here: the tracer loop
(tracer.py) applies the action, so handlers are tested without a tracee.
"""

from __future__ import annotations

import errno
import os
import struct
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from mirrord.supervisor.actions import Action, Allow, Fake, FastCheck, Handler, Memory, Syscall
from mirrord.supervisor.seccomp import Engine, Kind, Rule
from mirrord.supervisor.syscalls import CLONE_UNTRACED, NR

UTS_FIELD = 65  # each of the six utsname fields is a NUL-padded 65-byte array
UTS_NODENAME = 1


def utsname_bytes(fields: tuple[str, str, str, str, str, str], nodename: str) -> bytes:
    """`struct utsname` as the kernel would fill it, with nodename replaced."""
    out = bytearray()
    for i, value in enumerate(fields):
        raw = (nodename if i == UTS_NODENAME else value).encode("utf-8", "surrogateescape")
        raw = raw[: UTS_FIELD - 1]  # the kernel always leaves room for the NUL
        out += raw.ljust(UTS_FIELD, b"\0")
    return bytes(out)


def _local_utsname() -> tuple[str, str, str, str, str, str]:
    u = os.uname()
    # os.uname has no domainname; the kernel's is in /proc (usually "(none)").
    try:
        with open("/proc/sys/kernel/domainname") as f:
            domain = f.read().strip()
    except OSError:
        domain = "(none)"
    return (u.sysname, u.nodename, u.release, u.version, u.machine, domain)


def make_uname_handler(hostname: str) -> Handler:
    """uname(2) answered by us: the local kernel's fields with the target's nodename."""
    return UtsView(hostname).uname


CAP_SYS_ADMIN = 21
UTS_LEN = 64  # __NEW_UTS_LEN


def _has_cap_sys_admin(tid: int) -> bool:
    try:
        with open(f"/proc/{tid}/status") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> CAP_SYS_ADMIN & 1)
    except OSError:
        pass
    return False


class UtsView:
    """The run's own UTS view: uname shows the target's hostname (or the local one), and
    sethostname/setdomainname change this view only, never the machine's (CPython's
    test_socket "restores" the hostname it read, the pod's, with sethostname). As in a
    pod's UTS namespace, setting needs CAP_SYS_ADMIN (else EPERM) and at most 64 bytes."""

    def __init__(self, hostname: str | None) -> None:
        fields = _local_utsname()
        self._fields = fields
        self._nodename = hostname if hostname is not None else fields[UTS_NODENAME]
        self._domain = fields[5]
        self._payload = self._pack()

    def _pack(self) -> bytes:
        f = self._fields
        return utsname_bytes((f[0], f[1], f[2], f[3], f[4], self._domain), self._nodename)

    def uname(self, sc: Syscall, mem: Memory) -> Action:
        try:
            mem.write(sc.args[0], self._payload)
        except OSError:
            return Fake(-errno.EFAULT)
        return Fake(0)

    def _name(self, sc: Syscall, mem: Memory) -> str | Fake:
        size = sc.args[1]
        if size > UTS_LEN:
            return Fake(-errno.EINVAL)
        if not _has_cap_sys_admin(sc.tid):
            return Fake(-errno.EPERM)
        try:
            raw = mem.read(sc.args[0], size) if size else b""
        except OSError:
            return Fake(-errno.EFAULT)
        return raw.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")

    def sethostname(self, sc: Syscall, mem: Memory) -> Action:
        name = self._name(sc, mem)
        if isinstance(name, Fake):
            return name
        self._nodename = name
        self._payload = self._pack()
        return Fake(0)

    def setdomainname(self, sc: Syscall, mem: Memory) -> Action:
        name = self._name(sc, mem)
        if isinstance(name, Fake):
            return name
        self._domain = name
        self._payload = self._pack()
        return Fake(0)


def clone_handler(sc: Syscall, mem: Memory) -> Action:
    """clone(2) with CLONE_UNTRACED would escape tracing (ptrace engine): strip the flag.

    The seccomp filter only stops clone when that bit is set.
    """
    return Allow(set_args={0: sc.args[0] & ~CLONE_UNTRACED})


def clone3_handler(sc: Syscall, mem: Memory) -> Action:
    """clone3(2) keeps its flags in memory (struct clone_args, flags first).

    The flag is cleared in place: the struct is the caller's own argument and no libc
    reads it back, and CLONE_UNTRACED is all but unused outside the kernel. The kernel
    reads the struct after our answer, so this can be a plain Allow at the stop.
    """
    try:
        (flags,) = struct.unpack("<Q", mem.read(sc.args[0], 8))
    except OSError:
        return Allow()  # the kernel will answer EFAULT itself
    if flags & CLONE_UNTRACED:
        mem.write(sc.args[0], struct.pack("<Q", flags & ~CLONE_UNTRACED))
    return Allow()


@dataclass
class Policy:
    """What is trapped and who handles it, for one engine; built from the features."""

    rules: list[Rule]
    handlers: dict[int, Handler]
    engine: Engine = Engine.NOTIFY
    fast: dict[int, FastCheck] = field(default_factory=dict)

    def trapped(self) -> dict[int, Rule]:
        return {r.nr: r for r in self.rules}


@dataclass(frozen=True)
class Trap:
    """One syscall of a feature: who answers it, and how the filter traps it."""

    handler: Handler | None  # None: trapped only (the engine answers it itself)
    rules: tuple[Rule, ...]  # its filter rules (an argument test; one per engine at most)
    fast: FastCheck | None = None  # notify engine: answered before the handler when True


def trapped(nr: int, handler: Handler | None, *rules: Rule, fast: FastCheck | None = None) -> Trap:
    """A syscall table entry; without rules, every call of `nr` is trapped."""
    return Trap(handler, rules or (Rule(nr),), fast)


# {syscall number: Trap}: every feature's share of the policy has this one shape.
SyscallTable = dict[int, Trap]


@dataclass
class Feature:
    """A feature's share of the policy (files, network…): its syscall table.

    Two features may not claim the same syscall; one that needs a syscall another also
    needs must be written as one handler that dispatches (build_policy refuses overlap).
    """

    name: str
    table: SyscallTable
    # Run once when the program's run is over, while the agent session is still open
    # (e.g. write back files, remove a cache directory). Must not raise.
    close: Callable[[], Awaitable[None]] | None = None


def build_policy(
    *, hostname: str | None, features: Sequence[Feature] = (), engine: Engine = Engine.NOTIFY
) -> Policy:
    # The run's UTS view: uname shows the target's hostname when the feature is on, and
    # sethostname/setdomainname never reach the machine's (always trapped, with uname so
    # that the program sees what it set).
    uts = UtsView(hostname)
    core: SyscallTable = {
        # io_uring does I/O without syscalls we could see: make programs fall back.
        NR["io_uring_setup"]: trapped(
            NR["io_uring_setup"], None, Rule(NR["io_uring_setup"], Kind.ERRNO, errno=errno.ENOSYS)
        ),
        NR["uname"]: trapped(NR["uname"], uts.uname),
        NR["sethostname"]: trapped(NR["sethostname"], uts.sethostname),
        NR["setdomainname"]: trapped(NR["setdomainname"], uts.setdomainname),
    }
    if engine is Engine.PTRACE:
        # Children must stay traced. (The notify engine's filter is inherited by every
        # child whatever the flags.)
        core[NR["clone"]] = trapped(
            NR["clone"], clone_handler, Rule(NR["clone"], arg0_mask=CLONE_UNTRACED)
        )
        core[NR["clone3"]] = trapped(NR["clone3"], clone3_handler)
    else:
        # The notify engine sees exec coming (its cached memory fds: memory.py); it
        # answers these itself, no handler.
        core[NR["execve"]] = trapped(NR["execve"], None)
        core[NR["execveat"]] = trapped(NR["execveat"], None)
    rules: list[Rule] = []
    handlers: dict[int, Handler] = {}
    fast: dict[int, FastCheck] = {}
    owner: dict[int, str] = {}
    for name, table in (("core", core), *((f.name, f.table) for f in features)):
        for nr, trap in table.items():
            applies = [r for r in trap.rules if r.engine is None or r.engine is engine]
            if not applies:
                continue
            if nr in owner:
                raise ValueError(f"syscall {nr} is claimed by both {owner[nr]} and {name}")
            owner[nr] = name
            rules += applies
            if trap.handler is not None:
                handlers[nr] = trap.handler
            if trap.fast is not None:
                fast[nr] = trap.fast
    return Policy(rules=rules, handlers=handlers, engine=engine, fast=fast)
