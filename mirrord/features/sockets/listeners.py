"""Does the traced program listen on a local port? (upstream's localhost rule: a
connection to 127.0.0.1:P stays local when the program itself listens on P.)

Read from /proc, only when a loopback connect is decided: the listening sockets on P in
this network namespace (/proc/net/tcp*, state 0A = LISTEN; UDP sockets bound to P), then
whether one of them is an fd of a process of the program (proctree.owns: its engine
knows).
"""

from __future__ import annotations

import os

from mirrord.supervisor.proctree import owns

LISTEN = "0A"


ALL_TABLES = (("tcp", True), ("tcp6", True), ("udp", False), ("udp6", False))
UDP_TABLES = (("udp", False), ("udp6", False))
TCP_TABLES = (("tcp", False), ("tcp6", False))


def _inodes_on_port(port: int, tables: tuple[tuple[str, bool], ...] = ALL_TABLES) -> set[str]:
    inodes: set[str] = set()
    for table, need_listen in tables:
        try:
            with open(f"/proc/net/{table}") as f:
                next(f, None)
                for line in f:
                    parts = line.split()
                    if len(parts) < 10:
                        continue
                    if int(parts[1].rsplit(":", 1)[1], 16) != port:
                        continue
                    if need_listen and parts[3] != LISTEN:
                        continue
                    inodes.add(parts[9])
        except OSError:
            continue
    return inodes


def program_listens_on(port: int) -> bool:
    inodes = _inodes_on_port(port)
    return bool(inodes) and bool(held_by_program(inodes, first=True))


def program_holds_tcp_port(port: int) -> bool:
    """Is a TCP socket on local `port` (listening, bound or connected) one of the
    program's? (Its own port is not "busy on this machine": a bind gets EADDRINUSE.)"""
    inodes = _inodes_on_port(port, TCP_TABLES) - {"0"}
    return bool(inodes) and bool(held_by_program(inodes, first=True))


def program_sends_from(port: int) -> bool:
    """Is the UDP socket bound to local `port` one of the program's? (A datagram to one of
    our UDP interceptors from anyone else must not reach the pod.)"""
    inodes = _inodes_on_port(port, UDP_TABLES)
    return bool(inodes) and bool(held_by_program(inodes, first=True))


def held_by_program(inodes: set[str], first: bool = False) -> set[str]:
    """Which of these socket inodes are fds of a process of the program (`first`: stop at
    the first one found)."""
    wanted = {f"socket:[{i}]": i for i in inodes}
    held: set[str] = set()
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or not owns(int(pid)):
            continue
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                inode = wanted.get(os.readlink(f"/proc/{pid}/fd/{fd}"))
            except OSError:
                continue
            if inode is not None:
                held.add(inode)
                if first or len(held) == len(wanted):
                    return held
    return held
