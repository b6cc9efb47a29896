"""`python -m mirrord.supervisor [--hostname H] [--engine E] [--no-seccomp] [--stats] -- CMD…`

The supervisor alone, with no agent: the program keeps this process's environment. Used
by tests and benchmarks to look at tracing by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

from mirrord.say import say
from mirrord.supervisor import (
    SignalForwarder,
    SpawnError,
    SupervisedRun,
    SupervisorOptions,
    exit_like,
    seccomp_trace_available,
)
from mirrord.supervisor import engine as engines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mirrord.supervisor")
    p.add_argument("--hostname")
    p.add_argument("--engine", choices=engines.CHOICES, help="as MIRRORD_ENGINE")
    p.add_argument("--no-seccomp", action="store_true", help="ptrace engine, every syscall stops")
    p.add_argument("--stats", action="store_true", help="print ptrace stop and notification counts")
    p.add_argument("command", nargs=argparse.REMAINDER)
    args = p.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        p.error("no command")
    environ = dict(os.environ)
    if args.engine:
        environ[engines.ENV] = args.engine
    if args.no_seccomp:
        environ["MIRRORD_NO_SECCOMP"] = "1"
    try:
        choice = engines.choose(environ, seccomp_available=seccomp_trace_available())
    except engines.EngineError as exc:
        say(str(exc))
        return 2
    opts = SupervisorOptions(hostname=args.hostname, engine=choice)

    async def go() -> tuple[int | None, int | None]:
        run = SupervisedRun(command, os.environ, opts)
        fwd = SignalForwarder(run.live_targets, lambda _sig: None)
        fwd.start()
        try:
            status = await run.wait()
        finally:
            fwd.stop()
        if args.stats:
            st = run.stats
            print(
                f"mirrord-stats stops={st.stops} notifications={st.notifications}",
                file=sys.stderr,
            )
        return status.code, status.signal

    try:
        code, sig = asyncio.run(go())
    except SpawnError as exc:
        say(str(exc))
        return exc.exit_code
    sys.stdout.flush()
    return exit_like(code, sig)


if __name__ == "__main__":
    sys.exit(main())
