"""Signals between the user, mirrord and the traced program.

- SIGINT/SIGTERM/SIGHUP/SIGQUIT sent to mirrord with kill(1) are forwarded to the program.
  The same signals coming from the terminal (Ctrl-C, Ctrl-\\: si_code SI_KERNEL) already
  reached the program, which shares mirrord's process group, so they are not sent twice.
  To see si_code they are blocked and collected with sigtimedwait on one thread; this
  must start before any other thread exists, so every thread inherits the mask.
- SIGTSTP/SIGTTIN/SIGTTOU are ignored by mirrord itself: it stops when the program stops
  (tracer.py's on_main_stopped), so a Ctrl-Z is seen by the shell exactly once.
The program starts with the dispositions and mask mirrord was started with (spawn.py):
an ignored SIGINT (a background job) stays ignored, as natively.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Callable

from mirrord.supervisor.spawn import note_inherited

FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)
IGNORED = (signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU)
SI_KERNEL = 0x80


class SignalForwarder:
    def __init__(
        self,
        targets: Callable[[], list[int]],
        on_signal_without_target: Callable[[int], None],
    ) -> None:
        self._targets = targets
        self._no_target = on_signal_without_target
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._old_mask: set[int | signal.Signals] = set()
        self._old_handlers: dict[int, signal.Handlers | int | None] = {}

    def start(self) -> None:
        ignored = frozenset(
            int(sig)
            for sig in (*FORWARDED, *IGNORED, signal.SIGCHLD)
            if signal.getsignal(sig) == signal.SIG_IGN
        )
        # SIGCHLD too: the tracer reads it from a signalfd (wakeup.py), so no thread may
        # take it. Threads started after this inherit the mask.
        self._old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, {*FORWARDED, signal.SIGCHLD})
        note_inherited(ignored, frozenset(int(s) for s in self._old_mask))
        for sig in IGNORED:
            self._old_handlers[sig] = signal.signal(sig, signal.SIG_IGN)  # type: ignore[assignment]
        self._thread = threading.Thread(target=self._wait, name="mirrord-signals", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            # Wake it now rather than at its next timeout: a signal aimed at that thread
            # alone is taken by its sigtimedwait, which then sees _stop and returns.
            if self._thread.ident is not None and self._thread.is_alive():
                signal.pthread_kill(self._thread.ident, signal.SIGTERM)
            self._thread.join()
            self._thread = None
        for sig, old in self._old_handlers.items():
            signal.signal(sig, old if old is not None else signal.SIG_DFL)
        self._old_handlers.clear()
        signal.pthread_sigmask(signal.SIG_SETMASK, self._old_mask)

    def _wait(self) -> None:
        while not self._stop.is_set():
            info = signal.sigtimedwait(FORWARDED, 0.5)
            if info is None or self._stop.is_set():
                continue
            if info.si_signo not in FORWARDED:
                # Seen when a debugger (py-spy) ptrace-attaches to mirrord's threads: a
                # wake-up that names no signal we wait for. Never let it end this thread.
                continue
            targets = self._targets()
            if not targets:
                self._no_target(info.si_signo)
                continue
            if info.si_code == SI_KERNEL:
                continue  # from the terminal: the program got it directly
            for pid in targets:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, info.si_signo)


def exit_like(code: int | None, sig: int | None) -> int:
    """End mirrord the way the program ended: by the same signal if it was killed by
    one (so a shell sees the same status), else with its exit code. Returns the code to
    exit with if re-raising the signal did not end us."""
    if sig is None:
        return code if code is not None else 1
    try:
        import resource

        # Re-raising SIGSEGV/SIGABRT must not leave a core dump of mirrord itself.
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        if sig not in (signal.SIGKILL, signal.SIGSTOP):  # these cannot be caught anyway
            signal.signal(sig, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {sig})
        os.kill(os.getpid(), sig)
    except (OSError, ValueError):
        pass
    return 128 + sig
