"""Listings of more directories after an opened one (OpenRequest.prefetch / also), so
that a walk (find, ls -R, os.walk) costs a round trip per batch of directories, not per
directory.

Breadth first: the directories below the opened one, then those the client named
(`also`: the opened one's siblings, when the program is walking their parent), each
followed by what is below it. Every directory is opened as the program's own open would
(inside the pod's root, as the target's credentials: one the program could not read is
not listed, and its own open then gets the error), its last component not followed: only
real directories are listed, never through a symlink. Whole listings only: one that
would pass the entry budget ends the walk unsent.
"""

from __future__ import annotations

import collections
import os
import stat as statmod
from collections.abc import Callable, Iterable

from mirrord.agent.creds import Creds, acting_as
from mirrord.agent.files.ops import entries_of, to_pb
from mirrord.agent.files.resolve import PodRoot
from mirrord.v1 import files_pb2

# Entries per message (well under gRPC's 4 MiB): small, so the first listings come soon.
BATCH_ENTRIES = 256
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_NONBLOCK


def subdirs(path: str, entries: Iterable[files_pb2.DirEntry]) -> list[str]:
    base = path.rstrip("/")
    return [f"{base}/{os.fsdecode(e.name)}" for e in entries if statmod.S_ISDIR(e.stat.mode)]


class Below:
    def __init__(
        self,
        root: PodRoot,
        start: list[str],
        budget: int,
        creds: Callable[[], Creds | None],
    ) -> None:
        self._root = root
        self._creds = creds
        self._left = budget
        self._queue: collections.deque[str] = collections.deque(start)
        self._seen = set(start)

    def next_batch(self) -> list[files_pb2.DirListing]:
        """The next listings (about BATCH_ENTRIES entries); [] when the walk is over."""
        out: list[files_pb2.DirListing] = []
        sent = 0
        with acting_as(self._creds()):  # read per batch, as for every call (ops.py)
            while self._queue and self._left > 0 and sent < BATCH_ENTRIES:
                path = self._queue.popleft()
                try:
                    fd = self._root.open(path, _DIR_FLAGS)
                except OSError:
                    continue  # gone, not a directory (any more), or not ours to read
                try:
                    st = os.fstat(fd)
                    entries = list(entries_of(fd))
                except OSError:
                    continue
                finally:
                    os.close(fd)
                if len(entries) > self._left:
                    self._left = 0
                    break
                self._left -= len(entries)
                sent += len(entries) + 1
                out.append(files_pb2.DirListing(path=path, stat=to_pb(st), entries=entries))
                for sub in subdirs(path, entries):
                    if sub not in self._seen:
                        self._seen.add(sub)
                        self._queue.append(sub)
        return out
