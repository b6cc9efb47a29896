"""Which processes make up the program's tree, for the notify engine, which sees no fork
or exit events: where a signal sent to mirrord goes once the first program is gone, and
whose listening sockets count as the program's own (the localhost rule).

The tree is the first program, every process whose thread made a trapped syscall, and
the descendants of those still alive (read from /proc when asked: rarely).
"""

from __future__ import annotations

import os
from collections.abc import Callable

MAX_SEEN = 4096
MAX_DEPTH = 64

# Whether a pid belongs to the running program, as the engine serving it knows
# (net/listeners.py asks). One program per mirrord process.
_owner: Callable[[int], bool] | None = None


def set_owner(owns: Callable[[int], bool] | None) -> None:
    global _owner
    _owner = owns


def owns(pid: int) -> bool:
    return _owner is not None and _owner(pid)


class ProcessTree:
    def __init__(self) -> None:
        self._seen: set[int] = set()  # tids: a thread's tid is also its /proc entry

    def add(self, pid: int) -> None:
        self._seen.add(pid)

    def seen(self, tid: int) -> None:
        if tid not in self._seen:
            if len(self._seen) >= MAX_SEEN:
                self._prune()
            self._seen.add(tid)

    def _prune(self) -> None:
        self._seen = {t for t in self._seen if os.path.exists(f"/proc/{t}")}

    def contains(self, pid: int) -> bool:
        """`pid` (a process) is the first program, a process seen, or a descendant."""
        for _ in range(MAX_DEPTH):
            if pid in self._seen:
                return True
            ppid = _ppid(pid)
            if ppid <= 1:
                return False
            pid = ppid
        return False

    def alive(self) -> list[int]:
        """Processes (tgids) of the tree that still live, zombies left out."""
        parents: dict[int, int] = {}
        states: dict[int, str] = {}
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            try:
                with open(f"/proc/{name}/stat", "rb") as f:
                    stat = f.read()
            except OSError:
                continue
            # pid (comm) state ppid …: comm may hold spaces and parentheses.
            fields = stat[stat.rfind(b")") + 2 :].split()
            parents[int(name)] = int(fields[1])
            states[int(name)] = fields[0].decode()
        roots = {_tgid(t) for t in list(self._seen)}  # another thread adds to it
        tree = {r for r in roots if r in parents}
        changed = True
        while changed:
            changed = False
            for pid, ppid in parents.items():
                if ppid in tree and pid not in tree:
                    tree.add(pid)
                    changed = True
        return sorted(p for p in tree if states.get(p) not in ("Z", "X"))


def _tgid(tid: int) -> int:
    try:
        with open(f"/proc/{tid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"Tgid:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return tid


def _ppid(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return 0
    return int(stat[stat.rfind(b")") + 2 :].split()[1])
