"""Acting as the target process: its fs uid/gid and groups, on the calling thread only.

The agent is root, but a Kubernetes agent has no CAP_DAC_OVERRIDE or CAP_DAC_READ_SEARCH
(its manifest drops them): it reaches a non-root target's files, /proc/PID/environ and unix
sockets as that target's user, which is also what makes a file the pod's user cannot read
fail with EACCES. Linux credentials are per thread (glibc broadcasts setuid() to every
thread, but the raw syscalls do not), so a worker thread switches fsuid/fsgid/groups around
each operation (CAP_SETUID, CAP_SETGID). When the fsuid leaves 0 the kernel drops that
thread's file capabilities (CAP_DAC_OVERRIDE…), and gives them back when it returns to 0.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
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


# An agent DaemonSet from before these capabilities were added lacks them: reinstalling fixes.
FIX = "; `mirrord agent install` gives its DaemonSet that, see docs/kubernetes.md"


class CredentialsError(PermissionError):
    """The agent could not take the target's credentials (a capability is missing)."""


def _set_groups(groups: tuple[int, ...]) -> None:
    arr = (ctypes.c_uint * max(1, len(groups)))(*groups)
    if _libc.syscall(ctypes.c_long(SYS_SETGROUPS), ctypes.c_size_t(len(groups)), arr) != 0:
        err = ctypes.get_errno()
        hint = f" (the agent needs CAP_SETGID{FIX})" if err == errno.EPERM else ""
        raise CredentialsError(err, f"setgroups: {os.strerror(err)}{hint}")


log = logging.getLogger(__name__)
_warned = False  # the first failed switch is said in the agent's log, once
_verified = False  # the capabilities do not change: one checked switch says it for all


def _set_fs(uid: int, gid: int) -> None:
    global _verified
    # setgroups() before this needed CAP_SETGID, which setfsgid needs too; setfsuid needs
    # CAP_SETUID and, like setfsgid, returns the previous id and never fails loudly: an
    # invalid id (-1) changes nothing and returns the current one, which says if it took.
    _libc.syscall(ctypes.c_long(SYS_SETFSGID), ctypes.c_uint(gid))
    _libc.syscall(ctypes.c_long(SYS_SETFSUID), ctypes.c_uint(uid))
    if _verified or uid == os.geteuid():
        return
    now = _libc.syscall(ctypes.c_long(SYS_SETFSUID), ctypes.c_uint(0xFFFFFFFF)) & 0xFFFFFFFF
    if now != uid:
        raise CredentialsError(
            errno.EPERM,
            f"the agent could not act as the target's fs uid {uid} (it needs CAP_SETUID{FIX})",
        )
    _verified = True


def _as_we_are(groups: tuple[int, ...]) -> None:
    _set_fs(os.geteuid(), os.getegid())
    _set_groups(groups)


@contextlib.contextmanager
def acting_as(creds: Creds | None) -> Iterator[None]:
    """Run the body with the target's file credentials on this thread (None: as we are)."""
    global _warned
    if creds is None or (creds.uid == os.geteuid() and creds.gid == os.getegid()):
        yield
        return
    own_groups = tuple(os.getgroups())
    try:
        _set_groups(creds.groups)  # nothing changed yet if this fails
        try:
            _set_fs(creds.uid, creds.gid)
        except BaseException:
            _as_we_are(own_groups)
            raise
    except CredentialsError as e:
        if not _warned:  # the file calls that fail on it answer EPERM: say why once
            _warned = True
            log.warning("%s", e.strerror)
        raise
    try:
        yield
    finally:
        _as_we_are(own_groups)
