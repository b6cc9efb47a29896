"""The local side: start a program under ptrace + seccomp and rewrite its syscalls.

Only this package imports python-ptrace (an import-linter contract checks it).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from mirrord.supervisor.handlers import Feature, build_policy
from mirrord.supervisor.signals import SignalForwarder, exit_like
from mirrord.supervisor.spawn import PtraceRefused, SpawnError, seccomp_trace_available
from mirrord.supervisor.tracer import ExitStatus, Tracer

__all__ = [
    "ExitStatus",
    "Feature",
    "PtraceRefused",
    "SignalForwarder",
    "SpawnError",
    "SupervisedRun",
    "SupervisorOptions",
    "exit_like",
    "seccomp_trace_available",
]


@dataclass(frozen=True)
class SupervisorOptions:
    hostname: str | None = None  # uname() nodename to show; None leaves it alone
    # None: use seccomp when the kernel has it. False forces the slow full-stop fallback.
    use_seccomp: bool | None = None
    # None: seccomp user notifications where rules allow them and the kernel has them;
    # False (or MIRRORD_NO_NOTIFY=1) makes those syscalls ptrace stops too (slower).
    use_notify: bool | None = None
    features: tuple[Feature, ...] = ()  # files, network…: rules + handlers


class SupervisedRun:
    """One traced program, run on its own tracer thread, awaited from asyncio."""

    def __init__(self, argv: Sequence[str], env: Mapping[str, str], options: SupervisorOptions):
        self.argv = list(argv)
        self.env = dict(env)
        use_seccomp = options.use_seccomp
        if use_seccomp is None:
            use_seccomp = os.environ.get("MIRRORD_NO_SECCOMP") != "1"
        if use_seccomp and not seccomp_trace_available():
            print(
                "mirrord: warning: this kernel cannot run seccomp filters that return "
                "SECCOMP_RET_TRACE; every syscall of the program will stop (much slower)",
                file=sys.stderr,
            )
            use_seccomp = False
        self.use_seccomp = use_seccomp
        use_notify = options.use_notify
        if use_notify is None:
            use_notify = os.environ.get("MIRRORD_NO_NOTIFY") != "1"
        self.started = threading.Event()
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        self.tracer = Tracer(
            build_policy(hostname=options.hostname, features=options.features),
            use_seccomp=use_seccomp,
            use_notify=use_notify,
            on_started=lambda _pid: self.started.set(),
            on_main_stopped=lambda _sig: os.kill(os.getpid(), signal.SIGSTOP),
            loop=loop,
        )

    @property
    def pid(self) -> int:
        return self.tracer.main_pid

    def live_targets(self) -> list[int]:
        """Where a forwarded signal goes: the program, or what is left of its tree."""
        if not self.started.is_set():
            return []
        if self.tracer.main_status is None:
            return [self.tracer.main_pid]
        return sorted(self.tracer.tasks)

    async def wait(self) -> ExitStatus:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[ExitStatus] = loop.create_future()

        def body() -> None:
            try:
                result = self.tracer.run(self.argv, self.env)
            except BaseException as exc:  # handed to the awaiting task
                loop.call_soon_threadsafe(_set_exception, fut, exc)
                self.started.set()
            else:
                loop.call_soon_threadsafe(_set_result, fut, result)

        threading.Thread(target=body, name="mirrord-tracer", daemon=True).start()
        return await fut

    def kill(self, sig: int = signal.SIGKILL) -> None:
        for tid in list(self.tracer.tasks) or [self.tracer.main_pid]:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(tid, sig)


def _set_result(fut: asyncio.Future[ExitStatus], value: ExitStatus) -> None:
    if not fut.done():
        fut.set_result(value)


def _set_exception(fut: asyncio.Future[ExitStatus], exc: BaseException) -> None:
    if not fut.done():
        fut.set_exception(exc)
