"""Sockets the agent creates inside the target's netns (call these on the session's
namespace worker thread), and SO_ORIGINAL_DST."""

from __future__ import annotations

import errno
import socket
import struct

from mirrord.agent.incoming.rules import AGENT_MARK

SO_ORIGINAL_DST = 80  # linux/netfilter_ipv4.h, at level SOL_IP
IP6T_SO_ORIGINAL_DST = 80  # linux/netfilter_ipv6/ip6_tables.h, at level SOL_IPV6


def make_listener() -> socket.socket:
    """A TCP listener on a free port of every address of the current netns, IPv4 and IPv6
    (dual stack: an IPv4 peer shows as ::ffff:a.b.c.d; subscription.unmapped): REDIRECT
    sends PREROUTING traffic to the incoming interface's address and OUTPUT traffic to
    127.0.0.1 or ::1. IPv4 only where the kernel has no IPv6."""
    try:
        sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    except OSError:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if sock.family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            sock.bind(("::", 0))
        else:
            sock.bind(("0.0.0.0", 0))
        sock.listen(512)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def relayed(sock: socket.socket) -> None:
    """Relayed bytes go out as they come. asyncio sets TCP_NODELAY only on sockets whose
    `proto` is IPPROTO_TCP, and ours (and those accept() gives) say 0: without this a
    server's header write and its small body write meet Nagle + the peer's delayed ACK
    (40 ms) on every response that reaches us in two pieces."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def make_marked_socket(family: int = socket.AF_INET) -> socket.socket:
    """A TCP socket whose packets carry AGENT_MARK, which our OUTPUT chain lets through: the
    agent's pass-through connections to the pod's server are never redirected to us again."""
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, AGENT_MARK)
        relayed(sock)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def make_marked_sockets(count: int) -> list[socket.socket]:
    """`count` of them (none left open if one fails)."""
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            socks.append(make_marked_socket())
    except BaseException:
        for sock in socks:
            sock.close()
        raise
    return socks


def original_destination(sock: socket.socket) -> tuple[str, int]:
    """Where the peer meant to connect before REDIRECT rewrote it: IPv4 conntrack's answer
    (also for an IPv4 peer of a dual-stack listener), else IPv6's (a sockaddr_in6)."""
    try:
        raw = sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
    except OSError as e:
        if e.errno != errno.ENOENT or sock.family != socket.AF_INET6:
            raise
        raw = sock.getsockopt(socket.IPPROTO_IPV6, IP6T_SO_ORIGINAL_DST, 28)
        port, packed6 = struct.unpack_from("!2xH4x16s", raw)
        return socket.inet_ntop(socket.AF_INET6, packed6), port
    port, packed = struct.unpack_from("!2xH4s", raw)
    return socket.inet_ntoa(packed), port
