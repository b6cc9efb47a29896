"""The client side of direct connections (agent/net/direct.py): the program's socket,
through the supervisor's duplicate of it, is connected to the agent's listener on the
shared loopback and sends its request; the agent's reply decides the program's connect.

Runs on the proxy's loop while the program's thread waits inside connect(). The
duplicate shares the program's file description, so its blocking mode is the program's:
everything here uses MSG_DONTWAIT and the loop's readiness callbacks, and leaves the
flags alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import errno
import os
import socket

from mirrord.wire.direct import (
    REPLY_SIZE,
    DirectReply,
    DirectRequest,
    DirectWireError,
    decode_reply,
    encode_request,
)

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_UNSPEC = ctypes.create_string_buffer(16)  # a sockaddr with sa_family AF_UNSPEC (0)


class DirectConnector:
    def __init__(self, v4_port: int, v6_port: int, secret: bytes) -> None:
        self.ports = {"v4": v4_port, "v6": v6_port}
        self.secret = secret

    def port(self, kind: str) -> int:
        """The agent's listener for interceptors of this kind ('v4'|'v6'); 0: none."""
        return self.ports.get(kind, 0)

    async def connect(
        self, sock: socket.socket, listener: tuple[str, int], ip: bytes, port: int
    ) -> DirectReply:
        """Connect `sock` to the agent's `listener` and have the agent connect to ip:port
        from the pod. The reply on success; OSError with the pod's errno on failure, with
        `sock` left unconnected again (so the caller can still give the kernel's own
        ECONNREFUSED), or ENETUNREACH when the agent cannot be reached."""
        loop = asyncio.get_running_loop()
        err = sock.connect_ex(listener)
        if err in (errno.EINPROGRESS, errno.EAGAIN):  # the program's socket is non-blocking
            await _ready(loop, sock, write=True)
            err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err == errno.ECONNREFUSED:
            raise OSError(errno.ENETUNREACH, "the agent's listener is gone")
        if err:  # the program's own mistake (EISCONN, EALREADY…): its connect's answer
            raise OSError(err, os.strerror(err))
        try:
            request = encode_request(DirectRequest(self.secret, ip, port))
            if sock.send(request, socket.MSG_DONTWAIT) != len(request):
                raise OSError(errno.EIO, "short write on a new connection")
            reply = decode_reply(await _recv_exactly(loop, sock, REPLY_SIZE))
        except (OSError, DirectWireError) as e:
            disconnect(sock)
            raise OSError(errno.ENETUNREACH, f"the agent's direct connection: {e}") from None
        if reply.errno:
            disconnect(sock)
            raise OSError(reply.errno, "connect from the pod failed")
        return reply


def disconnect(sock: socket.socket) -> None:
    """connect(AF_UNSPEC): the socket is unconnected again and may connect elsewhere; the
    error that leaves pending (ECONNRESET) is read away so the program never sees it."""
    _libc.connect(sock.fileno(), _UNSPEC, ctypes.c_uint32(16))
    with contextlib.suppress(OSError):
        sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)


async def _ready(loop: asyncio.AbstractEventLoop, sock: socket.socket, write: bool) -> None:
    done: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not done.done():
            done.set_result(None)

    fd = sock.fileno()
    if write:
        loop.add_writer(fd, wake)
    else:
        loop.add_reader(fd, wake)
    try:
        await done
    finally:
        # Before the duplicate is closed: epoll would keep watching the program's socket.
        (loop.remove_writer if write else loop.remove_reader)(fd)


async def _recv_exactly(loop: asyncio.AbstractEventLoop, sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        try:
            more = sock.recv(size - len(data), socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            await _ready(loop, sock, write=False)
            continue
        if not more:
            raise OSError(errno.ECONNRESET, "the agent closed the connection")
        data += more
    return data
