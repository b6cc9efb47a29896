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
from typing import TYPE_CHECKING, TypeAlias

import grpc
import grpc.aio
from grpc.aio import EOF  # type: ignore[attr-defined]  # missing from grpc-stubs

from mirrord.features.sockets.reset import reset
from mirrord.v1 import net_pb2
from mirrord.wire.net import (
    CLIENT_DATA_KEY,
    TCP_METHOD,
    deserialize_server,
    encode_data,
    serialize_client,
)

if TYPE_CHECKING:
    # `data` goes as encoded bytes and comes back as a payload view (mirrord/wire/net.py).
    TcpCall: TypeAlias = grpc.aio.StreamStreamCall[
        net_pb2.TcpClientMessage | bytes, net_pb2.TcpServerMessage | memoryview
    ]
    TcpMethod: TypeAlias = grpc.aio.StreamStreamMultiCallable[
        net_pb2.TcpClientMessage | bytes, net_pb2.TcpServerMessage | memoryview
    ]

log = logging.getLogger("mirrord.features.outgoing.proxy")

CHUNK = 1024 * 1024  # big reads: fewer gRPC messages (each has a fixed cost) for bulk


def tcp_method(channel: grpc.aio.Channel) -> TcpMethod:
    """`Net.Tcp` with the `data` fast path of mirrord/wire/net.py."""
    return channel.stream_stream(
        TCP_METHOD,
        request_serializer=serialize_client,
        response_deserializer=deserialize_server,
    )


def new_call(method: TcpMethod, metadata: tuple[tuple[str, str], ...]) -> TcpCall:
    """A new `Net.Tcp` stream (gRPC starts it at once; the agent's handler then waits
    for the `connect` message)."""
    return method(metadata=metadata)  # type: ignore[call-arg]  # stubs: iterator is optional


class _StreamGone(Exception):
    """An idle stream the agent had ended: nothing was tried on it."""


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
    on failure, with the pod's errno (ENETUNREACH when the agent cannot be reached).

    With `reuse` the stream is pipelined (TcpConnect.pipelined): relay() gives it back
    without waiting for `done`, so an idle one may turn out to be ended by the agent
    (its last connection did not end cleanly there); then a new stream is used."""
    connect = net_pb2.TcpClientMessage(
        connect=net_pb2.TcpConnect(
            remote=net_pb2.SocketAddress(ip=ip, port=port),
            unix_path=unix_path,
            reuse=reuse,
            pipelined=reuse,
            data_eof=True,
        )
    )
    if call is not None:
        try:
            return await _connect_on(call, connect, reused=True)
        except _StreamGone:
            pass
    return await _connect_on(new_call(method, metadata), connect, reused=False)


async def _connect_on(
    call: TcpCall, connect: net_pb2.TcpClientMessage, reused: bool
) -> tuple[TcpCall, net_pb2.TcpConnected]:
    try:
        await call.write(connect)
        first = await call.read()
        if isinstance(first, net_pb2.TcpServerMessage) and first.WhichOneof("msg") == "done":
            first = await call.read()  # from an agent that does not pipeline: the last one's
    except (grpc.aio.AioRpcError, asyncio.InvalidStateError) as e:
        call.cancel()
        if reused:
            raise _StreamGone from None
        if isinstance(e, grpc.aio.AioRpcError):
            raise OSError(errno.ENETUNREACH, f"agent: {e.code().name}: {e.details()}") from None
        raise OSError(errno.ENETUNREACH, "agent: the stream is over") from None
    if first is EOF or not isinstance(first, net_pb2.TcpServerMessage):
        call.cancel()
        if reused and first is EOF:
            raise _StreamGone
        raise OSError(errno.ECONNREFUSED, "agent ended the stream")
    kind = first.WhichOneof("msg")
    if kind != "connected":
        call.cancel()
        code = first.error if kind == "error" and first.error > 0 else errno.ECONNREFUSED
        raise OSError(code, "connect from the pod failed")
    return call, first.connected


async def relay(sock: socket.socket, call: TcpCall, pipelined: bool = False) -> bool:
    """Pump bytes until both directions are done; always closes sock. True when the
    stream may carry another connection: the agent said `done` (opened with reuse), or,
    `pipelined`, both directions ended with an eof; otherwise the call is over."""
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
            eof = kind == "eof"
            if kind == "data":
                await loop.sock_sendall(sock, msg.data)
                eof = msg.then_eof
            if eof:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_WR)
                if pipelined:
                    # Nothing more comes for this connection: what follows on the stream
                    # is the answer to the next connect.
                    done = True
                    break
            elif kind == "error":
                failed = True
                break
            elif kind == "done":
                done = True
                break
        if not failed:
            # Pipelined, the stream is reusable only once our eof is sent too.
            done = await upload and done if pipelined else done
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


async def _upload(loop: asyncio.AbstractEventLoop, sock: socket.socket, call: TcpCall) -> bool:
    """Forward the program's bytes; True once they ended with an `eof` message."""
    try:
        while True:
            data = await loop.sock_recv(sock, CHUNK)
            if not data:
                await call.write(net_pb2.TcpClientMessage(eof=True))
                return True
            await call.write(encode_data(CLIENT_DATA_KEY, data))
    except OSError:
        call.cancel()  # the program reset its socket: drop the pod's connection too
    except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
        pass  # the read side reports the failure
    return False
