"""Look at a tracee's socket from the supervisor: pidfd_getfd(2) gives us a duplicate of
its file descriptor (same open file description), so plain getsockopt/getsockname answer
for it with no syscall injected into the tracee, and a connect() made on it connects the
program's socket. The duplicate is closed once used.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass

from mirrord.supervisor.pidfd import take_fd


def borrow(tid: int, fd: int) -> socket.socket | None:
    """The tracee's fd as a socket object of ours (the caller closes it), or None if it
    is not a socket. Never change its O_NONBLOCK flag: the program shares it."""
    try:
        dup = take_fd(tid, fd)
    except OSError as e:
        if e.errno == errno.EBADF:
            return None
        raise
    try:
        return socket.socket(fileno=dup)
    except OSError:
        os.close(dup)
        return None


def borrow_fd(tid: int, fd: int) -> int:
    """The tracee's fd as a plain fd of ours (the caller closes it), whatever it is:
    cheaper than a socket object where raw calls do (raw_name…). OSError(EBADF) when the
    thread has no such fd."""
    return take_fd(tid, fd)


def try_borrow(tid: int, fd: int) -> socket.socket | None:
    """borrow(), or None also when the fd cannot be copied (the thread is gone…): then
    the program's call runs as it is and the kernel answers it."""
    try:
        return borrow(tid, fd)
    except OSError:
        return None


@contextlib.contextmanager
def borrowed_socket(tid: int, fd: int) -> Iterator[socket.socket | None]:
    """The tracee's fd as a socket object of ours, or None if it is not a socket."""
    sock = borrow(tid, fd)
    try:
        yield sock
    finally:
        if sock is not None:
            sock.close()  # our duplicate only; the program's fd is untouched


@dataclass(frozen=True)
class SocketInfo:
    kind: int  # SOCK_STREAM, SOCK_DGRAM…
    family: int
    proto: int = 0  # IPPROTO_TCP, IPPROTO_UDP, IPPROTO_UDPLITE, IPPROTO_SCTP…

    @property
    def relayed(self) -> str | None:
        """'tcp'/'udp' for the protocols mirrord relays; None for any other (UDP-Lite,
        SCTP, raw…), which must run as it is."""
        if self.kind == socket.SOCK_STREAM and self.proto in TCP_PROTOS:
            return "tcp"
        if self.kind == socket.SOCK_DGRAM and self.proto in UDP_PROTOS:
            return "udp"
        return None


IPPROTO_MPTCP = 262  # TCP-compatible: falls back to TCP on our loopback relay
TCP_PROTOS = (0, socket.IPPROTO_TCP, IPPROTO_MPTCP)
UDP_PROTOS = (0, socket.IPPROTO_UDP)


def info_of(sock: socket.socket) -> SocketInfo:
    # socket(fileno=) read SO_TYPE, SO_DOMAIN and SO_PROTOCOL already (a connect's hot
    # path: no second round of getsockopt).
    return SocketInfo(int(sock.type), int(sock.family), int(sock.proto))


def socket_info(tid: int, fd: int) -> SocketInfo | None:
    with borrowed_socket(tid, fd) as sock:
        return None if sock is None else info_of(sock)


_SOCKADDR_STORAGE = 128
_libc = ctypes.CDLL(None, use_errno=True)


def raw_name(sock: socket.socket | int, peer: bool) -> bytes:
    """getpeername/getsockname of our duplicate (a socket object or a plain fd) as the
    kernel's raw sockaddr bytes (the length the kernel reports, which may exceed 128 only
    for odd families: truncated)."""
    buf = ctypes.create_string_buffer(_SOCKADDR_STORAGE)
    size = ctypes.c_uint32(_SOCKADDR_STORAGE)
    call = _libc.getpeername if peer else _libc.getsockname
    if call(sock if isinstance(sock, int) else sock.fileno(), buf, ctypes.byref(size)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return buf.raw[: min(size.value, _SOCKADDR_STORAGE)]


def local_port(tid: int, fd: int) -> int | None:
    """The tracee socket's own port (after a connect), or None."""
    with borrowed_socket(tid, fd) as sock:
        if sock is None:
            return None
        name = sock.getsockname()
        return int(name[1]) if isinstance(name, tuple) else None
