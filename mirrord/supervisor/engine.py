"""Which engine runs the program, and why: decided here and nowhere else.

- notify (the default): every trapped syscall is a seccomp user notification and the
  supervisor is not the program's tracer, so gdb, dlv, strace and IDEs can attach. Needs a
  listener (5.0), ADDFD (5.9) and WAIT_KILLABLE_RECV (5.19):
  Linux 5.19 or later.
- ptrace: the fallback, with the same handlers: an older kernel, a listener already in
  place (EBUSY, found only when the child tries: spawn.py), or MIRRORD_ENGINE=ptrace.
  MIRRORD_NO_SECCOMP=1 (or a kernel without seccomp) makes it stop at every syscall.

The choice is logged at debug level; a fallback the user did not ask for is printed once
as a warning.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass

from mirrord.supervisor.seccomp import Engine

log = logging.getLogger("mirrord.supervisor")

ENV = "MIRRORD_ENGINE"
NOTIFY_KERNEL = (5, 19)  # SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV
CHOICES = ("auto", "notify", "ptrace")


class EngineError(ValueError):
    """A bad MIRRORD_ENGINE value, or an engine this kernel cannot run; for the user."""


@dataclass(frozen=True)
class EngineChoice:
    engine: Engine
    reason: str
    seccomp: bool = True  # ptrace engine only: False stops at every syscall
    forced: bool = False  # asked for by the user: no fallback warning, no fallback


def kernel_version(release: str) -> tuple[int, int]:
    m = re.match(r"(\d+)\.(\d+)", release)
    return (int(m[1]), int(m[2])) if m else (0, 0)


def choose(
    environ: Mapping[str, str] | None = None,
    *,
    release: str | None = None,
    seccomp_available: bool = True,
) -> EngineChoice:
    env = os.environ if environ is None else environ
    wanted = env.get(ENV, "auto").strip().lower() or "auto"
    if wanted not in CHOICES:
        raise EngineError(f"{ENV}={env.get(ENV)!r}: expected one of {', '.join(CHOICES)}")
    if env.get("MIRRORD_NO_SECCOMP") == "1":
        return EngineChoice(Engine.PTRACE, "MIRRORD_NO_SECCOMP=1", seccomp=False, forced=True)
    if not seccomp_available:
        if wanted == "notify":
            raise EngineError("the notify engine needs seccomp filters, which this kernel lacks")
        return EngineChoice(Engine.PTRACE, "this kernel has no seccomp filters", seccomp=False)
    if wanted == "ptrace":
        return EngineChoice(Engine.PTRACE, f"{ENV}=ptrace", forced=True)
    version = kernel_version(release if release is not None else os.uname().release)
    if version < NOTIFY_KERNEL:
        why = (
            f"Linux {version[0]}.{version[1]} lacks seccomp notification features the notify "
            f"engine needs (WAIT_KILLABLE_RECV, Linux {NOTIFY_KERNEL[0]}.{NOTIFY_KERNEL[1]})"
        )
        if wanted == "notify":
            raise EngineError(why)
        return EngineChoice(Engine.PTRACE, why)
    if wanted == "notify":
        return EngineChoice(Engine.NOTIFY, f"{ENV}=notify", forced=True)
    return EngineChoice(Engine.NOTIFY, "the default")


_warned = False


def report(engine: Engine, reason: str, *, forced: bool) -> None:
    """Say which engine runs: at debug level always, as a warning (once per process) when
    the ptrace engine was not asked for, since it takes the program's ptrace slot."""
    global _warned
    log.debug("engine: %s (%s)", engine.value, reason)
    if engine is Engine.PTRACE and not forced and not _warned:
        _warned = True
        print(
            f"mirrord: warning: using the ptrace engine: {reason}; debuggers cannot attach "
            "to the program",
            file=sys.stderr,
        )
