"""What the network handlers need from the local proxy (mirrord/proxy implements it).

Interceptors are identified statelessly (graftcp-style): each redirected TCP connect gets
its own loopback listener port, each remote UDP address its own loopback UDP port, so
the port a program's socket is connected to (or receives from) names the original
destination. Nothing is tracked per fd, so dup, fork and fd passing need no bookkeeping.
Direct connections (connect_direct) all go to one agent listener port and are told apart
by the program socket's own port.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import Protocol

from mirrord.features.sockets.sockaddr import Destination


@dataclass(frozen=True)
class Connected:
    """A redirected TCP connect: `result` is connect(2)'s answer for the program (0, or
    -errno: -EINPROGRESS on a non-blocking socket), `pod_errno` what the pod's connect
    gave (0: connected there)."""

    result: int
    pod_errno: int = 0


class Redirector(Protocol):
    def interceptor_ip(self, family: int) -> bytes:
        """The loopback address a socket of `family` is pointed at (4 or 16 bytes)."""
        ...

    async def connect_tcp(self, sock: socket.socket, dest: Destination) -> Connected:
        """The program's TCP connect to dest, whole: the pod connects (through the agent's
        direct listener when it shares our loopback, else a stream and an interceptor),
        then the program's socket (`sock`, our duplicate) is connected on loopback, which
        gives it the kernel's own semantics (blocking, EINPROGRESS, SO_ERROR). A pod-side
        ECONNREFUSED is reproduced the same way; other pod errors raise OSError(errno)."""
        ...

    async def open_unix(self, path: str) -> bytes:
        """Connect to the unix stream socket `path` in the target (a leading NUL: an
        abstract name); the path of a local unix listener for the program's socket, at
        most 107 bytes. Raises OSError(errno) with the error the target gave."""
        ...

    async def open_udp(self, dest: Destination) -> int:
        """The interceptor UDP port for dest (made on first use)."""
        ...

    def udp_port(self, dest: Destination) -> int | None:
        """The interceptor UDP port for dest if it already exists (no stop needed)."""
        ...

    def original(self, kind: str, port: int, local_port: int | None = None) -> bytes | None:
        """The sockaddr the program used for the interceptor at ('v4'|'v6', port), for
        the program's socket at local_port (direct connections share one port)."""
        ...

    def note_local(self, kind: str, local_port: int, interceptor_port: int) -> None:
        """The program's socket at ('v4'|'v6', local_port) talks to that interceptor."""
        ...

    def pod_local(
        self, kind: str, local_port: int, peer_port: int | None = None
    ) -> tuple[bytes, int] | None:
        """The pod-side (ip, port) standing for the program's socket at local_port,
        connected to peer_port."""
        ...
