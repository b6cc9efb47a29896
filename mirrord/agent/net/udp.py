"""One UDP flow: a connected UDP socket in the pod, datagrams relayed both ways.

The socket is connected to the remote, so the pod's kernel only delivers datagrams from
it and reports ICMP errors (ECONNREFUSED) on it; those are sent as `error` and the flow
goes on, as a connected UDP socket would.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import socket
from collections.abc import AsyncIterator

from mirrord.agent.net.sockets import close_watched, from_sockaddr, pod_socket, to_sockaddr
from mirrord.agent.session import AgentSession
from mirrord.v1 import net_pb2

MAX_DATAGRAM = 65536


async def relay_udp(
    session: AgentSession, requests: AsyncIterator[net_pb2.UdpClientMessage]
) -> AsyncIterator[net_pb2.UdpServerMessage]:
    try:
        first = await anext(requests)
    except StopAsyncIteration:
        return
    if first.WhichOneof("msg") != "open":
        yield net_pb2.UdpServerMessage(error=errno.EINVAL)
        return
    try:
        family, addr = to_sockaddr(first.open.remote)
    except ValueError:
        yield net_pb2.UdpServerMessage(error=errno.EINVAL)
        return
    sock = await pod_socket(session, family, socket.SOCK_DGRAM)
    loop = asyncio.get_running_loop()
    sender: asyncio.Task[None] | None = None
    receiver: asyncio.Future[bytes] | None = None
    try:
        try:
            await loop.sock_connect(sock, addr)
        except OSError as e:
            yield net_pb2.UdpServerMessage(error=e.errno or errno.ENETUNREACH)
            return
        yield net_pb2.UdpServerMessage(opened=from_sockaddr(sock.getsockname()))
        sender = asyncio.create_task(_send(sock, requests))
        receiver = asyncio.ensure_future(loop.sock_recv(sock, MAX_DATAGRAM))
        while True:
            done, _ = await asyncio.wait({sender, receiver}, return_when=asyncio.FIRST_COMPLETED)
            if receiver in done:
                try:
                    yield net_pb2.UdpServerMessage(datagram=receiver.result())
                except OSError as e:
                    yield net_pb2.UdpServerMessage(error=e.errno or errno.ECONNREFUSED)
                receiver = asyncio.ensure_future(loop.sock_recv(sock, MAX_DATAGRAM))
            if sender in done:
                return
    finally:
        # The flow ends with a receive pending, and also by cancellation (mirrord ended an
        # idle flow, the session ended): both must stop watching the socket before it closes.
        if receiver is not None:
            receiver.cancel()
        if sender is not None and not sender.done():
            sender.cancel()
            with contextlib.suppress(BaseException):
                await sender
        close_watched(sock)


async def _send(sock: socket.socket, requests: AsyncIterator[net_pb2.UdpClientMessage]) -> None:
    loop = asyncio.get_running_loop()
    async for msg in requests:
        if msg.WhichOneof("msg") == "datagram":
            # A refused earlier datagram surfaces here too; UDP just drops and goes on.
            with contextlib.suppress(OSError):
                await loop.sock_sendall(sock, msg.datagram)
