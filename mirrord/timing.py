"""`MIRRORD_TIMING=1`: where the time of a `mirrord exec` goes, printed at the end.

Marks are taken at the steps of a session (`mark("config loaded")`); the report gives each
step's time since the previous mark, from the process's own start (the interpreter's
start-up and imports included). Off, `mark` is one dict lookup.
"""

from __future__ import annotations

import os
import time

ENV = "MIRRORD_TIMING"
ENABLED = os.environ.get(ENV, "") not in ("", "0", "false")
_marks: list[tuple[str, float]] = []


def _process_start() -> float:
    """This process's start on the monotonic clock (from /proc: 10 ms resolution)."""
    try:
        with open("/proc/self/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        ticks = int(fields[19])  # starttime, field 22: clock ticks since boot
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        since_start = uptime - ticks / os.sysconf("SC_CLK_TCK")
        return time.monotonic() - max(0.0, since_start)
    except (OSError, ValueError, IndexError):
        return time.monotonic()


_START = _process_start() if ENABLED else 0.0


def mark(step: str) -> None:
    """The end of `step` (no-op unless MIRRORD_TIMING=1)."""
    if ENABLED:
        _marks.append((step, time.monotonic()))


def report() -> list[str]:
    """One line per step: its own time, and the time since the process started."""
    lines = []
    previous = _START
    for step, at in _marks:
        own, total = (at - previous) * 1000, (at - _START) * 1000
        lines.append(f"timing: {own:7.1f} ms  {step:<34} (at {total:.0f} ms)")
        previous = at
    return lines
