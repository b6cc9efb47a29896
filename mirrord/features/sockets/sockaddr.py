"""struct sockaddr_in / sockaddr_in6 to and from Python values. Pure.

A `Destination` keeps the bytes the program passed, so getpeername can give back exactly
what it asked for (family, v4-mapped form, flow info, scope id).
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mirrord.supervisor.actions import Allow

if TYPE_CHECKING:
    from mirrord.supervisor.actions import Memory

AF_INET = socket.AF_INET
AF_INET6 = socket.AF_INET6
SOCKADDR_IN = 16
SOCKADDR_IN6 = 28
V4_MAPPED_PREFIX = b"\0" * 10 + b"\xff\xff"
IPV4_ANY = b"\0" * 4
IPV6_ANY = b"\0" * 16
IPV6_LOOPBACK = b"\0" * 15 + b"\x01"


@dataclass(frozen=True)
class Destination:
    family: int  # of the sockaddr (= of the program's socket)
    ip: bytes  # the real address: 4 bytes for IPv4 and v4-mapped IPv6, else 16
    port: int
    raw: bytes  # the sockaddr as the program gave it

    @property
    def ip_text(self) -> str:
        return str(ipaddress.ip_address(self.ip))

    @property
    def is_loopback(self) -> bool:
        """127/8, ::1, or unspecified (0.0.0.0, ::). On every trapped accept and name
        call: bytes compared, not an ipaddress object built."""
        ip = self.ip
        if len(ip) == 4:
            return ip[0] == 127 or ip == IPV4_ANY
        return ip in (IPV6_LOOPBACK, IPV6_ANY)


def parse_sockaddr(raw: bytes) -> Destination | None:
    """An IPv4/IPv6 sockaddr; None for other families or short buffers."""
    if len(raw) < 2:
        return None
    (family,) = struct.unpack_from("<H", raw)
    if family == AF_INET and len(raw) >= SOCKADDR_IN:
        (port,) = struct.unpack_from("!H", raw, 2)
        return Destination(AF_INET, raw[4:8], port, raw[:SOCKADDR_IN])
    if family == AF_INET6 and len(raw) >= SOCKADDR_IN6:
        (port,) = struct.unpack_from("!H", raw, 2)
        ip = raw[8:24]
        real = ip[12:] if ip.startswith(V4_MAPPED_PREFIX) else ip
        return Destination(AF_INET6, real, port, raw[:SOCKADDR_IN6])
    return None


def build_sockaddr(family: int, ip: bytes, port: int) -> bytes:
    """A sockaddr of `family` for ip (4 or 16 bytes; IPv4 in an AF_INET6 one is v4-mapped)."""
    if family == AF_INET:
        if len(ip) != 4:
            raise ValueError("an IPv6 address in an AF_INET sockaddr")
        return struct.pack("<H", AF_INET) + struct.pack("!H", port) + ip + b"\0" * 8
    if len(ip) == 4:
        ip = V4_MAPPED_PREFIX + ip
    return struct.pack("<H", AF_INET6) + struct.pack("!HI", port, 0) + ip + struct.pack("<I", 0)


def loopback_kind(dest: Destination) -> str | None:
    """'v4' for 127.0.0.1 (plain or v4-mapped), 'v6' for ::1, else None: the two
    interceptor address spaces."""
    if dest.ip == b"\x7f\0\0\x01":
        return "v4"
    if dest.ip == b"\0" * 15 + b"\x01":
        return "v6"
    return None


def write_name(m: Memory, ptr: int, lenptr: int, cap: int, data: bytes) -> None:
    """A sockaddr out-parameter filled as the kernel does: at most cap bytes at ptr, the
    full length at lenptr."""
    size = struct.pack("<I", len(data))
    if cap:
        m.write_pair(ptr, data[:cap], lenptr, size)
    else:
        m.write(lenptr, size)


def rewrite_sockaddr(
    m: Memory, ptr: int, lenptr: int, cap: int, look: Callable[[Destination], bytes | None]
) -> None:
    """Replace the sockaddr the kernel returned at ptr (*lenptr its length, cap the size the
    program gave) when `look` knows a replacement."""
    (n,) = struct.unpack("<I", m.read(lenptr, 4))
    got = parse_sockaddr(m.read(ptr, min(n, cap, SOCKADDR_IN6)))
    if got is None:
        return
    new = look(got)
    if new is None:
        return
    write_name(m, ptr, lenptr, cap, new)


def rewrite_at_exit(
    mem: Memory, ptr: int, lenptr: int, look: Callable[[Destination], bytes | None]
) -> Allow:
    """Ptrace engine: let a call that returns a sockaddr (accept, recvfrom) run, and
    rewrite that address at its exit when `look` knows a replacement."""
    if not ptr or not lenptr:
        return Allow()
    try:
        (cap,) = struct.unpack("<I", mem.read(lenptr, 4))
    except OSError:
        return Allow()  # EFAULT from the kernel

    def on_exit(ret: int, m: Memory) -> int | None:
        if ret >= 0:
            rewrite_sockaddr(m, ptr, lenptr, cap, look)
        return None

    return Allow(on_exit=on_exit)
