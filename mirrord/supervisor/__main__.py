"""`python -m mirrord.supervisor [--hostname H] [--no-seccomp] [--stats] -- CMD…`

The supervisor alone, with no agent: the program keeps this process's environment. Used
by tests and benchmarks to look at tracing by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

from mirrord.supervisor import (
    SignalForwarder,
    SpawnError,
    SupervisedRun,
    SupervisorOptions,
    exit_like,
)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mirrord.supervisor")
    p.add_argument("--hostname")
    p.add_argument("--no-seccomp", action="store_true")
    p.add_argument("--stats", action="store_true", help="print ptrace stop and notification counts")
    p.add_argument("command", nargs=argparse.REMAINDER)
    args = p.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        p.error("no command")
    opts = SupervisorOptions(hostname=args.hostname, use_seccomp=not args.no_seccomp)

    async def go() -> tuple[int | None, int | None]:
        run = SupervisedRun(command, os.environ, opts)
        fwd = SignalForwarder(run.live_targets, lambda _sig: None)
        fwd.start()
        try:
            status = await run.wait()
        finally:
            fwd.stop()
        if args.stats:
            st = run.tracer.stats
            print(
                f"mirrord-stats stops={st.stops} notifications={st.notifications}",
                file=sys.stderr,
            )
        return status.code, status.signal

    try:
        code, sig = asyncio.run(go())
    except SpawnError as exc:
        print(f"mirrord: {exc}", file=sys.stderr)
        return exc.exit_code
    sys.stdout.flush()
    return exit_like(code, sig)


if __name__ == "__main__":
    sys.exit(main())
