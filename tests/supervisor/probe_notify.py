"""Runs a program under a test-only policy whose rules are seccomp user notifications
(Kind.NOTIFY): faked results, deferred answers, OpenFile, plain continue.

With PROBE_NO_NOTIFY=1 the same rules are ptrace stops (the fallback for kernels without
a listener); the handlers then rewrite instead of handing over an fd.
Run as a script (its own process, so SIGCHLD is blocked before any thread exists):
    python probe_notify.py MAGIC_TARGET -- CMD...
"""

from __future__ import annotations

import asyncio
import os
import sys

from mirrord.supervisor.actions import Action, Allow, Defer, Fake, Memory, OpenFile, Syscall
from mirrord.supervisor.handlers import Policy
from mirrord.supervisor.seccomp import Kind, Rule
from mirrord.supervisor.tracer import Tracer
from mirrord.supervisor.wakeup import block_sigchld

GETPID, GETPPID, OPENAT = 39, 110, 257
MAGIC = b"/magic/path"
seen_notified: set[bool] = set()


def getpid(sc: Syscall, mem: Memory) -> Defer:
    seen_notified.add(sc.notified)

    async def work() -> int:
        await asyncio.sleep(0.3)  # an "agent round trip"
        return 4242

    return Defer(work, lambda result, _mem: Fake(result))


def getppid(sc: Syscall, mem: Memory) -> Fake:
    return Fake(777)


def make_openat(target: str) -> object:
    def openat(sc: Syscall, mem: Memory) -> Action:
        try:
            path = mem.read_cstring(sc.args[1])
        except OSError:
            return Allow()
        if path != MAGIC:
            return Allow()
        if sc.notified:
            return OpenFile(target, sc.args[2])
        blob = os.fsencode(target) + b"\0"
        scratch = sc.scratch(len(blob))
        mem.write(scratch, blob)
        return Allow(set_args={1: scratch})

    return openat


def main() -> int:
    block_sigchld()
    target = sys.argv[1]
    argv = sys.argv[sys.argv.index("--") + 1 :]
    policy = Policy(
        rules=[Rule(GETPID, Kind.NOTIFY), Rule(GETPPID, Kind.NOTIFY), Rule(OPENAT, Kind.NOTIFY)],
        handlers={GETPID: getpid, GETPPID: getppid, OPENAT: make_openat(target)},  # type: ignore[dict-item]
    )

    async def go() -> int:
        tracer = Tracer(
            policy,
            loop=asyncio.get_running_loop(),
            use_notify=os.environ.get("PROBE_NO_NOTIFY") != "1",
        )
        status = await asyncio.get_running_loop().run_in_executor(
            None, tracer.run, argv, dict(os.environ)
        )
        print(
            f"probe stops={tracer.stats.stops} notifications={tracer.stats.notifications} "
            f"notified={sorted(seen_notified)}",
            file=sys.stderr,
        )
        return status.code if status.code is not None else 128 + (status.signal or 0)

    return asyncio.run(go())


if __name__ == "__main__":
    sys.exit(main())
