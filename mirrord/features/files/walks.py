"""Directory listings the agent sends ahead (Open's prefetch), so that a walk (find,
ls -R, os.walk) costs a round trip per batch of directories, not one per directory.

A plain open of a remote directory asks the agent to list, after it, the directories
below it (and the opened one's siblings, when the program opened their parent moments
ago: it is walking it), about PREFETCH_ENTRIES entries, breadth first. Those listings
arrive while the program works on the first one; the cache makes their copies in the
background, so the program's open of one of them finds it ready. An open of a directory
that a walk in flight will list waits a moment for it (WAIT_S), then asks for it alone.

Freshness is the stat cache's (STAT_TTL_S): a listing is used within that time of its
arrival, or asked for again; our own changes drop what they touch (invalidate), and
listings asked for before a change are dropped when they come.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field

from mirrord.features.files.remote import Listing

PREFETCH_ENTRIES = 4096
# How long an open waits for a listing a walk in flight will bring, before asking for it
# itself (about a round trip): the walk's order is the pod's, the program's its own.
WAIT_S = 0.002
MAX_REMEMBERED = 65536  # listings, walked and ready directories kept at most (each)


@dataclass(eq=False)
class Walk:
    """One Open whose listings are still coming."""

    generation: int
    pending: set[str] = field(default_factory=set)


class Walks:
    def __init__(self, clock: Callable[[], float], ttl: float) -> None:
        self._clock = clock
        self._ttl = ttl
        # Arrived, not made into copies yet: path -> (arrival, listing).
        self.arrived: dict[str, tuple[float, Listing]] = {}
        # Made into copies ahead of the program: path -> arrival.
        self.ready: dict[str, float] = {}
        # Directories materialised: path -> (when listed, its subdirectories' paths).
        self.walked: dict[str, tuple[float, list[str]]] = {}
        self._walks: list[Walk] = []
        self._progress: asyncio.Event | None = None
        self.generation = 0

    # --- the agent's side ----------------------------------------------------------------

    def begin(self) -> Walk:
        walk = Walk(self.generation)
        self._walks.append(walk)
        return walk

    def expect(self, walk: Walk, paths: list[str]) -> None:
        """The opened directory's subdirectories and the siblings asked for: coming."""
        walk.pending.update(paths)

    def arrive(self, walk: Walk, listings: list[Listing]) -> None:
        now = self._clock()
        keep = walk.generation == self.generation  # else asked for before a change of ours
        if keep and len(self.arrived) + len(listings) > MAX_REMEMBERED:
            self.arrived = {p: v for p, v in self.arrived.items() if v[0] + self._ttl >= now}
            if len(self.arrived) + len(listings) > MAX_REMEMBERED:
                self.arrived.clear()
        for listing in listings:
            walk.pending.discard(listing.path)
            if keep:
                self.arrived[listing.path] = (now, listing)
        self._tick()

    def end(self, walk: Walk) -> None:
        walk.pending.clear()
        if walk in self._walks:
            self._walks.remove(walk)
        self._tick()

    def _tick(self) -> None:
        if self._progress is not None:
            self._progress.set()
            self._progress = None

    # --- the program's side ----------------------------------------------------------------

    def pending(self, path: str) -> bool:
        return any(path in w.pending for w in self._walks)

    def coming(self, path: str) -> bool:
        """Listed by a walk moments ago (made into a copy or not yet), or still coming."""
        since = self.ready.get(path)
        if since is None and path in self.arrived:
            since = self.arrived[path][0]
        if since is not None and since + self._ttl >= self._clock():
            return True
        return self.pending(path)

    async def wait_for(self, path: str, timeout: float) -> bool:
        """Until a walk in flight has listed `path`, or ended without it: True. False
        after `timeout` with the listing still coming (asking for it then is quicker)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while path not in self.arrived and self.pending(path):
            left = deadline - loop.time()
            if left <= 0:
                return False
            if self._progress is None:
                self._progress = asyncio.Event()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._progress.wait(), left)
        return True

    def take(self, path: str) -> Listing | None:
        """The fresh listing of `path` that arrived, if any (it is used once)."""
        got = self.arrived.pop(path, None)
        if got is None or got[0] + self._ttl < self._clock():
            return None
        return got[1]

    def take_ready(self, path: str) -> bool:
        """Whether `path`'s copy was made ahead from a fresh listing (used once: a
        later open of it asks again)."""
        since = self.ready.pop(path, None)
        return since is not None and since + self._ttl >= self._clock()

    def next_arrived(self) -> tuple[str, float, Listing] | None:
        """A listing to make a copy of in the background (fresh ones only)."""
        now = self._clock()
        while self.arrived:
            path = next(iter(self.arrived))
            since, listing = self.arrived.pop(path)
            if since + self._ttl >= now:
                return path, since, listing
        return None

    def made_ahead(self, path: str, since: float) -> None:
        if len(self.ready) >= MAX_REMEMBERED:
            self.ready.clear()
        self.ready[path] = since

    def listed(self, path: str, since: float, subdirs: list[str]) -> None:
        if len(self.walked) >= MAX_REMEMBERED:
            self.walked.clear()
        self.walked[path] = (since, subdirs)

    def siblings(self, path: str) -> list[str]:
        """When the program opened `path`'s parent moments ago (it is walking it): the
        parent's other subdirectories not listed lately nor coming, for the agent to
        list after what is below `path`."""
        now = self._clock()
        walked = self.walked.get(os.path.dirname(path) or "/")
        if walked is None or walked[0] + self._ttl < now:
            return []
        out = []
        for sib in walked[1]:
            if sib == path or self.coming(sib):
                continue
            seen = self.walked.get(sib)
            if seen is None or seen[0] + self._ttl < now:
                out.append(sib)
                if len(out) >= PREFETCH_ENTRIES:
                    break
        return out

    def invalidate(self, path: str) -> None:
        """Our change to `path`: forget listings of it, its parent and what is below it,
        and drop those asked for before it when they come."""
        self.generation += 1
        parent = os.path.dirname(path) or "/"
        below = path.rstrip("/") + "/"
        for d in (self.arrived, self.ready, self.walked):
            for p in [p for p in d if p in (path, parent) or p.startswith(below)]:
                del d[p]
