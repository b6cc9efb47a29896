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
import os
import socket
from collections.abc import AsyncIterator

from mirrord.agent.net.sockets import from_sockaddr, pod_socket, to_sockaddr
from mirrord.agent.session import AgentSession
from mirrord.netwire import SERVER_DATA_KEY, encode_data
from mirrord.v1 import net_pb2

# What the stream carries (mirrord/netwire.py): `data` as a payload view / encoded bytes.
Request = net_pb2.TcpClientMessage | memoryview
Reply = net_pb2.TcpServerMessage | bytes

log = logging.getLogger(__name__)

CHUNK = 1024 * 1024  # big reads: fewer gRPC messages (each has a fixed cost) for bulk


async def relay_tcp(
    session: AgentSession, requests: AsyncIterator[Request]
) -> AsyncIterator[Reply]:
    """Connections one after the other on one stream: the next only when the client asked
    for reuse and the last ended cleanly (then `done` tells it to send a `connect`)."""
    while True:
        outcome = _Outcome()
        async for reply in _one_connection(session, requests, outcome):
            yield reply
        if not (outcome.clean and outcome.reuse):
            return
        yield net_pb2.TcpServerMessage(done=True)


class _Outcome:
    """What `_one_connection` reports (an async generator cannot return a value)."""

    def __init__(self) -> None:
        self.reuse = False  # the client asked to keep the stream (TcpConnect.reuse)
        self.clean = False  # both directions ended with an eof, the pod socket is closed


async def _one_connection(
    session: AgentSession, requests: AsyncIterator[Request], outcome: _Outcome
) -> AsyncIterator[Reply]:
    # The client opens streams ahead of use and reuses them: make the likely (IPv4) socket
    # on the namespace worker while waiting, so a connect does not wait for that hop.
    ahead = asyncio.ensure_future(pod_socket(session, socket.AF_INET, socket.SOCK_STREAM))
    used = False
    try:
        first = await anext(requests)
        if isinstance(first, memoryview) or first.WhichOneof("msg") != "connect":
            yield net_pb2.TcpServerMessage(error=errno.EINVAL)
            return
        outcome.reuse = first.connect.reuse
        if first.connect.unix_path:
            used = True
            _discard(ahead)
            try:
                sock = await session.worker.run(_connect_unix, session.pid, first.connect.unix_path)
            except OSError as e:
                yield net_pb2.TcpServerMessage(error=e.errno or errno.ECONNREFUSED)
                return
            async for reply in _relay_connected(sock, requests, outcome):
                yield reply
            return
        try:
            family, addr = to_sockaddr(first.connect.remote)
        except ValueError:
            yield net_pb2.TcpServerMessage(error=errno.EINVAL)
            return
        if family == socket.AF_INET:
            used = True
            sock = await ahead
        else:
            sock = await pod_socket(session, family, socket.SOCK_STREAM)
    except StopAsyncIteration:
        return
    finally:
        if not used:
            _discard(ahead)
    try:
        # No timeout of our own: the pod's kernel decides (tcp_syn_retries), as it would
        # for a program running there.
        await asyncio.get_running_loop().sock_connect(sock, addr)
    except OSError as e:
        sock.close()
        yield net_pb2.TcpServerMessage(error=e.errno or errno.ECONNREFUSED)
        return
    except BaseException:
        sock.close()
        raise
    # Relayed bytes are written as they come: never hold a small write back for an ACK
    # (Nagle + the remote's delayed ACK would add up to 40 ms where the program, e.g. with
    # TCP_NODELAY on its own socket, expects none).
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    async for reply in _relay_connected(sock, requests, outcome):
        yield reply


async def _relay_connected(
    sock: socket.socket, requests: AsyncIterator[Request], outcome: _Outcome
) -> AsyncIterator[Reply]:
    """`connected`, then bytes both ways until both directions are done; closes sock."""
    loop = asyncio.get_running_loop()
    uploader: asyncio.Task[bool] | None = None
    try:
        name = sock.getsockname()
        local = from_sockaddr(name) if isinstance(name, tuple) else net_pb2.SocketAddress()
        yield net_pb2.TcpServerMessage(connected=net_pb2.TcpConnected(local=local))
        uploader = asyncio.create_task(_upload(sock, requests))
        while True:
            try:
                data = await loop.sock_recv(sock, CHUNK)
            except OSError as e:
                log.debug("tcp relay: recv failed: %s", e)
                yield net_pb2.TcpServerMessage(error=e.errno or errno.ECONNRESET)
                return
            if not data:
                yield net_pb2.TcpServerMessage(eof=True)
                break
            yield encode_data(SERVER_DATA_KEY, data)
        # The remote is done sending; keep forwarding the program's bytes until it is too.
        outcome.clean = await uploader
    finally:
        if uploader is not None and not uploader.done():
            uploader.cancel()
            with contextlib.suppress(BaseException):
                await uploader
        sock.close()


def _connect_unix(pid: int | None, path: str) -> socket.socket:
    """A unix stream socket connected to `path` as the target sees it (runs on the session's
    namespace worker: an abstract name, "\\0…", is per network namespace). A file system
    path is reached through the target's root: its directory is opened through
    /proc/PID/root and the socket named relative to that descriptor, which also keeps long
    paths within sun_path's 108 bytes. Non-blocking: a full backlog gives EAGAIN rather
    than stalling the worker that every socket of the session needs."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        sock.setblocking(False)
        if path.startswith("\0"):
            sock.connect(path)
        else:
            if not path.startswith("/"):
                raise OSError(errno.EINVAL, "unix_path must be absolute")
            root = f"/proc/{pid}/root" if pid is not None else ""
            directory, _, base = path.rpartition("/")
            dfd = os.open(root + (directory or "/"), os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                sock.connect(f"/proc/self/fd/{dfd}/{base}")
            finally:
                os.close(dfd)
    except BlockingIOError:
        sock.close()
        raise OSError(errno.EAGAIN, "the target's socket has a full backlog") from None
    except BaseException:
        sock.close()
        raise
    return sock


def _discard(pending: asyncio.Future[socket.socket]) -> None:
    """Close the socket made ahead when it is not used (also when the stream ends first).
    Not cancelled: the worker may already have made it, and it must not be left to GC."""

    def close(f: asyncio.Future[socket.socket]) -> None:
        if not f.cancelled() and f.exception() is None:
            f.result().close()

    pending.add_done_callback(close)


async def _upload(sock: socket.socket, requests: AsyncIterator[Request]) -> bool:
    """Forward the program's bytes; True when they ended with an `eof` message (and the
    stream is still there: it may carry another connection)."""
    loop = asyncio.get_running_loop()
    try:
        async for msg in requests:
            if isinstance(msg, memoryview):
                await loop.sock_sendall(sock, msg)
                continue
            kind = msg.WhichOneof("msg")
            if kind == "data":
                await loop.sock_sendall(sock, msg.data)
            elif kind == "eof":
                sock.shutdown(socket.SHUT_WR)
                return True
    except OSError as e:
        log.debug("tcp upload failed: %s", e)
    return False
