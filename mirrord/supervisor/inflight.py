"""Deferred notifications and restarted syscalls (notify engine). Pure: no I/O.

A call that may block natively (accept, recv, connect) is answered with -ERESTARTSYS
when a signal arrives for its thread (sigwatch.py), so the handler runs at once, as it
would natively; with SA_RESTART (C, Go) or PEP 475 (Python) the program then makes the
same call again with the same registers: a new notification with the same key
(tid, nr, args). The rules:

1. A restart of a call whose work is still running joins it: the work is not done twice
   (no second pod connect) and its result answers the newest id.
2. Work that finished while its call had no valid id (the signal handler was running)
   is parked for PARK_S: the restart takes the result at once, with no new round trip.
3. Work marked `cancel_if_gone` (a wait for readiness, which takes nothing itself) is
   dropped when its call is interrupted or its thread dies.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

Key = tuple[int, int, tuple[int, ...]]  # (tid, nr, args)

# How long a finished result waits for its restart. A restart comes right after the
# signal handler returns; a program that got EINTR and never calls again leaves it here.
PARK_S = 10.0


@dataclass(eq=False)
class Entry:
    key: Key
    nid: int  # the newest notification id of this call
    cancel_if_gone: bool
    interruptible: bool = False  # watched for signals (sigwatch.py)
    interruptible_from: float = 0.0  # monotonic time from which a signal ends the wait
    cancel: Callable[[], Any] | None = None  # stops the running work (set by the engine)
    then: Any = None  # the engine's continuation for the work's result
    parked: bool = False
    result: Any = None
    parked_at: float = 0.0
    done: bool = False


@dataclass(frozen=True)
class Claim:
    """What a new notification found: `joined` running work (which will answer it), a
    parked entry whose `result` is ours to finish now (`joined` False), or nothing."""

    entry: Entry | None
    joined: bool = False


class Inflight:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: dict[Key, Entry] = {}

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def active(self) -> bool:
        """Any entry at all (the hot path's check: no lock, no call)."""
        return bool(self._entries)

    def claim(self, key: Key, nid: int) -> Claim:
        """A notification arrived: is it a restart of a call we know?"""
        with self._lock:
            self._expire()
            entry = self._entries.get(key)
            if entry is None:
                return Claim(None)
            entry.nid = nid
            if entry.parked:
                # Ours to finish now (then delivered() or undelivered() again).
                entry.parked = False
                return Claim(entry)
            return Claim(entry, joined=True)

    @staticmethod
    def tid(entry: Entry) -> int:
        return entry.key[0]

    def start(self, key: Key, nid: int, cancel_if_gone: bool) -> Entry:
        """Deferred work begins for this call."""
        with self._lock:
            entry = Entry(key, nid, cancel_if_gone)
            self._entries[key] = entry
            return entry

    def newest(self, entry: Entry) -> int:
        """The id to answer; 0 while none is valid (interrupted, no restart yet)."""
        with self._lock:
            return entry.nid

    def answering(self, entry: Entry) -> int:
        """The id to answer now (0: none is valid). The entry leaves the table first: the
        program may make the very same call again the moment it has the answer, and that
        is a new call, not a restart to join."""
        with self._lock:
            if entry.nid and self._entries.get(entry.key) is entry:
                del self._entries[entry.key]
            return entry.nid

    def interrupted(self, entry: Entry, nid: int) -> bool:
        """We ended the call behind `nid` (-ERESTARTSYS) or its thread died. True if the
        entry was dropped (its work should stop); other work runs on for a restart."""
        with self._lock:
            if entry.nid != nid:
                return False  # a restart joined it meanwhile: the work now serves that
            entry.nid = 0
            if not entry.cancel_if_gone or entry.done:
                return False
            if self._entries.get(entry.key) is entry:
                del self._entries[entry.key]
            entry.done = True
            return True

    def delivered(self, entry: Entry) -> None:
        """The answer reached the program: the call is over."""
        with self._lock:
            entry.done = True
            if self._entries.get(entry.key) is entry:
                del self._entries[entry.key]

    def undelivered(self, entry: Entry, result: Any) -> None:
        """No call took the answer (ended by a signal, or its thread died): the result is
        parked for a restart, unless the work was dropped."""
        with self._lock:
            entry.nid = 0
            if entry.done:
                return
            if self._entries.setdefault(entry.key, entry) is entry:
                entry.parked = True
                entry.result = result
                entry.parked_at = self._clock()

    def running(self) -> list[Entry]:
        """Entries whose work is still running (what the sweep checks)."""
        with self._lock:
            self._expire()
            return [e for e in self._entries.values() if not e.parked]

    def _expire(self) -> None:
        now = self._clock()
        stale = [k for k, e in self._entries.items() if e.parked and now - e.parked_at > PARK_S]
        for key in stale:
            self._entries[key].done = True
            del self._entries[key]
