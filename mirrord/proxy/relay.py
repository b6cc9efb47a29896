"""Relay one local TCP socket over one `Net.Tcp` stream (both directions, half-closes).

Used for the program's intercepted connections and for port-forward. When the stream
fails (the agent is gone), the local socket is reset (SO_LINGER 0), so the program sees
ECONNRESET/EPIPE at once instead of waiting forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
import struct
from typing import TYPE_CHECKING, TypeAlias

import grpc
import grpc.aio
from grpc.aio import EOF  # type: ignore[attr-defined]  # missing from grpc-stubs

from mirrord.v1 import net_pb2, net_pb2_grpc

if TYPE_CHECKING:
    TcpCall: TypeAlias = grpc.aio.StreamStreamCall[
        net_pb2.TcpClientMessage, net_pb2.TcpServerMessage
    ]

log = logging.getLogger("mirrord.proxy")

CHUNK = 256 * 1024


def reset(sock: socket.socket) -> None:
    """Close with an RST: the peer's next read gets ECONNRESET, its next write EPIPE."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


async def open_stream(
    stub: net_pb2_grpc.NetStub,
    metadata: tuple[tuple[str, str], ...],
    ip: bytes,
    port: int,
) -> tuple[TcpCall, net_pb2.TcpConnected]:
    """Have the agent connect to ip:port from the pod. OSError(errno) on failure, with
    the pod's errno (ENETUNREACH when the agent cannot be reached at all)."""
    call: TcpCall = stub.Tcp(metadata=metadata)  # type: ignore[call-arg,assignment]
    try:
        await call.write(
            net_pb2.TcpClientMessage(
                connect=net_pb2.TcpConnect(remote=net_pb2.SocketAddress(ip=ip, port=port))
            )
        )
        first = await call.read()
    except grpc.aio.AioRpcError as e:
        call.cancel()
        raise OSError(errno.ENETUNREACH, f"agent: {e.code().name}: {e.details()}") from None
    if first is EOF or not isinstance(first, net_pb2.TcpServerMessage):
        call.cancel()
        raise OSError(errno.ECONNREFUSED, "agent ended the stream")
    kind = first.WhichOneof("msg")
    if kind != "connected":
        call.cancel()
        code = first.error if kind == "error" and first.error > 0 else errno.ECONNREFUSED
        raise OSError(code, "connect from the pod failed")
    return call, first.connected


async def relay(sock: socket.socket, call: TcpCall) -> None:
    """Pump bytes until both directions are done; always closes sock and ends the call."""
    loop = asyncio.get_running_loop()
    sock.setblocking(False)
    upload = asyncio.create_task(_upload(loop, sock, call))
    failed = False
    try:
        while True:
            msg = await call.read()
            if msg is EOF or not isinstance(msg, net_pb2.TcpServerMessage):
                break
            kind = msg.WhichOneof("msg")
            if kind == "data":
                await loop.sock_sendall(sock, msg.data)
            elif kind == "eof":
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_WR)
            elif kind == "error":
                failed = True
                break
        if not failed:
            await upload
    except grpc.aio.AioRpcError as e:
        log.debug("tcp stream failed: %s", e.code().name)
        failed = True
    except OSError as e:
        log.debug("local socket failed: %s", e)
        failed = True
    finally:
        if not upload.done():
            upload.cancel()
            with contextlib.suppress(BaseException):
                await upload
        if failed:
            reset(sock)
            call.cancel()
        else:
            sock.close()


async def _upload(loop: asyncio.AbstractEventLoop, sock: socket.socket, call: TcpCall) -> None:
    try:
        while True:
            data = await loop.sock_recv(sock, CHUNK)
            if not data:
                await call.write(net_pb2.TcpClientMessage(eof=True))
                return
            await call.write(net_pb2.TcpClientMessage(data=data))
    except OSError:
        call.cancel()  # the program reset its socket: drop the pod's connection too
    except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
        pass  # the read side reports the failure
