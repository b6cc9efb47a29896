"""One proxied TCP connection: connect from the pod, then relay bytes both ways.

Stream protocol (net.proto): the client's first message is `connect`; the answer is
`connected` (with the pod-side local address) or `error` (the errno the pod's kernel gave:
ECONNREFUSED, ETIMEDOUT, EHOSTUNREACH, ENETUNREACH…). Then `data` both ways, and `eof`
for a half-close in either direction. The stream ends when both directions are done or
either side fails; the pod socket is always closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
from collections.abc import AsyncIterator

from mirrord.agent.net.sockets import from_sockaddr, pod_socket, to_sockaddr
from mirrord.agent.session import AgentSession
from mirrord.v1 import net_pb2

log = logging.getLogger(__name__)

CHUNK = 256 * 1024  # big reads: fewer gRPC messages for bulk transfers


async def relay_tcp(
    session: AgentSession, requests: AsyncIterator[net_pb2.TcpClientMessage]
) -> AsyncIterator[net_pb2.TcpServerMessage]:
    try:
        first = await anext(requests)
    except StopAsyncIteration:
        return
    if first.WhichOneof("msg") != "connect":
        yield net_pb2.TcpServerMessage(error=errno.EINVAL)
        return
    try:
        family, addr = to_sockaddr(first.connect.remote)
    except ValueError:
        yield net_pb2.TcpServerMessage(error=errno.EINVAL)
        return
    sock = await pod_socket(session, family, socket.SOCK_STREAM)
    loop = asyncio.get_running_loop()
    uploader: asyncio.Task[None] | None = None
    try:
        try:
            # No timeout of our own: the pod's kernel decides (tcp_syn_retries), as it
            # would for a program running there.
            await loop.sock_connect(sock, addr)
        except OSError as e:
            yield net_pb2.TcpServerMessage(error=e.errno or errno.ECONNREFUSED)
            return
        yield net_pb2.TcpServerMessage(
            connected=net_pb2.TcpConnected(local=from_sockaddr(sock.getsockname()))
        )
        uploader = asyncio.create_task(_upload(sock, requests))
        while True:
            try:
                data = await loop.sock_recv(sock, CHUNK)
            except OSError as e:
                log.debug("tcp %s: recv failed: %s", addr, e)
                yield net_pb2.TcpServerMessage(error=e.errno or errno.ECONNRESET)
                return
            if not data:
                yield net_pb2.TcpServerMessage(eof=True)
                break
            yield net_pb2.TcpServerMessage(data=data)
        # The remote is done sending; keep forwarding the program's bytes until it is too.
        await uploader
    finally:
        if uploader is not None and not uploader.done():
            uploader.cancel()
            with contextlib.suppress(BaseException):
                await uploader
        sock.close()


async def _upload(sock: socket.socket, requests: AsyncIterator[net_pb2.TcpClientMessage]) -> None:
    loop = asyncio.get_running_loop()
    try:
        async for msg in requests:
            kind = msg.WhichOneof("msg")
            if kind == "data":
                await loop.sock_sendall(sock, msg.data)
            elif kind == "eof":
                sock.shutdown(socket.SHUT_WR)
                return
    except OSError as e:
        log.debug("tcp upload failed: %s", e)
