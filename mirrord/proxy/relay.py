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

from mirrord.netwire import (
    CLIENT_DATA_KEY,
    TCP_METHOD,
    deserialize_server,
    encode_data,
    serialize_client,
)
from mirrord.v1 import net_pb2

if TYPE_CHECKING:
    # `data` goes as encoded bytes and comes back as a payload view (mirrord/netwire.py).
    TcpCall: TypeAlias = grpc.aio.StreamStreamCall[
        net_pb2.TcpClientMessage | bytes, net_pb2.TcpServerMessage | memoryview
    ]
    TcpMethod: TypeAlias = grpc.aio.StreamStreamMultiCallable[
        net_pb2.TcpClientMessage | bytes, net_pb2.TcpServerMessage | memoryview
    ]

log = logging.getLogger("mirrord.proxy")

CHUNK = 1024 * 1024  # big reads: fewer gRPC messages (each has a fixed cost) for bulk


def reset(sock: socket.socket) -> None:
    """Close with an RST: the peer's next read gets ECONNRESET, its next write EPIPE."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def tcp_method(channel: grpc.aio.Channel) -> TcpMethod:
    """`Net.Tcp` with the `data` fast path of mirrord/netwire.py."""
    return channel.stream_stream(
        TCP_METHOD,
        request_serializer=serialize_client,
        response_deserializer=deserialize_server,
    )


def new_call(method: TcpMethod, metadata: tuple[tuple[str, str], ...]) -> TcpCall:
    """A new `Net.Tcp` stream (gRPC starts it at once; the agent's handler then waits
    for the `connect` message)."""
    return method(metadata=metadata)  # type: ignore[call-arg]  # stubs: iterator is optional


async def open_stream(
    method: TcpMethod,
    metadata: tuple[tuple[str, str], ...],
    ip: bytes,
    port: int,
    call: TcpCall | None = None,
    unix_path: str = "",
    reuse: bool = False,
) -> tuple[TcpCall, net_pb2.TcpConnected]:
    """Have the agent connect to ip:port (or `unix_path`) from the pod, on `call` (an
    idle stream kept after a connection with `reuse`), else on a new stream. OSError(errno)
    on failure, with the pod's errno (ENETUNREACH when the agent cannot be reached)."""
    if call is None:
        call = new_call(method, metadata)
    try:
        await call.write(
            net_pb2.TcpClientMessage(
                connect=net_pb2.TcpConnect(
                    remote=net_pb2.SocketAddress(ip=ip, port=port),
                    unix_path=unix_path,
                    reuse=reuse,
                )
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


async def relay(sock: socket.socket, call: TcpCall) -> bool:
    """Pump bytes until both directions are done; always closes sock. True when the agent
    said `done` (the stream was opened with reuse and may carry another connection);
    otherwise the call is over."""
    loop = asyncio.get_running_loop()
    sock.setblocking(False)
    upload = asyncio.create_task(_upload(loop, sock, call))
    failed = done = False
    try:
        while True:
            msg = await call.read()
            if isinstance(msg, memoryview):
                await loop.sock_sendall(sock, msg)
                continue
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
            elif kind == "done":
                done = True
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
    return done and not failed


async def _upload(loop: asyncio.AbstractEventLoop, sock: socket.socket, call: TcpCall) -> None:
    try:
        while True:
            data = await loop.sock_recv(sock, CHUNK)
            if not data:
                await call.write(net_pb2.TcpClientMessage(eof=True))
                return
            await call.write(encode_data(CLIENT_DATA_KEY, data))
    except OSError:
        call.cancel()  # the program reset its socket: drop the pod's connection too
    except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
        pass  # the read side reports the failure
