"""Runs a program under a test-only policy that exercises the tracer's machinery:
deferred answers, exit hooks, scratch buffers below SP, restarted syscalls.

Run as a script (its own process, so SIGCHLD is blocked before any thread exists):
    python probe_policy.py -- CMD...
"""

from __future__ import annotations

import asyncio
import os
import struct
import sys

from mirrord.supervisor.actions import Allow, Defer, Fake, Memory, Syscall
from mirrord.supervisor.policy import Policy, utsname_bytes
from mirrord.supervisor.ptrace_engine import Tracer
from mirrord.supervisor.seccomp import Rule
from mirrord.supervisor.wakeup import block_sigchld

GETPID, GETPPID, UNAME, READ = 39, 110, 63, 0
READ_MARK = 1 << 20  # only reads of exactly this many bytes are rewritten


def getpid(sc: Syscall, mem: Memory) -> Defer:
    async def work() -> int:
        await asyncio.sleep(0.3)  # an "agent round trip"
        return 4242

    return Defer(work, lambda result, _mem: Fake(result))


def getppid(sc: Syscall, mem: Memory) -> Allow:
    return Allow(on_exit=lambda ret, _mem: 777)


def uname(sc: Syscall, mem: Memory) -> Allow:
    # Let the kernel fill a scratch copy, then copy it to the program's buffer with the
    # nodename changed; rdi is restored at the exit stop.
    size = 6 * 65
    scratch = sc.scratch(size)
    user_buf = sc.args[0]

    def on_exit(ret: int, m: Memory) -> int | None:
        raw = m.read(scratch, size)
        fields = tuple(raw[i * 65 : (i + 1) * 65].split(b"\0")[0].decode() for i in range(6))
        m.write(user_buf, utsname_bytes(fields, "scratch-ok"))  # type: ignore[arg-type]
        return None

    return Allow(set_args={0: scratch}, on_exit=on_exit)


def read(sc: Syscall, mem: Memory) -> Allow:
    if sc.args[2] != READ_MARK:
        return Allow()
    scratch = sc.scratch(64)
    user_buf = sc.args[1]

    def on_exit(ret: int, m: Memory) -> int | None:
        if ret > 0:
            m.write(user_buf, m.read(scratch, ret).upper())
        return None

    # Read at most 64 bytes into the scratch buffer.
    return Allow(set_args={1: scratch, 2: 64}, on_exit=on_exit)


def main() -> int:
    block_sigchld()
    argv = sys.argv[sys.argv.index("--") + 1 :]
    policy = Policy(
        rules=[Rule(GETPID), Rule(GETPPID), Rule(UNAME), Rule(READ)],
        handlers={GETPID: getpid, GETPPID: getppid, UNAME: uname, READ: read},
    )

    async def go() -> int:
        tracer = Tracer(
            policy,
            loop=asyncio.get_running_loop(),
            use_seccomp=os.environ.get("PROBE_NO_SECCOMP") != "1",
        )
        status = await asyncio.get_running_loop().run_in_executor(
            None, tracer.run, argv, dict(os.environ)
        )
        return status.code if status.code is not None else 128 + (status.signal or 0)

    return asyncio.run(go())


if __name__ == "__main__":
    _ = struct  # (kept for symmetry with handlers that pack structs)
    sys.exit(main())
