"""The local side: start a program under seccomp and answer, rewrite or perform its
trapped syscalls: by seccomp user notifications (the notify engine, the default) or by
ptrace (the fallback; engine.py decides).

Only this package imports python-ptrace (an import-linter contract checks it).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from mirrord.supervisor import engine as engines
from mirrord.supervisor import proctree
from mirrord.supervisor.notify_engine import NotifyEngine
from mirrord.supervisor.policy import Feature, SyscallTable, Trap, build_policy, trapped
from mirrord.supervisor.ptrace_engine import Tracer
from mirrord.supervisor.seccomp import Engine, build_filter
from mirrord.supervisor.signals import SignalForwarder, exit_like
from mirrord.supervisor.spawn import PtraceRefused, SpawnError, seccomp_trace_available, spawn
from mirrord.supervisor.status import ExitStatus, Stats

__all__ = [
    "Engine",
    "ExitStatus",
    "Feature",
    "PtraceRefused",
    "SignalForwarder",
    "SpawnError",
    "SupervisedRun",
    "SupervisorOptions",
    "SyscallTable",
    "Trap",
    "exit_like",
    "seccomp_trace_available",
    "trapped",
]


@dataclass(frozen=True)
class SupervisorOptions:
    hostname: str | None = None  # uname() nodename to show; None leaves it alone
    features: tuple[Feature, ...] = ()  # files, network…: their syscall tables
    # None: engine.choose() from MIRRORD_ENGINE and the kernel.
    engine: engines.EngineChoice | None = None


class SupervisedRun:
    """One program, served on its own thread, awaited from asyncio."""

    def __init__(self, argv: Sequence[str], env: Mapping[str, str], options: SupervisorOptions):
        self.argv = list(argv)
        self.env = dict(env)
        self.options = options
        try:
            self.choice = options.engine or engines.choose(
                seccomp_available=seccomp_trace_available()
            )
        except engines.EngineError as exc:
            raise SpawnError(str(exc), 2) from None
        self.started = threading.Event()
        try:
            self.loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            self.loop = None
        self.engine: NotifyEngine | Tracer | None = None
        # The program's pid from the moment spawn() returns: until the engine has started
        # (its first steps take a while under load) a signal must still reach it.
        self._spawned_pid: int | None = None

    @property
    def pid(self) -> int:
        return self.engine.main_pid if self.engine is not None else 0

    @property
    def stats(self) -> Stats:
        return self.engine.stats if self.engine is not None else Stats()

    def _serve(self) -> ExitStatus:
        """On the engine thread: spawn with the chosen engine, serve until the end."""
        choice = self.choice
        ptrace_policy = build_policy(
            hostname=self.options.hostname, features=self.options.features, engine=Engine.PTRACE
        )
        tracer = Tracer(
            ptrace_policy,
            use_seccomp=choice.seccomp,
            on_started=lambda _pid: self.started.set(),
            on_main_stopped=lambda _sig: os.kill(os.getpid(), signal.SIGSTOP),
            loop=self.loop,
        )
        trace_prog = tracer.filter()
        notify_prog = None
        notifier = None
        if choice.engine is Engine.NOTIFY:
            policy = build_policy(hostname=self.options.hostname, features=self.options.features)
            notifier = NotifyEngine(
                policy,
                loop=self.loop,
                on_started=lambda _pid: self.started.set(),
                on_main_stopped=lambda _sig: os.kill(os.getpid(), signal.SIGSTOP),
            )
            notify_prog = build_filter(policy.rules, notify=True)
        spawned = spawn(
            self.argv,
            self.env,
            notify_prog=notify_prog,
            trace_prog=None if choice.forced and notifier is not None else trace_prog,
        )
        self._spawned_pid = spawned.pid
        try:
            if spawned.engine is Engine.NOTIFY and notifier is not None:
                engines.report(Engine.NOTIFY, choice.reason, forced=choice.forced)
                self.engine = notifier
                proctree.set_owner(notifier.tree.contains)
                return notifier.run(spawned, self.argv[0])
            engines.report(Engine.PTRACE, spawned.refused or choice.reason, forced=choice.forced)
            self.engine = tracer
            proctree.set_owner(tracer.traces)
            return tracer.run_spawned(spawned, self.argv[0])
        finally:
            proctree.set_owner(None)

    def live_targets(self) -> list[int]:
        """Where a forwarded signal goes: the program, or what is left of its tree."""
        if not self.started.is_set() or self.engine is None:
            # Spawned, not started yet: the program itself (it has no children so far).
            return [self._spawned_pid] if self._spawned_pid is not None else []
        if isinstance(self.engine, NotifyEngine):
            return self.engine.live_targets()
        if self.engine.main_status is None:
            return [self.engine.main_pid]
        return sorted(self.engine.tasks)

    async def wait(self) -> ExitStatus:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[ExitStatus] = loop.create_future()

        def body() -> None:
            try:
                result = self._serve()
            except BaseException as exc:  # handed to the awaiting task
                loop.call_soon_threadsafe(_set_exception, fut, exc)
                self.started.set()
            else:
                loop.call_soon_threadsafe(_set_result, fut, result)

        threading.Thread(target=body, name="mirrord-engine", daemon=True).start()
        return await fut

    def kill(self, sig: int = signal.SIGKILL) -> None:
        for pid in self.live_targets() or ([self.pid] if self.pid else []):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)


def _set_result(fut: asyncio.Future[ExitStatus], value: ExitStatus) -> None:
    if not fut.done():
        fut.set_result(value)


def _set_exception(fut: asyncio.Future[ExitStatus], exc: BaseException) -> None:
    if not fut.done():
        fut.set_exception(exc)
