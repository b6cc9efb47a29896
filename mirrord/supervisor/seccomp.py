"""Builds the seccomp-bpf program that decides which syscalls stop for the supervisor.

Pure: it returns bytes (an array of `struct sock_filter`) and installing them is spawn.py's
job. Everything not listed runs at native speed with no ptrace stop.

Layout of the program:
  1. Anything not x86_64 (an `int 0x80` from a 64-bit program, a 32-bit binary) is trapped
     (ptrace: with data FOREIGN_ABI; notify: the notification names the arch): its numbers
     differ, so it is passed through, never misread as x86_64.
  2. x32 syscalls (nr with bit 30 set) fail with ENOSYS: x32 programs are not supported.
  3. Each rule: `if nr == N` then its action (trapped, or an errno). A rule may test
     bits of the low 32 bits of args[0] (clone's flags), or that an argument is not NULL
     (sendto's address), so that only the interesting case is trapped.
  4. Default: allow.
Each rule is "jeq N, 0, skip; ...; ret" with only short forward jumps, so the program
never needs a jump longer than the 8-bit offsets BPF allows.

A trapped syscall is a seccomp user notification for the notify engine and a ptrace stop
(SECCOMP_RET_TRACE) for the ptrace engine; the notify engine's filter has no RET_TRACE at
all: such a rule makes the syscall fail with ENOSYS as soon as the program's tracer is a
debugger that did not ask for seccomp events.
"""

from __future__ import annotations

import errno
import struct
from dataclasses import dataclass
from enum import Enum

from mirrord.supervisor.syscalls import AUDIT_ARCH_X86_64, X32_SYSCALL_BIT

# struct seccomp_data offsets.
OFF_NR = 0
OFF_ARCH = 4
OFF_ARG0_LO = 16
OFF_ARGS = 16  # args[i] at 16 + 8*i, little-endian: low word first

# BPF opcodes (linux/bpf_common.h).
BPF_LD_W_ABS = 0x20
BPF_JEQ_K = 0x15
BPF_JGE_K = 0x35
BPF_JSET_K = 0x45
BPF_RET_K = 0x06

SECCOMP_RET_KILL_PROCESS = 0x80000000
SECCOMP_RET_ERRNO = 0x00050000
SECCOMP_RET_TRACE = 0x7FF00000
SECCOMP_RET_USER_NOTIF = 0x7FC00000
SECCOMP_RET_ALLOW = 0x7FFF0000
SECCOMP_RET_DATA = 0x0000FFFF

# RET_TRACE data for syscalls of a foreign ABI; real syscall numbers stay below it.
FOREIGN_ABI = 0xFFFF


class Kind(Enum):
    # Handed to the supervisor: a user notification (notify engine) or a ptrace stop whose
    # RET_DATA carries the syscall number (ptrace engine).
    TRAP = "trap"
    ERRNO = "errno"  # fail at once with an errno, no stop


class Engine(Enum):
    """How trapped syscalls reach the supervisor (engine.py chooses)."""

    NOTIFY = "notify"  # seccomp user notifications; the program's ptrace slot stays free
    PTRACE = "ptrace"  # ptrace stops (old kernels, a listener already present)


@dataclass(frozen=True)
class Rule:
    nr: int
    kind: Kind = Kind.TRAP
    errno: int = 0
    # When set, only stop if (low 32 bits of args[0]) & arg0_mask != 0; else allow.
    arg0_mask: int = 0
    # When set, only stop if args[arg_nonzero] != 0 (a pointer given: sendto/recvfrom's
    # address); else allow. Both halves of the 64-bit argument are tested.
    arg_nonzero: int | None = None
    # Only for this engine (None: both); e.g. clone's CLONE_UNTRACED matters to ptrace only.
    engine: Engine | None = None


def _insn(code: int, jt: int, jf: int, k: int) -> bytes:
    return struct.pack("<HBBI", code, jt, jf, k & 0xFFFFFFFF)


def _ret_for(rule: Rule, notify: bool) -> int:
    if rule.kind is Kind.ERRNO:
        return SECCOMP_RET_ERRNO | (rule.errno & SECCOMP_RET_DATA)
    if notify:
        return SECCOMP_RET_USER_NOTIF
    return SECCOMP_RET_TRACE | (rule.nr & SECCOMP_RET_DATA)


def build_filter(rules: list[Rule], *, notify: bool = True) -> bytes:
    """Return the filter program for these rules (one rule per syscall number).

    notify=True: trapped syscalls (and foreign-ABI ones) are user notifications and the
    program has no RET_TRACE rule; notify=False: ptrace stops."""
    seen: set[int] = set()
    for r in rules:
        if r.nr in seen:
            raise ValueError(f"two seccomp rules for syscall {r.nr}")
        if not 0 <= r.nr < FOREIGN_ABI:
            raise ValueError(f"syscall number out of range: {r.nr}")
        seen.add(r.nr)
    foreign = SECCOMP_RET_USER_NOTIF if notify else SECCOMP_RET_TRACE | FOREIGN_ABI
    prog = [
        _insn(BPF_LD_W_ABS, 0, 0, OFF_ARCH),
        _insn(BPF_JEQ_K, 1, 0, AUDIT_ARCH_X86_64),
        _insn(BPF_RET_K, 0, 0, foreign),
        _insn(BPF_LD_W_ABS, 0, 0, OFF_NR),
        _insn(BPF_JGE_K, 0, 1, X32_SYSCALL_BIT),
        _insn(BPF_RET_K, 0, 0, SECCOMP_RET_ERRNO | errno.ENOSYS),
    ]
    for r in sorted(rules, key=lambda r: r.nr):
        if r.arg0_mask and r.arg_nonzero is not None:
            raise ValueError(f"syscall {r.nr}: one argument test per rule")
        if r.arg_nonzero is not None:
            if not 0 <= r.arg_nonzero < 6:
                raise ValueError(f"syscall {r.nr}: no argument {r.arg_nonzero}")
            lo = OFF_ARGS + 8 * r.arg_nonzero
            # jeq nr; ld lo; jeq 0 (else ret action); ld hi; jeq 0 -> ret allow; ret action.
            prog += [
                _insn(BPF_JEQ_K, 0, 6, r.nr),
                _insn(BPF_LD_W_ABS, 0, 0, lo),
                _insn(BPF_JEQ_K, 0, 2, 0),
                _insn(BPF_LD_W_ABS, 0, 0, lo + 4),
                _insn(BPF_JEQ_K, 1, 0, 0),
                _insn(BPF_RET_K, 0, 0, _ret_for(r, notify)),
                _insn(BPF_RET_K, 0, 0, SECCOMP_RET_ALLOW),
            ]
        elif r.arg0_mask:
            # jeq nr; ld arg0; jset mask -> ret action; else ret allow. The accumulator is
            # clobbered, so the not-equal path must skip the whole block.
            prog += [
                _insn(BPF_JEQ_K, 0, 4, r.nr),
                _insn(BPF_LD_W_ABS, 0, 0, OFF_ARG0_LO),
                _insn(BPF_JSET_K, 0, 1, r.arg0_mask),
                _insn(BPF_RET_K, 0, 0, _ret_for(r, notify)),
                _insn(BPF_RET_K, 0, 0, SECCOMP_RET_ALLOW),
            ]
        else:
            prog += [
                _insn(BPF_JEQ_K, 0, 1, r.nr),
                _insn(BPF_RET_K, 0, 0, _ret_for(r, notify)),
            ]
    prog.append(_insn(BPF_RET_K, 0, 0, SECCOMP_RET_ALLOW))
    if len(prog) > 4096:
        raise ValueError("seccomp program too long")
    return b"".join(prog)


def run_filter(
    prog: bytes, *, nr: int, arch: int = AUDIT_ARCH_X86_64, args: tuple[int, ...] = ()
) -> int:
    """Evaluate a filter the way the kernel would (for tests; the no-seccomp
    fallback applies the same rules from a dict instead)."""
    full_args = (*args, 0, 0, 0, 0, 0, 0)[:6]
    data = struct.pack("<iIQ6Q", nr, arch, 0, *full_args)
    insns = [struct.unpack_from("<HBBI", prog, i) for i in range(0, len(prog), 8)]
    acc = 0
    pc = 0
    while pc < len(insns):
        code, jt, jf, k = insns[pc]
        if code == BPF_LD_W_ABS:
            acc = struct.unpack_from("<I", data, k)[0]
        elif code == BPF_RET_K:
            return int(k)
        elif code in (BPF_JEQ_K, BPF_JGE_K, BPF_JSET_K):
            if code == BPF_JEQ_K:
                hit = acc == k
            elif code == BPF_JGE_K:
                hit = acc >= k
            else:
                hit = bool(acc & k)
            pc += jt if hit else jf
        else:
            raise ValueError(f"unknown BPF opcode {code:#x}")
        pc += 1
    raise ValueError("filter fell off its end")
