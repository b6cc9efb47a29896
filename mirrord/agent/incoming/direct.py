"""Deliveries straight to the program's listener, for a client on the agent's loopback.

With IncomingSubscribeRequest.direct the agent connects to the program's listener itself
and pumps the Delivery's queues through that socket: no Connection stream, no gRPC
message per connection or chunk, no relay in mirrord. Before each connect, a NEW note goes
to the client's datagram socket (mirrord/wire/direct.py): it is in the client's queue
before the program can accept, so the supervisor can show the real peer at once. GONE
follows when the connection is closed, FAILED when the program could not be reached.

The delivering socket gets SO_LINGER 0: if the agent dies, or the connection is aborted,
the program sees a reset, not a clean end.
"""

from __future__ import annotations

import array
import asyncio
import errno
import logging
import os
import select
import socket
from collections import deque
from collections.abc import Coroutine
from typing import Any, Protocol

from mirrord.agent.bridge import LINGER_OFF, LINGER_RESET, Bridge, set_linger
from mirrord.agent.incoming.delivery import Delivery
from mirrord.agent.incoming.hooked import Hooked, hooked_of, open_connection
from mirrord.wire.addresses import packed_ip
from mirrord.wire.direct import (
    NOTE_FAILED,
    NOTE_GONE,
    NOTE_HANDOFF,
    NOTE_NEW,
    Note,
    encode_note,
)
from mirrord.wire.source_ports import CONNECT_TRIES, SourcePorts, another_port

log = logging.getLogger(__name__)

CHUNK = 256 * 1024
NOTE_TIMEOUT_S = 5.0
# One agent, one set: the sessions' deliveries must not share a port either.
source_ports = SourcePorts()


def _reset(sock: socket.socket) -> None:
    """Close with a reset: no TIME_WAIT left by a doorbell, and a connection we could not
    hand over is refused to its peer, not ended as if answered."""
    set_linger(sock, LINGER_RESET)
    sock.close()


def _dispose(conn: socket.socket | None, sent: bool) -> None:
    """Our copy of a handed-over connection, once its note went (the client has its own)
    or did not (reset: nobody will answer it)."""
    if conn is not None:
        if sent:
            conn.close()
        else:
            _reset(conn)


class DirectTarget:
    """The program's listener of one subscription, and the client's datagram socket."""

    def __init__(self, host: str, port: int, notify_path: str, handoff: bool = False) -> None:
        self.family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.address = (host, port)
        self.handoff = handoff  # IncomingDirect.handoff: unfiltered steals hand over fds
        self._notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        try:
            self._notify.connect(notify_path)
            self._notify.setblocking(False)
        except OSError:
            self._notify.close()
            raise
        # Notes go out in order; a datagram socket queues only net.unix.max_dgram_qlen
        # (10) of them, so a burst waits for the client to read (never dropped: a lost NEW
        # would show the program 127.0.0.1 as the peer). A handed-over connection waits
        # with its note, and is closed here once sent.
        self._backlog: deque[tuple[bytes, socket.socket | None, asyncio.Future[bool]]] = deque()
        self._sender: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def close(self) -> None:
        if self._sender is not None:
            self._sender.cancel()
        for task in self._tasks:
            task.cancel()
        for _, conn, sent in self._backlog:
            sent.cancel()
            if conn is not None:
                _reset(conn)
        self._backlog.clear()
        self._notify.close()

    def _send(self, data: bytes, conn: socket.socket | None) -> None:
        if conn is None:
            self._notify.send(data)
        else:
            fds = array.array("i", [conn.fileno()])
            self._notify.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)])

    def _tell(self, note: Note, conn: socket.socket | None = None) -> asyncio.Future[bool]:
        """Send a note after those before it (with `conn`: its fd too; `conn` is closed
        here once sent, reset if it could not be). The future says whether it went, once
        it did or was given up (the client stopped reading for NOTE_TIMEOUT_S, or is
        gone)."""
        sent: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        data = encode_note(note)
        if not self._backlog:
            try:
                self._send(data, conn)
                sent.set_result(True)
            except BlockingIOError:
                pass
            except OSError as e:
                log.debug("direct delivery: note not sent: %s", e)
                sent.set_result(False)
            if sent.done():
                _dispose(conn, sent.result())
                return sent
        self._backlog.append((data, conn, sent))
        if self._sender is None or self._sender.done():
            self._sender = asyncio.get_running_loop().create_task(self._send_backlog())
        return sent

    async def _send_backlog(self) -> None:
        loop = asyncio.get_running_loop()
        while self._backlog:
            data, conn, sent = self._backlog[0]
            went = True
            try:
                await asyncio.wait_for(self._send_when_ready(loop, data, conn), NOTE_TIMEOUT_S)
            except (OSError, TimeoutError) as e:
                log.warning("direct delivery: a note was not taken: %s", e)
                went = False
            self._backlog.popleft()
            _dispose(conn, went)
            if not sent.done():
                sent.set_result(went)

    async def _send_when_ready(
        self, loop: asyncio.AbstractEventLoop, data: bytes, conn: socket.socket | None
    ) -> None:
        while True:
            try:
                self._send(data, conn)
                return
            except BlockingIOError:
                ready: asyncio.Future[None] = loop.create_future()
                loop.add_writer(self._notify.fileno(), ready.set_result, None)
                try:
                    await ready
                finally:
                    loop.remove_writer(self._notify.fileno())

    def hand_off(
        self, conn: socket.socket, sub_port: int, peer: tuple[str, int], original: tuple[str, int]
    ) -> None:
        """A stolen connection, whole, to the client (IncomingDirect.handoff): its fd
        with a HANDOFF note naming the doorbell's port, then the doorbell: a connection
        to the program's listener, reset at once, which wakes the program's accept; the
        client answers that accept with `conn`. No byte of it passes through us.
        Takes `conn` (closed here once sent)."""
        bell = socket.socket(self.family, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            bell.setblocking(False)
            bell.bind((self.address[0], 0))
            port = int(bell.getsockname()[1])
        except OSError as e:
            bell.close()
            log.info("port %d: no doorbell for a handed-over connection: %s", sub_port, e)
            _reset(conn)
            return
        note = Note(
            NOTE_HANDOFF,
            port,
            sub_port,
            peer=(packed_ip(peer[0]), peer[1]),
            original=(packed_ip(original[0]), original[1]),
        )
        sent = self._tell(note, conn)
        if not sent.done():
            self._spawn(self._ring_after(sent, bell, port, sub_port))
        elif not sent.result():
            _reset(bell)  # the client has no connection to wake the program for
        elif not self._ring(bell, port, sub_port):
            self._spawn(self._ring_when_connected(bell, port, sub_port))

    def _ring(self, bell: socket.socket, port: int, sub_port: int) -> bool:
        """Connect the doorbell and reset it, when loopback completes the handshake within
        connect() (it does unless the listener's queue is full); False: still connecting."""
        err = bell.connect_ex(self.address)
        if err == errno.EINPROGRESS:
            poller = select.poll()
            poller.register(bell.fileno(), select.POLLOUT)
            if not poller.poll(0):
                return False
            err = bell.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            self._failed(port, sub_port, err)
        _reset(bell)
        return True

    async def _ring_after(
        self, sent: asyncio.Future[bool], bell: socket.socket, port: int, sub_port: int
    ) -> None:
        if not await sent:
            _reset(bell)
        elif not self._ring(bell, port, sub_port):
            await self._ring_when_connected(bell, port, sub_port)

    async def _ring_when_connected(self, bell: socket.socket, port: int, sub_port: int) -> None:
        try:
            await asyncio.get_running_loop().sock_connect(bell, self.address)
        except OSError as e:
            self._failed(port, sub_port, e.errno or errno.ECONNREFUSED)
        finally:
            _reset(bell)

    def _failed(self, port: int, sub_port: int, err: int) -> None:
        log.debug("port %d: doorbell failed: %s", sub_port, os.strerror(err))
        self._tell(Note(NOTE_FAILED, port, sub_port, err))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _connect(
        self, sub_port: int, peer: tuple[str, int], original: tuple[str, int]
    ) -> tuple[socket.socket, int] | None:
        """A socket connected to the program's listener and its port, the NEW note sent
        first (the caller tells `gone(port)` once the socket is closed); None when the
        program could not be reached (FAILED is told)."""
        loop = asyncio.get_running_loop()
        for attempt in range(CONNECT_TRIES):
            # Named (bound) before connecting: the note needs it.
            sock, port = source_ports.bound(self.family, self.address[0])
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RESET)
                # Sent before connecting: in the client's queue before the program can accept.
                await self._tell(
                    Note(
                        NOTE_NEW,
                        port,
                        sub_port,
                        peer=(packed_ip(peer[0]), peer[1]),
                        original=(packed_ip(original[0]), original[1]),
                    )
                )
                await loop.sock_connect(sock, self.address)
            except OSError as e:
                sock.close()
                if another_port(e, attempt):
                    self.gone(port)  # this port's delivery never was
                    continue
                log.debug("direct delivery to %s failed: %s", self.address, e)
                self._tell(Note(NOTE_FAILED, port, sub_port, e.errno or errno.ECONNREFUSED))
                source_ports.release(port)
                return None
            except BaseException:
                sock.close()
                source_ports.release(port)
                raise
            return sock, port
        return None  # not reached: the last attempt returns

    def gone(self, port: int) -> None:
        """The delivering socket from `port` is closed: the client forgets it, and the
        port may serve another delivery."""
        source_ports.release(port)
        self._tell(Note(NOTE_GONE, port))

    async def deliver(
        self,
        delivery: Delivery,
        sub_port: int,
        peer: tuple[str, int],
        original: tuple[str, int],
        steal: bool,
    ) -> None:
        """Connect to the program's listener and pump the delivery's queues until the
        connection is over (mirror copies, filtered requests)."""
        connected = None
        io: _SocketIo | _StreamIo | None = None
        clean = False
        try:
            connected = await self._connect(sub_port, peer, original)
            if connected is None:
                return
            io = await _program_io(connected[0], steal and delivery.pulls_answers)
            if steal:
                delivery.send = io.send
                if isinstance(io, _StreamIo):
                    delivery.recv = io.recv
                    delivery.hooked = io.hooked
            delivery.attached.set()
            clean = await _pump(io, delivery, steal)
        finally:
            delivery.close()
            if connected is not None:
                sock, port = connected
                if io is None:
                    sock.close()  # SO_LINGER 0 since _connect: a reset
                else:
                    io.close(clean)
                self.gone(port)

    async def steal(
        self,
        peer: asyncio.Transport,
        first: Early,
        sub_port: int,
        peer_addr: tuple[str, int],
        original: tuple[str, int],
    ) -> None:
        """A stolen connection, whole: the peer's transport (reading paused until now)
        and one to the program joined (agent/bridge.py: no task or queue per chunk, which
        the keep-alive request rate depends on)."""
        connected = None
        bridge = Bridge()
        program, peer_side = bridge.a, bridge.b
        try:
            connected = await self._connect(sub_port, peer_addr, original)
            if connected is None:
                peer.close()
                return
            await bridge.attach(program, connected[0])
            bridge.adopt(peer_side, peer, first.early, first.eof)
            await bridge.done
        finally:
            bridge.close(bridge.ended_cleanly())
            if not bridge.joined(peer_side):
                peer.abort()
            if connected is not None:
                if not bridge.joined(program):
                    connected[0].close()
                self.gone(connected[1])


class Early(Protocol):
    """What a stolen connection's peer sent before the bridge took its transport."""

    early: list[bytes]
    eof: bool


class _SocketIo:
    """The program's socket through sock_sendall/sock_recv: nothing to set up, for
    connections that carry little (a mirror copy, most often one request)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.loop = asyncio.get_running_loop()

    async def send(self, data: bytes) -> None:
        await self.loop.sock_sendall(self.sock, data)

    async def recv(self) -> bytes:
        return await self.loop.sock_recv(self.sock, CHUNK)

    def end(self) -> None:
        self.sock.shutdown(socket.SHUT_WR)

    def close(self, clean: bool) -> None:
        if clean:
            set_linger(self.sock, LINGER_OFF)
        self.sock.close()  # else SO_LINGER 0 since _connect: a reset


class _StreamIo:
    """The program's socket as a transport, kept registered with the loop: each read is
    one callback, not an epoll_ctl pair around a sock_recv. Worth its set-up (~40 us)
    for a filtered connection whose consumer pulls answers request after request."""

    def __init__(self, writer: asyncio.StreamWriter, hooked: Hooked) -> None:
        self.writer, self.hooked = writer, hooked  # hooked.reader: the stream's reader

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def recv(self) -> bytes:
        return await self.hooked.read(CHUNK)

    def end(self) -> None:
        self.writer.write_eof()

    def at_eof(self) -> bool:
        return self.hooked.reader.at_eof()

    def close(self, clean: bool) -> None:
        if clean:
            set_linger(self.writer.get_extra_info("socket"), LINGER_OFF)
            self.writer.close()
        else:
            self.writer.transport.abort()  # SO_LINGER 0 since _connect: a reset


async def _program_io(sock: socket.socket, pulled: bool) -> _SocketIo | _StreamIo:
    if not pulled:
        return _SocketIo(sock)
    reader, writer = await open_connection(sock, CHUNK)
    hooked = hooked_of((reader, writer))
    assert hooked is not None
    return _StreamIo(writer, hooked)


async def _pump(io: _SocketIo | _StreamIo, delivery: Delivery, steal: bool) -> bool:
    """The delivery's bytes to the program and (steal) its answers back, until both
    ended; True when they did cleanly. Mirror: answers are read and dropped, to the
    program's end, even after the real connection is over. A consumer that pulls the
    answers itself (Delivery.recv) reads them until it ends `to_client`; what the program
    sends after that is nobody's and is dropped here."""
    pulled = isinstance(io, _StreamIo)  # only a socket whose answers are pulled is one
    down = asyncio.ensure_future(_to_program(io, delivery))
    up = None if pulled else asyncio.ensure_future(_from_program(io, delivery, steal))
    try:
        if not await down:
            return False  # aborted: the program's connection is reset
        if up is None:
            assert isinstance(io, _StreamIo)
            if io.at_eof():
                return True  # the consumer read the program's end
            up = asyncio.ensure_future(_from_program(io, delivery, False))
        if steal and not up.done():
            # The peer is gone before the program's answer ended: abort, as the stream did.
            closed = asyncio.ensure_future(delivery.closed.wait())
            try:
                await asyncio.wait((up, closed), return_when=asyncio.FIRST_COMPLETED)
            finally:
                closed.cancel()
            if not up.done():
                return False
        return await up
    finally:
        for task in (down, up):
            if task is not None:
                task.cancel()
        await asyncio.gather(*(t for t in (down, up) if t is not None), return_exceptions=True)


async def _to_program(io: _SocketIo | _StreamIo, delivery: Delivery) -> bool:
    """Queued bytes, then the end; True when the end came as an EOF (passed on as a
    half-close), False when the delivery was aborted or the socket failed."""
    queue = delivery.to_client
    try:
        while True:
            if queue.empty() and delivery.closed.is_set():
                return False
            item = await queue.get()
            if item is None:
                io.end()
                return True
            await io.send(item)
    except OSError:
        return False


async def _from_program(io: _SocketIo | _StreamIo, delivery: Delivery, steal: bool) -> bool:
    """The program's bytes: to the peer when stolen (the relay's sink or queue), dropped
    when mirrored. True at the program's EOF."""
    put = (delivery.sink or delivery.from_client.put) if steal else None
    try:
        while data := await io.recv():
            if put is not None:
                await put(data)
        if put is not None:
            await put(None)
        return True
    except OSError:
        return False
