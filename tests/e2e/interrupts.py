"""Interrupting mirrord itself while it serves a program: every thread of the mirrord
process gets a signal that has a handler (its own wake-up signal, which it catches and
ignores) every few hundred microseconds. A blocking call of mirrord's cut short by it
stands for any other interruption of its waits: a profiler or `gdb -p` stopping it, a
terminal stop, a signal of its own."""

from __future__ import annotations

import contextlib
import ctypes
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

from mirrord.supervisor.notify import WAKE_SIGNAL

_libc = ctypes.CDLL(None, use_errno=True)
SYS_TGKILL = 234


@dataclass
class Storm:
    sent: int = 0


def _catches(pid: int, sig: int) -> bool:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("SigCgt:"):
                return bool(int(line.split()[1], 16) & (1 << (sig - 1)))
    return False


@contextlib.contextmanager
def interrupting(pid: int, every_s: float = 0.0002, timeout: float = 30) -> Iterator[Storm]:
    """Signal every thread of `pid` until the block ends (starting once its handler is in
    place: before, the signal would kill it)."""
    storm = Storm()
    stop = threading.Event()
    sig = int(WAKE_SIGNAL)

    def run() -> None:
        deadline = time.monotonic() + timeout
        with contextlib.suppress(OSError):
            while not _catches(pid, sig):
                if stop.is_set() or time.monotonic() > deadline:
                    return
                time.sleep(0.005)
            while not stop.is_set():
                for task in os.listdir(f"/proc/{pid}/task"):
                    if _libc.syscall(SYS_TGKILL, pid, int(task), sig) == 0:
                        storm.sent += 1
                time.sleep(every_s)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield storm
    finally:
        stop.set()
        thread.join()
