"""One proxied TCP connection: connect from the pod, then relay bytes both ways.

Stream protocol (net.proto): the client's first message is `connect`; the answer is
`connected` (with the pod-side local address) or `error` (the errno the pod's kernel gave:
ECONNREFUSED, ETIMEDOUT, EHOSTUNREACH, ENETUNREACH…). Then `data` both ways, and `eof`
for a half-close in either direction (a client that set `data_eof` gets the remote's end
on its last `data` as `then_eof` when the end is already there). The stream ends when
both directions are done or either side fails, unless the client asked for `reuse`: then
the next `connect` follows (after `done`, or unasked with `pipelined`). The pod socket is
always closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import select
import socket
from collections.abc import AsyncIterator

from mirrord.agent.creds import acting_as, target_creds
from mirrord.agent.net.sockets import NetSessionState, from_sockaddr, to_sockaddr
from mirrord.agent.session import AgentSession
from mirrord.v1 import net_pb2
from mirrord.wire.net import SERVER_DATA_KEY, THEN_EOF, encode_data

# What the stream carries (mirrord/wire/net.py): `data` as a payload view / encoded bytes.
Request = net_pb2.TcpClientMessage | memoryview
Reply = net_pb2.TcpServerMessage | bytes

log = logging.getLogger(__name__)

CHUNK = 1024 * 1024  # big reads: fewer gRPC messages (each has a fixed cost) for bulk


async def relay_tcp(
    session: AgentSession, requests: AsyncIterator[Request], state: NetSessionState
) -> AsyncIterator[Reply]:
    """Connections one after the other on one stream: the next only when the client asked
    for reuse and the last ended cleanly (then `done` tells it to send a `connect`, unless
    it pipelines: it sends it unasked)."""
    while True:
        outcome = _Outcome()
        async for reply in _one_connection(session, requests, state, outcome):
            yield reply
        if not (outcome.clean and outcome.reuse):
            return
        if not outcome.pipelined:
            yield net_pb2.TcpServerMessage(done=True)


class _Outcome:
    """What `_one_connection` reports (an async generator cannot return a value)."""

    def __init__(self) -> None:
        self.reuse = False  # the client asked to keep the stream (TcpConnect.reuse)
        self.pipelined = False  # …and sends the next connect without a `done`
        self.clean = False  # both directions ended with an eof, the pod socket is closed


async def _one_connection(
    session: AgentSession,
    requests: AsyncIterator[Request],
    state: NetSessionState,
    outcome: _Outcome,
) -> AsyncIterator[Reply]:
    try:
        first = await anext(requests)
    except StopAsyncIteration:
        return
    if isinstance(first, memoryview) or first.WhichOneof("msg") != "connect":
        yield net_pb2.TcpServerMessage(error=errno.EINVAL)
        return
    connect = first.connect
    outcome.reuse = connect.reuse
    outcome.pipelined = connect.reuse and connect.pipelined
    if connect.unix_path:
        try:
            sock = await session.worker.run(_connect_unix, session.pid, connect.unix_path)
        except OSError as e:
            yield net_pb2.TcpServerMessage(error=e.errno or errno.ECONNREFUSED)
            return
        async for reply in _relay_connected(sock, requests, outcome, connect.data_eof):
            yield reply
        return
    try:
        family, addr = to_sockaddr(connect.remote)
    except ValueError:
        yield net_pb2.TcpServerMessage(error=errno.EINVAL)
        return
    try:
        sock = await state.tcp_socket(session, family)
    except OSError as e:
        yield net_pb2.TcpServerMessage(error=e.errno or errno.EMFILE)
        return
    try:
        # No timeout of our own: the pod's kernel decides (tcp_syn_retries), as it would
        # for a program running there.
        await connect_socket(sock, addr)
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
    async for reply in _relay_connected(sock, requests, outcome, connect.data_eof):
        yield reply


async def connect_socket(sock: socket.socket, addr: tuple[object, ...]) -> None:
    """loop.sock_connect, without its loop iteration when the handshake is over by the
    time connect() returns EINPROGRESS (a nearby remote: the SYN-ACK is often processed
    within the call); the connect is on the critical path of every relayed connection."""
    err = sock.connect_ex(addr)
    if err == 0:
        return
    if err not in (errno.EINPROGRESS, errno.EALREADY, errno.EAGAIN, errno.EINTR):
        raise OSError(err, os.strerror(err))
    poller = select.poll()
    poller.register(sock, select.POLLOUT)
    if not poller.poll(0):
        loop = asyncio.get_running_loop()
        writable: asyncio.Future[None] = loop.create_future()

        def ready() -> None:
            if not writable.done():
                writable.set_result(None)

        loop.add_writer(sock, ready)
        try:
            await writable
        finally:
            loop.remove_writer(sock)
    err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    if err:
        raise OSError(err, os.strerror(err))


def _recv_now(sock: socket.socket) -> bytes | None:
    """What a recv gives at once: bytes, b"" at the end, None when nothing is there yet."""
    try:
        return sock.recv(CHUNK)
    except (BlockingIOError, InterruptedError):
        return None


async def _relay_connected(
    sock: socket.socket, requests: AsyncIterator[Request], outcome: _Outcome, data_eof: bool
) -> AsyncIterator[Reply]:
    """`connected`, then bytes both ways until both directions are done; closes sock.
    data_eof: the client takes `then_eof` on the last data (the end looked for right
    after each read: one recv that finds it spares a message for the eof)."""
    loop = asyncio.get_running_loop()
    uploader: asyncio.Task[bool] | None = None
    try:
        name = sock.getsockname()
        local = from_sockaddr(name) if isinstance(name, tuple) else net_pb2.SocketAddress()
        yield net_pb2.TcpServerMessage(connected=net_pb2.TcpConnected(local=local))
        uploader = asyncio.create_task(_upload(sock, requests))
        data: bytes | None = None
        while True:
            try:
                if data is None:
                    data = await loop.sock_recv(sock, CHUNK)
                more = _recv_now(sock) if data and data_eof else None
            except OSError as e:
                log.debug("tcp relay: recv failed: %s", e)
                if data:
                    yield encode_data(SERVER_DATA_KEY, data)
                yield net_pb2.TcpServerMessage(error=e.errno or errno.ECONNRESET)
                return
            if not data:
                yield net_pb2.TcpServerMessage(eof=True)
                break
            if more == b"":
                yield encode_data(SERVER_DATA_KEY, data, THEN_EOF)
                break
            yield encode_data(SERVER_DATA_KEY, data)
            data = more
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
            # As the target's user: a socket's permissions are its, and the agent has no
            # CAP_DAC_OVERRIDE (creds.py).
            with acting_as(target_creds(pid) if pid is not None else None):
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
