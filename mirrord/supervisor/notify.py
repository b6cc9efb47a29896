"""Seccomp user notifications: the kernel interface of the notify engine.

A trapped syscall does not stop the thread for a tracer: it waits inside the kernel while a
notification is read from the listener fd, and goes on when we answer with a result
(faked), "continue" (the kernel runs it unchanged), or an fd of ours installed into the
program's fd table as the syscall's result (SECCOMP_IOCTL_NOTIF_ADDFD, then the answer
naming the new fd: answer_fd says why not ADDFD_FLAG_SEND). Registers cannot be changed
and the kernel's result is never seen: calls that need a rewrite are performed by the
supervisor instead (notify_engine.py).

Why: a ptrace stop costs ~47 us on this kind of VM (signal-stop, SIGCHLD, waitpid,
GETREGS, CONT, two cross-CPU wake-ups); a notification with SYNC_WAKE_UP ~6 us, because
the waiting thread and the supervisor hand the CPU to each other directly; and the
program's ptrace slot stays free for a debugger.

The listener is made in the child (seccomp(2) with NEW_LISTENER returns it there) and
sent to the supervisor over a unix socket before execve (spawn.py). Only one listener
may exist in a process's filter chain: a program already under one (a nested supervisor,
a container runtime using notifications) gets EBUSY, and the ptrace engine instead.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import select
import signal
import struct
import threading
from typing import NamedTuple

SYS_SECCOMP = 317
SECCOMP_SET_MODE_FILTER = 1
SECCOMP_FILTER_FLAG_NEW_LISTENER = 1 << 3
# Once we have read a notification, only a fatal signal ends the thread's wait (5.19+):
# a slow remote open() is never cut short with EINTR, which natively it cannot be.
# Calls that natively block interruptibly are watched instead (sigwatch.py).
SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV = 1 << 5

# ioctls on the listener (linux/seccomp.h, type '!').
NOTIF_RECV = 0xC0502100  # _IOWR('!', 0, struct seccomp_notif)
NOTIF_SEND = 0xC0182101  # _IOWR('!', 1, struct seccomp_notif_resp)
NOTIF_ID_VALID = 0x40082102  # _IOW('!', 2, __u64)
NOTIF_ADDFD = 0x40182103  # _IOW('!', 3, struct seccomp_notif_addfd)
NOTIF_SET_FLAGS = 0x40082104  # _IOW('!', 4, __u64)
USER_NOTIF_FLAG_CONTINUE = 1
USER_NOTIF_FD_SYNC_WAKE_UP = 1  # 6.6+: wake-ups on the current CPU

_NOTIF = struct.Struct("<QIIiIQ6Q")  # id, pid, flags, data{nr, arch, ip, args[6]}

# The engine's serving thread waits in a blocking RECV; at the end of the run a signal
# with a handler wakes it (EINTR). The handler is a C function that does nothing with
# its argument (getppid): no Python code runs in signal context, and no SA_RESTART.
WAKE_SIGNAL = signal.SIGRTMIN + 5


class _SigAction(ctypes.Structure):
    _fields_ = [
        ("handler", ctypes.c_void_p),
        ("mask", ctypes.c_ulong * 16),
        ("flags", ctypes.c_int),
        ("restorer", ctypes.c_void_p),
    ]


def install_wake_handler() -> None:
    """Make WAKE_SIGNAL interrupt a blocking call of the thread it is sent to (once per
    process; harmless to repeat)."""
    act = _SigAction()
    act.handler = ctypes.cast(_libc.getppid, ctypes.c_void_p).value
    act.flags = 0
    if _libc.sigaction(int(WAKE_SIGNAL), ctypes.byref(act), None) != 0:
        raise OSError(ctypes.get_errno(), "sigaction")


_RESP = struct.Struct("<QqiI")  # id, val, error, flags
_ADDFD = struct.Struct("<QIIII")  # id, flags, srcfd, newfd, newfd_flags
_ZEROS = bytes(_NOTIF.size)


def receive_buffer() -> bytearray:
    """A buffer for wait_receive (one per receiving thread)."""
    return bytearray(_NOTIF.size)


_libc = ctypes.CDLL(None, use_errno=True)


class Notification(NamedTuple):
    id: int
    tid: int
    nr: int
    arch: int
    args: tuple[int, int, int, int, int, int]


def install_listener_filter(prog: bytes) -> tuple[int | None, int]:
    """In the child: install `prog` and return (its listener fd, 0), or (None, errno) when
    this kernel (EINVAL: no listener or no WAIT_KILLABLE_RECV; ENOSYS) or an outer
    listener (EBUSY) does not allow one; then nothing was installed."""
    buf = ctypes.create_string_buffer(prog, len(prog))

    class _Fprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    fprog = _Fprog(len(prog) // 8, ctypes.cast(buf, ctypes.c_void_p))
    flags = SECCOMP_FILTER_FLAG_NEW_LISTENER | SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV
    fd = int(_libc.syscall(SYS_SECCOMP, SECCOMP_SET_MODE_FILTER, flags, ctypes.byref(fprog)))
    if fd >= 0:
        return fd, 0
    err = ctypes.get_errno()
    if err not in (errno.EINVAL, errno.EBUSY, errno.ENOSYS):
        raise OSError(err, "installing the seccomp filter")
    return None, err


class Listener:
    """The supervisor's end: read notifications (the tracer thread only) and answer them
    (any thread: a deferred answer is sent from the asyncio loop thread that computed
    it, with no hand-over to the tracer thread). Answers after close() are dropped, so
    a late answer never lands on an fd number reused by something else."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        # Older kernels lack it: still correct, only the wake-ups cost more.
        with contextlib.suppress(OSError):
            fcntl.ioctl(fd, NOTIF_SET_FLAGS, USER_NOTIF_FD_SYNC_WAKE_UP)
        self.hung_up = False
        self._poll = select.poll()
        self._poll.register(fd, select.POLLIN)
        self._pbuf = bytearray(_RESP.size)  # the serving threads', under their lock
        self._lock = threading.Lock()  # close() vs answers from other threads
        self.closed = False

    def hung_up_now(self) -> bool:
        """No process uses the filter any more (POLLHUP): the program's tree is gone."""
        with self._lock:
            if self.closed:
                return True
            for _fd, events in self._poll.poll(0):
                if events & (select.POLLHUP | select.POLLERR):
                    self.hung_up = True
        return self.hung_up

    def wait_receive(self, buf: bytearray) -> Notification | None:
        """The next notification, waiting for one (a receiving thread, with a buffer of
        its own). None if it vanished before we took it, or the wait was interrupted
        (WAKE_SIGNAL: fcntl.ioctl does not retry on EINTR), or no process uses the
        filter any more (6.6+ kernels end the wait then)."""
        buf[:] = _ZEROS  # the kernel insists on a zeroed struct
        try:
            fcntl.ioctl(self.fd, NOTIF_RECV, buf, True)
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.EINTR, errno.EBADF):
                return None
            raise
        nid, pid, _flags, nr, arch, _ip, a0, a1, a2, a3, a4, a5 = _NOTIF.unpack(buf)
        return Notification(nid, pid, nr, arch, (a0, a1, a2, a3, a4, a5))

    def _ioctl(self, request: int, arg: bytearray) -> bool:
        with self._lock:
            if self.closed:
                return False  # the run is over: nobody to answer
            return self._unlocked_ioctl(request, arg)

    def _unlocked_ioctl(self, request: int, arg: bytearray) -> bool:
        try:
            fcntl.ioctl(self.fd, request, arg, True)
        except OSError as exc:
            # ENOENT: the thread is gone or was interrupted; EINPROGRESS: another thread
            # of ours answered it a moment ago.
            if exc.errno in (errno.ENOENT, errno.EINPROGRESS):
                return False
            raise
        return True

    def id_valid(self, nid: int) -> bool:
        """Whether the call behind `nid` still waits for us (not interrupted, not dead)."""
        try:
            return self._ioctl(NOTIF_ID_VALID, bytearray(struct.pack("<Q", nid)))
        except OSError:
            return False

    def _send(self, nid: int, val: int, error: int, flags: int) -> bool:
        return self._ioctl(NOTIF_SEND, bytearray(_RESP.pack(nid, val, error, flags)))

    def answer(self, nid: int, ret: int) -> bool:
        """The syscall returns `ret` (a -errno for errors) without running."""
        if ret < 0:
            return self._send(nid, 0, ret, 0)
        return self._send(nid, ret, 0, 0)

    def proceed_serving(self, nid: int) -> bool:
        """proceed() for the serving thread, which the owner stops before it closes the
        listener: no lock, a reused buffer."""
        _RESP.pack_into(self._pbuf, 0, nid, 0, 0, USER_NOTIF_FLAG_CONTINUE)
        return self._unlocked_ioctl(NOTIF_SEND, self._pbuf)

    def answer_serving(self, nid: int, ret: int) -> bool:
        """answer() for the serving thread (as proceed_serving)."""
        if ret < 0:
            _RESP.pack_into(self._pbuf, 0, nid, 0, ret, 0)
        else:
            _RESP.pack_into(self._pbuf, 0, nid, ret, 0, 0)
        return self._unlocked_ioctl(NOTIF_SEND, self._pbuf)

    def proceed(self, nid: int) -> bool:
        """The kernel runs the syscall as the program made it."""
        return self._ioctl(NOTIF_SEND, bytearray(_RESP.pack(nid, 0, 0, USER_NOTIF_FLAG_CONTINUE)))

    def answer_fd(self, nid: int, fd: int, cloexec: bool) -> bool:
        """Install our `fd` as the program's next free fd and return that number as the
        syscall's result (our fd stays ours: the caller closes it).

        Not with ADDFD_FLAG_SEND: the kernel marks the call answered before the program's
        thread installs the fd, and when our wait for that is cut short (a signal, or a
        ptrace stop of mirrord: a profiler, gdb -p, SIGSTOP) before it did, the fd is
        taken back but the answer stays: the program's call returns 0, a wrong fd. So the
        fd is added first (an interrupted add installs nothing and is simply made again),
        then the answer names it. Under the lock, no -ERESTARTSYS from the signal sweep
        comes in between, and the program's thread waits killably (WAIT_KILLABLE_RECV):
        only its death can end the call between the two, and the fd goes with it."""
        flags = os.O_CLOEXEC if cloexec else 0
        add = bytearray(_ADDFD.pack(nid, 0, fd, 0, flags))
        with self._lock:
            if self.closed:
                return False
            while True:
                try:
                    installed = fcntl.ioctl(self.fd, NOTIF_ADDFD, add, True)
                    break
                except InterruptedError:
                    continue
                except OSError as exc:
                    if exc.errno == errno.EMFILE:  # the program's fd table is full
                        return self._unlocked_ioctl(
                            NOTIF_SEND, bytearray(_RESP.pack(nid, 0, -errno.EMFILE, 0))
                        )
                    if exc.errno in (errno.ENOENT, errno.EINPROGRESS):
                        return False  # the call is gone (its thread died) or answered
                    raise
            return self._unlocked_ioctl(NOTIF_SEND, bytearray(_RESP.pack(nid, installed, 0, 0)))

    def close(self) -> None:
        with self._lock:
            if not self.closed:
                self.closed = True
                os.close(self.fd)
