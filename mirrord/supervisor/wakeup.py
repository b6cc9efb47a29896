"""How the tracer thread sleeps: on SIGCHLD (a tracee stopped or exited), on an
eventfd (an agent answer for a stopped tracee is ready) or on the seccomp listener (a
notification), whichever comes first.

SIGCHLD is blocked and read through a signalfd. It must be blocked in every thread of
mirrord, or the kernel may hand it to a thread that discards it (its default action is
to ignore); `block_sigchld()` is called on the main thread before any other thread
starts, and threads inherit the mask. A long select timeout is kept as a safety net.
"""

from __future__ import annotations

import ctypes
import os
import select
import signal
import threading

_libc = ctypes.CDLL(None, use_errno=True)
SFD_NONBLOCK = os.O_NONBLOCK
SFD_CLOEXEC = os.O_CLOEXEC
SIGINFO_SIZE = 128
SAFETY_TIMEOUT_S = 1.0


def block_sigchld() -> None:
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})


class Wakeup:
    def __init__(self) -> None:
        block_sigchld()  # at least this thread; see the module docstring for the others
        mask = ctypes.create_string_buffer(128)  # sigset_t
        bit = signal.SIGCHLD - 1
        mask[bit // 8] = bytes([1 << (bit % 8)])
        fd = _libc.signalfd(-1, mask, SFD_NONBLOCK | SFD_CLOEXEC)
        if fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"signalfd: {os.strerror(err)}")
        self.sigfd: int = fd
        self.evfd: int = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._fds = [self.sigfd, self.evfd]
        self._hangup: list[int] = []
        self._lock = threading.Lock()
        self._closed = False
        self.maybe_stopped = True

    def watch(self, fd: int, *, hangup_only: bool = False) -> None:
        """Also wake when `fd` is readable (the seccomp listener; the caller reads it), or
        with `hangup_only` only when it hangs up (another thread reads it)."""
        if hangup_only:
            self._hangup.append(fd)
        else:
            self._fds.append(fd)

    def unwatch(self, fd: int) -> None:
        if fd in self._fds:
            self._fds.remove(fd)
        if fd in self._hangup:
            self._hangup.remove(fd)

    def wait(self, timeout: float | None = None) -> bool:
        """Sleep until a SIGCHLD, a poke or a watched fd (at most `timeout`, by default a
        safety net); True if poked (answers are waiting)."""
        poller = select.poll()
        for fd in self._fds:
            poller.register(fd, select.POLLIN)
        for fd in self._hangup:
            poller.register(fd, 0)  # POLLHUP is always reported
        wait_s = SAFETY_TIMEOUT_S if timeout is None else timeout
        ready = [fd for fd, _ev in poller.poll(wait_s * 1000)]
        # Only a watched fd (a seccomp notification): no tracee changed state, so the
        # caller may skip its waitpid round. A timeout counts as "maybe": look anyway.
        self.maybe_stopped = not ready or self.sigfd in ready
        poked = False
        if self.sigfd in ready:
            try:
                while os.read(self.sigfd, SIGINFO_SIZE * 16):
                    pass
            except BlockingIOError:
                pass
        if self.evfd in ready:
            try:
                os.eventfd_read(self.evfd)
                poked = True
            except BlockingIOError:
                pass
        return poked

    def poke(self) -> None:
        """Wake the tracer thread (from any thread). After close() it does nothing: a
        late answer must not write to an fd number something else may own by then."""
        with self._lock:
            if not self._closed:
                os.eventfd_write(self.evfd, 1)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            os.close(self.sigfd)
            os.close(self.evfd)
