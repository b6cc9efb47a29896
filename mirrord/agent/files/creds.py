"""Acting as the target process: its fs uid/gid and groups, on the calling thread only.

The agent is root; a file the pod's user cannot read must still fail with EACCES. Linux
credentials are per thread (glibc broadcasts setuid() to every thread, but the raw
syscalls do not), so a worker thread switches fsuid/fsgid/groups around each operation.
When the fsuid leaves 0 the kernel drops that thread's file capabilities
(CAP_DAC_OVERRIDE…), and gives them back when it returns to 0.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
from collections.abc import Iterator
from dataclasses import dataclass

SYS_SETGROUPS = 116
SYS_SETFSUID = 122
SYS_SETFSGID = 123

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


@dataclass(frozen=True)
class Creds:
    uid: int
    gid: int
    groups: tuple[int, ...]


def target_creds(pid: int) -> Creds:
    """The fs uid/gid and supplementary groups of a process, from /proc/PID/status."""
    uid = gid = 0
    groups: tuple[int, ...] = ()
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key == "Uid":
                uid = int(value.split()[3])  # real, effective, saved, fs
            elif key == "Gid":
                gid = int(value.split()[3])
            elif key == "Groups":
                groups = tuple(int(g) for g in value.split())
    return Creds(uid, gid, groups)


def _set_groups(groups: tuple[int, ...]) -> None:
    arr = (ctypes.c_uint * max(1, len(groups)))(*groups)
    if _libc.syscall(ctypes.c_long(SYS_SETGROUPS), ctypes.c_size_t(len(groups)), arr) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setgroups: {os.strerror(err)}")


def _set_fs(uid: int, gid: int) -> None:
    # setfsuid/setfsgid return the previous value and never fail loudly; check after.
    _libc.syscall(ctypes.c_long(SYS_SETFSGID), ctypes.c_uint(gid))
    _libc.syscall(ctypes.c_long(SYS_SETFSUID), ctypes.c_uint(uid))


@contextlib.contextmanager
def acting_as(creds: Creds | None) -> Iterator[None]:
    """Run the body with the target's file credentials on this thread (None: as we are)."""
    if creds is None or (creds.uid == os.geteuid() and creds.gid == os.getegid()):
        yield
        return
    own_groups = tuple(os.getgroups())
    _set_groups(creds.groups)
    _set_fs(creds.uid, creds.gid)
    try:
        yield
    finally:
        _set_fs(os.geteuid(), os.getegid())
        _set_groups(own_groups)
