"""The Explainer: one per session, shared by every feature's hooks (supervisor threads,
the proxy's loop), so `record` takes a lock. JSON lines go to a buffered file, flushed at
the end and on SIGUSR1 (a write(2) per decision would slow the program's syscalls)."""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, TextIO

from mirrord.explain.summary import Summary

log = logging.getLogger("mirrord.explain")
LATER_BATCH = 8192  # queued records that wake the worker at once (bounds the queue)
LATER_WAIT_S = 0.5  # otherwise it looks this often: a burst (a tree walk) runs first


class Explainer:
    def __init__(self, out: TextIO | None = None, *, every: bool = False) -> None:
        """out: where the JSON lines go (None: the summary only). every: a path is
        recorded each time it is decided, not only the first (MIRRORD_EXPLAIN_ALL=1)."""
        self._out = out
        self.every = every
        self._lock = threading.Lock()
        # Work handed off the program's syscall path (`later`), done by a worker thread
        # while the serving threads wait on the kernel and the agent.
        self._pending: collections.deque[Callable[[], None]] = collections.deque()
        self._wake = threading.Event()
        self._drain_lock = threading.Lock()
        self._worker: threading.Thread | None = None
        self._start = time.monotonic()
        self.summary = Summary()

    def declare(self, rules: Iterable[str]) -> None:
        """The user's rules, so the summary can name those that never matched."""
        for rule in rules:
            self.record("rule", rule=rule)

    def record(self, kind: str, **fields: Any) -> None:
        rec: dict[str, Any] = {"kind": kind, "t": round(time.monotonic() - self._start, 6)}
        rec.update((k, v) for k, v in fields.items() if v is not None)
        with self._lock:
            self.summary.add(rec)
            if self._out is not None:
                try:
                    self._out.write(json.dumps(rec, separators=(",", ":")) + "\n")
                except (OSError, ValueError):  # a full disk, a closed file: keep running
                    self._out = None

    def later(self, work: Callable[[], None]) -> None:
        """Run `work` (which records) soon, on the worker thread: a hook on a hot path
        (a file decided while the program waits in its syscall) only queues it."""
        self._pending.append(work)
        if self._worker is None:
            self._worker = threading.Thread(target=self._run, name="mirrord-explain", daemon=True)
            self._worker.start()
        if len(self._pending) >= LATER_BATCH:
            self._wake.set()

    def _run(self) -> None:
        while True:
            self._wake.wait(LATER_WAIT_S)
            self._wake.clear()
            self.drain()

    def drain(self) -> None:
        with self._drain_lock:
            while self._pending:
                work = self._pending.popleft()
                try:
                    work()
                except Exception:
                    log.debug("explain: a record failed", exc_info=True)

    def summary_lines(self) -> list[str]:
        """The summary so far (under the lock: the hooks may be recording meanwhile)."""
        self.drain()
        with self._lock:
            return self.summary.lines()

    def flush(self) -> None:
        self.drain()
        with self._lock:
            if self._out is not None:
                try:
                    self._out.flush()
                except (OSError, ValueError):
                    self._out = None

    def close(self) -> None:
        self.drain()
        with self._lock:
            if self._out is not None:
                with contextlib.suppress(OSError):
                    self._out.close()
                self._out = None
