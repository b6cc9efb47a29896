"""Source ports for loopback connections that are named by their port (a delivery to the
program: the agent's notes and the client's own deliveries key it by its local port)."""

from __future__ import annotations

import errno
import random
import socket

# Source ports tried before falling back to bind(0).
PORT_TRIES = 64
# Connects tried, each from another port, before a delivery gives up.
CONNECT_TRIES = 4


def another_port(error: OSError, attempt: int) -> bool:
    """Whether a connect that failed with `error` on try `attempt` (from 0) goes on from
    another port: the four-tuple was taken (EADDRNOTAVAIL) and tries are left."""
    return error.errno == errno.EADDRNOTAVAIL and attempt < CONNECT_TRIES - 1


class SourcePorts:
    """Source ports of the sockets that deliver connections to the program, chosen here
    (with SO_REUSEADDR) rather than by bind(0).

    A delivery that ends cleanly leaves its side in TIME_WAIT for 60 s, holding its port.
    bind(0) takes ports of one parity first and steps over those held one by one: past
    ~14,000 of them (a few hundred new connections a second for a minute) each bind
    scanned thousands of ports (2 ms of kernel time, measured), and past ~28,000 it
    failed, losing the connection. A port held only by TIME_WAITs of ours is free to bind
    with SO_REUSEADDR, and connect() takes over such a TIME_WAIT towards the same listener
    (TCP timestamps keep that safe); where it cannot (the four-tuple in use, or a
    TIME_WAIT without timestamps) it fails with EADDRNOTAVAIL and the delivery tries again
    from another port. Live delivering sockets share no port (each
    delivered connection is named by it): those in use are skipped here."""

    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()
        try:
            with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
                low, high = (int(x) for x in f.read().split())
        except (OSError, ValueError):
            low, high = 32768, 60999
        self.range = (low, high)
        self.live: set[int] = set()

    def bound(self, family: int, host: str) -> tuple[socket.socket, int]:
        """A non-blocking TCP socket (TCP_NODELAY, SO_REUSEADDR) bound here, and its port
        (`release` it once the socket is closed)."""
        sock = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            return sock, self.bind(sock, host)
        except BaseException:
            sock.close()
            raise

    def bind(self, sock: socket.socket, host: str) -> int:
        """Bind `sock` (SO_REUSEADDR set) to a port no live delivery uses; its number."""
        low, high = self.range
        for _ in range(PORT_TRIES):
            port = self._rng.randint(low, high)
            if port in self.live:
                continue
            try:
                sock.bind((host, port))
            except OSError as e:
                if e.errno != errno.EADDRINUSE:
                    raise
                continue  # someone else's (no SO_REUSEADDR), or a listener
            self.live.add(port)
            return port
        sock.bind((host, 0))  # the range is that busy: the kernel's choice
        port = int(sock.getsockname()[1])
        self.live.add(port)
        return port

    def release(self, port: int) -> None:
        self.live.discard(port)
