"""IP addresses as text to bytes, fast (both mirrord and the agent parse the peers of
every new connection). Pure."""

from __future__ import annotations

import functools
import socket


@functools.lru_cache(maxsize=1024)
def packed_ip(text: str) -> bytes:
    """An address as text (an IPv6 one maybe with %scope) as 4 or 16 bytes; ValueError if
    it is none. Cached: the same few peers come back on every delivered connection, and
    ipaddress takes ~10 us to parse one."""
    host = text.split("%", 1)[0]
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            return socket.inet_pton(family, host)
        except OSError:
            continue
    raise ValueError(f"not an IP address: {text!r}")
