"""Closing a connection with a reset, for ours that nobody should take for answered."""

from __future__ import annotations

import contextlib
import socket
import struct

_LINGER_RESET = struct.pack("ii", 1, 0)


def reset(sock: socket.socket) -> None:
    """Close with an RST: the peer's next read gets ECONNRESET, its next write EPIPE."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
    sock.close()


def reset_fd(fd: int) -> None:
    """reset() for a bare fd of ours (closed either way; a negative one is none)."""
    if fd < 0:
        return
    try:
        sock = socket.socket(fileno=fd)
    except OSError:
        return  # not a socket any more, or closed already
    reset(sock)
