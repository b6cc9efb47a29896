"""A worker thread that lives inside a target's network and UTS namespaces.

setns() changes only the calling thread for the net and UTS namespaces, and is allowed in a
multithreaded process (the mount namespace is not: threads share CLONE_FS; files are read
through /proc/PID/root instead). So each session owns one thread that enters the target's
namespaces once, and everything that must happen "inside" the target (creating sockets,
uname) is submitted to it with `await worker.run(fn, *args)`.
"""

import asyncio
import concurrent.futures
import ctypes
import ctypes.util
import errno
import functools
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")

CLONE_NEWUTS = 0x04000000
CLONE_NEWNET = 0x40000000

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]
_libc.setns.restype = ctypes.c_int


class NamespaceError(Exception):
    """Entering or checking a target's namespaces failed."""


def setns(fd: int, nstype: int) -> None:
    if _libc.setns(fd, nstype) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def net_ns_inode(pid: int | None) -> int:
    """Inode of a process's network namespace (None: this thread's, which may differ from the
    process's after setns)."""
    path = "/proc/thread-self/ns/net" if pid is None else f"/proc/{pid}/ns/net"
    return os.stat(path).st_ino


@dataclass(frozen=True)
class EnteredNamespaces:
    """What the worker saw from inside, right after entering."""

    net_ns_inode: int
    hostname: str


def _enter(pid: int | None) -> EnteredNamespaces:
    """Runs on the worker thread: join the target's net and UTS namespaces, then check."""
    if pid is not None:
        for name, nstype in (("net", CLONE_NEWNET), ("uts", CLONE_NEWUTS)):
            path = f"/proc/{pid}/ns/{name}"
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError as e:
                raise NamespaceError(f"target process {pid} is gone ({path} missing)") from e
            except PermissionError as e:
                raise NamespaceError(f"cannot open {path}: {e} (the agent needs root)") from e
            try:
                setns(fd, nstype)
            except OSError as e:
                hint = " (the agent needs CAP_SYS_ADMIN)" if e.errno == errno.EPERM else ""
                raise NamespaceError(f"setns({path}) failed: {e.strerror}{hint}") from e
            finally:
                os.close(fd)
    inode = net_ns_inode(None)
    if pid is not None:
        expected = net_ns_inode(pid)
        if inode != expected:
            raise NamespaceError(
                f"entered network namespace {inode} but target {pid} is in {expected}"
            )
    return EnteredNamespaces(net_ns_inode=inode, hostname=os.uname().nodename)


class NamespaceWorker:
    """One thread in the target's namespaces (targetless: the agent's own). Jobs run one at a
    time, in submission order; a job that blocks delays the others, so long I/O belongs in
    non-blocking sockets created here and driven by the event loop."""

    def __init__(self, pid: int | None, name: str) -> None:
        self.pid = pid
        # One thread only: a second thread would start in the agent's namespaces.
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=f"ns-{name}"
        )
        self._entered: EnteredNamespaces | None = None
        self._closed = threading.Event()

    async def start(self) -> EnteredNamespaces:
        """Enter the namespaces (the first job on the thread); on failure the worker is shut
        down, because the thread may be half inside."""
        try:
            self._entered = await self.run(_enter, self.pid)
        except BaseException:
            self.shutdown()
            raise
        return self._entered

    @property
    def entered(self) -> EnteredNamespaces:
        if self._entered is None:
            raise RuntimeError("namespace worker not started")
        return self._entered

    async def run(self, fn: Callable[..., T], *args: object) -> T:
        """Run fn(*args) on the worker thread (inside the target's namespaces)."""
        if self._closed.is_set():
            raise NamespaceError("the session's namespace worker is shut down")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args))

    def shutdown(self) -> None:
        """Stop the thread once queued jobs finish; the thread (and its namespace membership)
        goes away with it. Does not wait, so a stuck job cannot hang session cleanup."""
        if not self._closed.is_set():
            self._closed.set()
            self._executor.shutdown(wait=False, cancel_futures=True)

    @property
    def closed(self) -> bool:
        return self._closed.is_set()
