"""Would a signal end this thread's wait, natively? (notify engine; the decision is pure.)

The notify engine's filter uses WAIT_KILLABLE_RECV: once we have read a notification,
only a fatal signal ends the thread's wait for our answer, so a slow remote open() is
never cut short by EINTR (natively it cannot be). Calls that natively block in an
interruptible wait (accept, recv, connect) would then hold their signals for as long as
we wait for them; for those the engine reads /proc/TID/status on a short tick and, when
a signal is pending that the kernel would hand to this very thread, answers the call
with -ERESTARTSYS: the kernel then runs the handler and restarts the call (SA_RESTART)
or returns EINTR, exactly as natively, and a stop signal stops it.

Which thread takes a signal (kernel/signal.c, complete_signal): one sent to the thread
(SigPnd) is its own; one sent to the process (ShdPnd: kill(1), the terminal, timers)
goes to the thread-group leader if the leader does not block it, else to some thread
that does not. So a waiting leader takes a process signal it does not block; another
thread takes it only when the leader blocks it, and then perhaps not this one: that call
is answered with EINTR, which never leaves the kernel's internal -ERESTARTSYS (512) in
a thread that has no signal to handle. A group stop in progress (the leader is stopped,
'T') must reach every thread.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass

ERESTARTSYS = 512  # the kernel's "restart if SA_RESTART, else EINTR"


@dataclass(frozen=True)
class SigState:
    tgid: int
    pid: int  # the thread
    state: str  # "S", "D", "T", "t", "Z"…
    pending: int  # SigPnd: sent to this thread
    shared: int  # ShdPnd: sent to the process
    blocked: int  # SigBlk


def parse_status(text: str) -> SigState:
    fields: dict[str, str] = {}
    for line in text.splitlines():
        name, _, value = line.partition(":")
        if name in ("Tgid", "Pid", "State", "SigPnd", "ShdPnd", "SigBlk"):
            fields[name] = value.strip()
    return SigState(
        tgid=int(fields.get("Tgid", "0")),
        pid=int(fields.get("Pid", "0")),
        state=fields.get("State", "?")[:1],
        pending=int(fields.get("SigPnd", "0"), 16),
        shared=int(fields.get("ShdPnd", "0"), 16),
        blocked=int(fields.get("SigBlk", "0"), 16),
    )


def takes_signal(thread: SigState, leader: SigState | None) -> int:
    """The errno that ends `thread`'s interruptible wait now: ERESTARTSYS when a signal
    is surely this thread's, EINTR when it may be, 0 when the wait goes on. `leader`: the
    thread-group leader's state when `thread` is not the leader."""
    if thread.pending & ~thread.blocked:
        return ERESTARTSYS
    shared = thread.shared & ~thread.blocked
    if leader is None:
        return ERESTARTSYS if shared else 0  # we are the leader
    if leader.state in ("T", "t") and thread.state not in ("T", "t"):
        return ERESTARTSYS  # a group stop is pending for every thread, us included
    if leader.state in ("Z", "X"):
        return errno.EINTR if shared else 0  # a leader that is gone takes nothing
    # The leader takes what it does not block; what it blocks may fall to us.
    return errno.EINTR if shared & leader.blocked else 0


def read_state(tid: int) -> SigState | None:
    try:
        with open(f"/proc/{tid}/status") as f:
            return parse_status(f.read())
    except OSError:
        return None


def interrupted(tid: int) -> int:
    """takes_signal() for thread `tid`, read from /proc (0 if it is gone)."""
    thread = read_state(tid)
    if thread is None:
        return 0
    leader = None
    if thread.tgid != thread.pid:
        leader = read_state(thread.tgid)
    return takes_signal(thread, leader)
