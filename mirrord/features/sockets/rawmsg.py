"""Socket calls the supervisor performs for the program (notify engine) on its duplicate
of the program's socket, with raw sockaddr and control bytes, as the kernel hands them
to the program: accept4, sendmsg, recvmsg. Python's socket methods parse addresses and
ancillary data, which would lose what the program must see byte for byte.

Every call is made with MSG_DONTWAIT where it takes flags (the duplicate shares the
program's O_NONBLOCK, which we must never change); the caller waits for readiness.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import socket
import struct
import termios
from dataclasses import dataclass

SOCKADDR_MAX = 128
MSG_DONTWAIT = socket.MSG_DONTWAIT
_libc = ctypes.CDLL(None, use_errno=True)


class _IoVec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


class _MsgHdr(ctypes.Structure):
    _fields_ = [
        ("name", ctypes.c_void_p),
        ("namelen", ctypes.c_uint32),
        ("iov", ctypes.POINTER(_IoVec)),
        ("iovlen", ctypes.c_size_t),
        ("control", ctypes.c_void_p),
        ("controllen", ctypes.c_size_t),
        ("flags", ctypes.c_int),
    ]


_libc.recvmsg.restype = ctypes.c_ssize_t
_libc.recvmsg.argtypes = [ctypes.c_int, ctypes.POINTER(_MsgHdr), ctypes.c_int]
_libc.sendmsg.restype = ctypes.c_ssize_t
_libc.sendmsg.argtypes = [ctypes.c_int, ctypes.POINTER(_MsgHdr), ctypes.c_int]


def _fail() -> OSError:
    err = ctypes.get_errno()
    return OSError(err, os.strerror(err))


@dataclass(frozen=True)
class Datagram:
    """What one recvmsg returned: the result (the full length with MSG_TRUNC), the bytes
    that fit, the source's raw sockaddr, the control bytes and the output flags."""

    ret: int
    data: bytes
    name: bytes
    control: bytes
    flags: int


def recvmsg(fd: int, size: int, control_size: int, flags: int) -> Datagram:
    """recvmsg(2) into buffers of these sizes. Raises BlockingIOError when nothing is
    queued (MSG_DONTWAIT is added)."""
    buf = ctypes.create_string_buffer(max(size, 1))
    name = ctypes.create_string_buffer(SOCKADDR_MAX)
    ctrl = ctypes.create_string_buffer(max(control_size, 1))
    iov = _IoVec(ctypes.cast(buf, ctypes.c_void_p), size)
    hdr = _MsgHdr(
        ctypes.cast(name, ctypes.c_void_p),
        SOCKADDR_MAX,
        ctypes.pointer(iov),
        1,
        ctypes.cast(ctrl, ctypes.c_void_p) if control_size else None,
        control_size,
        0,
    )
    n = int(_libc.recvmsg(fd, ctypes.byref(hdr), flags | MSG_DONTWAIT))
    if n < 0:
        raise _fail()
    got = min(n, size)
    return Datagram(
        n,
        buf.raw[:got],
        name.raw[: min(hdr.namelen, SOCKADDR_MAX)],
        ctrl.raw[: min(hdr.controllen, control_size)],
        hdr.flags,
    )


def sendmsg(fd: int, data: bytes, name: bytes | None, control: bytes, flags: int) -> int:
    """sendmsg(2) of one buffer to `name` (None: the connected peer). Raises
    BlockingIOError when the send buffer is full (MSG_DONTWAIT is added)."""
    buf = ctypes.create_string_buffer(data, max(len(data), 1))
    iov = _IoVec(ctypes.cast(buf, ctypes.c_void_p), len(data))
    raw_name = ctypes.create_string_buffer(name, len(name)) if name else None
    ctrl = ctypes.create_string_buffer(control, len(control)) if control else None
    hdr = _MsgHdr(
        ctypes.cast(raw_name, ctypes.c_void_p) if raw_name is not None else None,
        len(name) if name else 0,
        ctypes.pointer(iov),
        1,
        ctypes.cast(ctrl, ctypes.c_void_p) if ctrl is not None else None,
        len(control),
        0,
    )
    n = int(_libc.sendmsg(fd, ctypes.byref(hdr), flags | MSG_DONTWAIT | socket.MSG_NOSIGNAL))
    if n < 0:
        raise _fail()
    return n


def accept(fd: int) -> tuple[int, bytes]:
    """accept4(2) on our duplicate of a listener: (our fd of the connection, close-on-exec;
    the peer's raw sockaddr). BlockingIOError if none is queued on a non-blocking one."""
    name = ctypes.create_string_buffer(SOCKADDR_MAX)
    size = ctypes.c_uint32(SOCKADDR_MAX)
    conn = int(_libc.accept4(fd, name, ctypes.byref(size), socket.SOCK_CLOEXEC))
    if conn < 0:
        raise _fail()
    return conn, name.raw[: min(size.value, SOCKADDR_MAX)]


def nonblocking(fd: int) -> bool:
    """The open file's O_NONBLOCK: the program's, shared by our duplicate."""
    return bool(fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_NONBLOCK)


def set_nonblocking(fd: int, on: bool = True) -> None:
    """O_NONBLOCK on or off, in one syscall (FIONBIO; fcntl takes two)."""
    fcntl.ioctl(fd, termios.FIONBIO, _ON if on else _OFF)


_ON = struct.pack("i", 1)
_OFF = struct.pack("i", 0)


def rcvtimeo(sock: socket.socket) -> float | None:
    """SO_RCVTIMEO in seconds (None: wait forever), which bounds accept and recv."""
    return _timeo(sock, socket.SO_RCVTIMEO)


def sndtimeo(sock: socket.socket) -> float | None:
    """SO_SNDTIMEO in seconds (None: wait forever)."""
    return _timeo(sock, socket.SO_SNDTIMEO)


def _timeo(sock: socket.socket, option: int) -> float | None:
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, option, 16)
    except OSError:
        return None
    sec, usec = struct.unpack("<qq", raw)
    return sec + usec / 1e6 if sec or usec else None
