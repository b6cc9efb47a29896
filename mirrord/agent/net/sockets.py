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


async def pod_socket(session: AgentSession, family: int, kind: int) -> socket.socket:
    """A non-blocking socket in the session target's network namespace."""
    return await session.worker.run(_new_socket, family, kind)


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
        tasks = list(self.tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=2.0)
