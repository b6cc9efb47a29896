"""Runs a program under a test-only Feature that exercises the engines' machinery:
faked results, deferred answers, OpenFile, InstallFd, Chdir, interruptible waits and
restarted calls, plain continue.

PROBE_ENGINE=ptrace runs the same rules as ptrace stops; the handlers then rewrite
instead of handing over an fd (the parts only the notify engine has are skipped by the
tracee, which reads PROBE_ENGINE too).
Run as a script (its own process, so SIGCHLD is blocked before any thread exists):
    python probe_notify.py TARGET_FILE TARGET_DIR -- CMD...
"""

from __future__ import annotations

import asyncio
import os
import sys

from mirrord.supervisor import SupervisedRun, SupervisorOptions
from mirrord.supervisor import engine as engines
from mirrord.supervisor.actions import (
    Action,
    Allow,
    Chdir,
    Defer,
    Fake,
    InstallFd,
    Memory,
    OpenFile,
    Syscall,
)
from mirrord.supervisor.policy import Feature, trapped
from mirrord.supervisor.wakeup import block_sigchld

GETPID, GETPPID, OPENAT, GETPGID, GETSID, CHDIR = 39, 110, 257, 121, 124, 80
MAGIC = b"/magic/path"
MAGIC_DIR = b"/magic-dir"
seen_notified: set[bool] = set()
starts = {"getpgid": 0}


def getpid(sc: Syscall, mem: Memory) -> Defer:
    seen_notified.add(sc.notified)

    async def work() -> int:
        await asyncio.sleep(0.3)  # an "agent round trip"
        return 4242

    return Defer(work, lambda result, _mem: Fake(result))


def getppid(sc: Syscall, mem: Memory) -> Fake:
    return Fake(777)


def getpgid(sc: Syscall, mem: Memory) -> Action:
    """A call that natively blocks (think accept): its work takes 1 s, and it is made
    once however often the program's call restarts."""
    if sc.args[0] != 4242:
        return Allow()
    starts["getpgid"] += 1

    async def work() -> int:
        await asyncio.sleep(1.0)
        return 1000 + starts["getpgid"]

    return Defer(work, lambda result, _mem: Fake(result), interruptible=True)


def make_getsid(pipe_r: int) -> object:
    def getsid(sc: Syscall, mem: Memory) -> Action:
        """An fd of ours becomes the call's result (think accept)."""
        if sc.args[0] != 4242 or not sc.notified:
            return Allow()
        return InstallFd(os.dup(pipe_r), cloexec=False)

    return getsid


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


def make_chdir(target_dir: str) -> object:
    def chdir(sc: Syscall, mem: Memory) -> Action:
        try:
            path = mem.read_cstring(sc.args[0])
        except OSError:
            return Allow()
        if path != MAGIC_DIR or not sc.notified:
            return Allow()

        async def work() -> str:
            await asyncio.sleep(0.01)
            return target_dir

        return Defer(work, lambda result, _mem: Chdir(result))

    return chdir


def main() -> int:
    block_sigchld()
    target, target_dir = sys.argv[1], sys.argv[2]
    argv = sys.argv[sys.argv.index("--") + 1 :]
    pipe_r, pipe_w = os.pipe()
    os.write(pipe_w, b"from our pipe\n")
    os.close(pipe_w)
    feature = Feature(
        "probe",
        {
            nr: trapped(nr, handler)  # type: ignore[arg-type]
            for nr, handler in (
                (GETPID, getpid),
                (GETPPID, getppid),
                (OPENAT, make_openat(target)),
                (GETPGID, getpgid),
                (GETSID, make_getsid(pipe_r)),
                (CHDIR, make_chdir(target_dir)),
            )
        },
    )
    choice = engines.choose({engines.ENV: os.environ.get("PROBE_ENGINE", "auto")})

    async def go() -> int:
        run = SupervisedRun(
            argv, dict(os.environ), SupervisorOptions(features=(feature,), engine=choice)
        )
        status = await run.wait()
        print(
            f"probe stops={run.stats.stops} notifications={run.stats.notifications} "
            f"notified={sorted(seen_notified)} getpgid_starts={starts['getpgid']}",
            file=sys.stderr,
        )
        return status.code if status.code is not None else 128 + (status.signal or 0)

    return asyncio.run(go())


if __name__ == "__main__":
    sys.exit(main())
