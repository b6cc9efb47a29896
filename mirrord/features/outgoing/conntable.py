"""Which of this namespace's sockets still exist, from /proc/net/{tcp,udp}{,6}: the proxy
forgets what it noted about direct connections (their original peer, their pod-side
address) once they are gone, and ends the UDP flows of program sockets that were closed
(each holds a socket in the agent). The parsers are pure."""

from __future__ import annotations

TIME_WAIT = "06"  # closed on our side: the program's socket is gone


def local_ports_connected_to(table: str, remote_port: int) -> set[int]:
    """Local ports of the connections in a /proc/net/tcp* text whose remote port is
    `remote_port` (any state but TIME_WAIT; listeners have remote port 0)."""
    ports: set[int] = set()
    for line in table.splitlines()[1:]:
        parts = line.split()
        if len(parts) < 4 or parts[3] == TIME_WAIT:
            continue
        try:
            if int(parts[2].rsplit(":", 1)[1], 16) == remote_port:
                ports.add(int(parts[1].rsplit(":", 1)[1], 16))
        except (IndexError, ValueError):
            continue
    return ports


def connected_local_ports(remote_port: int, kind: str) -> set[int] | None:
    """local_ports_connected_to() over this namespace's table for 'v4' or 'v6' (a v6
    interceptor of a v4-mapped socket is in tcp6 too); None when it cannot be read."""
    found: set[int] = set()
    for name in ("tcp", "tcp6") if kind == "v4" else ("tcp6",):
        try:
            with open(f"/proc/net/{name}") as f:
                found |= local_ports_connected_to(f.read(), remote_port)
        except OSError:
            return None
    return found


def bound_ports(table: str) -> set[int]:
    """Local ports of every socket in a /proc/net/udp* text."""
    ports: set[int] = set()
    for line in table.splitlines()[1:]:
        parts = line.split()
        try:
            ports.add(int(parts[1].rsplit(":", 1)[1], 16))
        except (IndexError, ValueError):
            continue
    return ports


def bound_udp_ports() -> set[int] | None:
    """bound_ports() over this namespace's UDP tables (v4 and v6: a v6 socket can send
    to a v4 interceptor, v4-mapped); None when they cannot be read."""
    found: set[int] = set()
    for name in ("udp", "udp6"):
        try:
            with open(f"/proc/net/{name}") as f:
                found |= bound_ports(f.read())
        except OSError:
            return None
    return found
