"""The absolute path a syscall names, from its (dirfd, path) arguments.

Relative paths resolve against the program's cwd (/proc/TID/cwd) or the directory fd
(/proc/TID/fd/N) — read at the stop, so nothing is tracked. A cwd or dirfd inside the
cache means a remote directory: the path is remote, relative to it.
"""

from __future__ import annotations

import ctypes
import os
import posixpath
from collections.abc import Callable
from dataclasses import dataclass

AT_FDCWD = -100

Readlink = Callable[[str], str]


def as_int(reg: int) -> int:
    """A register holding a C int (dirfd, fd)."""
    return ctypes.c_int(reg & 0xFFFFFFFF).value


@dataclass(frozen=True)
class Named:
    path: str  # absolute, normalised
    in_remote_dir: bool  # relative to a remote cwd/dirfd: remote whatever the rules say


def absolute(
    tid: int,
    dirfd: int,
    raw: str,
    from_cache: Callable[[str], str | None],
    readlink: Readlink = os.readlink,
) -> Named | None:
    """None when the path is relative to a local directory fd (stays local, as
    upstream), or when /proc cannot tell (the kernel will answer the call itself)."""
    if raw.startswith("/"):
        return Named(_norm(raw), False)
    try:
        base = readlink(f"/proc/{tid}/cwd" if dirfd == AT_FDCWD else f"/proc/{tid}/fd/{dirfd}")
    except OSError:
        return None
    remote_base = from_cache(base)
    if remote_base is not None:
        return Named(_norm(posixpath.join(remote_base, raw)), True)
    if dirfd != AT_FDCWD:
        return None
    return Named(_norm(posixpath.join(base, raw)), False)


def _norm(path: str) -> str:
    if "//" not in path and "/." not in path and (path == "/" or path[-1] != "/"):
        return path  # already normal (most paths): no normpath call
    out = posixpath.normpath(path)
    return "/" + out.lstrip("/") if out.startswith("//") else out
