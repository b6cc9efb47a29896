"""Sockets made inside the target's network namespace, and per-session ownership of the
relays that use them.

A socket's network namespace is fixed when it is created, so only `socket()` runs on the
session's namespace worker; connect/send/recv then run on the event loop like any other
non-blocking socket. Each relay registers its task with the session's `NetSessionState`,
which cancels them all when the session ends (each relay closes its own socket in its
`finally`), so nothing outlives the session.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket

from mirrord.agent.session import AgentSession
from mirrord.v1 import net_pb2


def _new_socket(family: int, kind: int) -> socket.socket:
    sock = socket.socket(family, kind | socket.SOCK_CLOEXEC)
    sock.setblocking(False)
    return sock


def close_watched(sock: socket.socket) -> None:
    """Close a socket the event loop may still watch (a receive left pending): its
    registration goes first, or the loop keeps the fd number with our reader and the next
    socket to get that number is never polled."""
    if sock.fileno() >= 0:
        loop = asyncio.get_running_loop()
        loop.remove_reader(sock.fileno())
        loop.remove_writer(sock.fileno())
    sock.close()


async def pod_socket(session: AgentSession, family: int, kind: int) -> socket.socket:
    """A non-blocking socket in the session target's network namespace."""
    return await session.worker.run(_new_socket, family, kind)


# IPv4 TCP sockets are made ahead in batches: one hop to the namespace worker thread (two
# thread switches and the GIL handed over twice) per SPARE_BATCH connections, not one
# each, and none on a connect's path while the batch lasts.
SPARE_BATCH = 16


def _new_sockets(family: int, kind: int, count: int) -> list[socket.socket]:
    made: list[socket.socket] = []
    try:
        for _ in range(count):
            made.append(_new_socket(family, kind))
    except OSError:
        if not made:  # e.g. EMFILE: the caller sees it
            raise
    return made


def to_sockaddr(addr: net_pb2.SocketAddress) -> tuple[int, tuple[str, int]]:
    """(family, address tuple) for a protobuf address; ValueError if malformed."""
    ip = ipaddress.ip_address(addr.ip)
    if not 0 <= addr.port <= 65535:
        raise ValueError(f"bad port {addr.port}")
    family = socket.AF_INET if ip.version == 4 else socket.AF_INET6
    return family, (str(ip), addr.port)


def from_sockaddr(sockaddr: tuple[object, ...]) -> net_pb2.SocketAddress:
    host, port = str(sockaddr[0]), int(str(sockaddr[1]))
    return net_pb2.SocketAddress(ip=ipaddress.ip_address(host.split("%")[0]).packed, port=port)


class NetSessionState:
    """The relays of one session; `close()` (a session cleanup) cancels what is left."""

    def __init__(self) -> None:
        self.tasks: set[asyncio.Task[object]] = set()
        self.closed = False
        self._spare: list[socket.socket] = []  # unconnected IPv4 TCP sockets in the netns
        self._refill: asyncio.Task[None] | None = None
        self.direct_secret: bytes | None = None  # agent/net/direct.py, once asked

    async def tcp_socket(self, session: AgentSession, family: int) -> socket.socket:
        """A non-blocking TCP socket in the target's network namespace (IPv4 ones from
        the spares, refilled in the background before they run out)."""
        if family == socket.AF_INET and not self._spare and not self.closed:
            self._start_refill(session)
            assert self._refill is not None
            await asyncio.shield(self._refill)  # raises its error (EMFILE…)
        if family != socket.AF_INET or not self._spare:  # IPv6, or others took them all
            return await pod_socket(session, family, socket.SOCK_STREAM)
        sock = self._spare.pop()
        if len(self._spare) < SPARE_BATCH // 4:
            self._start_refill(session)
        return sock

    def _start_refill(self, session: AgentSession) -> None:
        if self._refill is None or self._refill.done():
            self._refill = asyncio.get_running_loop().create_task(self._make_spares(session))
            # A failure (EMFILE…) reaches whoever awaits the next refill; none is logged.
            self._refill.add_done_callback(lambda t: t.cancelled() or t.exception())

    async def _make_spares(self, session: AgentSession) -> None:
        made = await session.worker.run(
            _new_sockets, socket.AF_INET, socket.SOCK_STREAM, SPARE_BATCH
        )
        if self.closed:
            for sock in made:
                sock.close()
        else:
            self._spare.extend(made)

    def adopt(self) -> None:
        """Register the calling task (a relay) so that the session's end cancels it."""
        task = asyncio.current_task()
        if task is None:
            return
        if self.closed:
            task.cancel()
            return
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def close(self) -> None:
        self.closed = True
        # A refill under way is left to finish: it closes what it made (`closed`).
        while self._spare:
            self._spare.pop().close()
        tasks = list(self.tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=2.0)
