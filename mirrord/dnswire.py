"""The little of the DNS wire format (RFC 1035) mirrord needs: build an A/AAAA query,
read the question name of a query, and the addresses of an answer. Pure.
"""

from __future__ import annotations

import struct

TYPE_A = 1
TYPE_AAAA = 28
CLASS_IN = 1
FLAG_RD = 0x0100
FLAG_TC = 0x0200
HEADER = struct.Struct("!HHHHHH")


class DnsFormatError(ValueError):
    """Not a DNS message we can read."""


def build_query(qid: int, name: str, qtype: int) -> bytes:
    labels = [p for p in name.rstrip(".").split(".") if p]
    qname = b"".join(bytes([len(p.encode())]) + p.encode() for p in labels) + b"\0"
    return HEADER.pack(qid, FLAG_RD, 1, 0, 0, 0) + qname + struct.pack("!HH", qtype, CLASS_IN)


def _read_name(msg: bytes, off: int) -> tuple[str, int]:
    """(name, offset after it) following compression pointers (bounded, no loops)."""
    labels: list[str] = []
    end = -1
    for _ in range(128):
        if off >= len(msg):
            raise DnsFormatError("name runs past the message")
        n = msg[off]
        if n == 0:
            return ".".join(labels), (off + 1 if end < 0 else end)
        if n & 0xC0 == 0xC0:
            if off + 1 >= len(msg):
                raise DnsFormatError("truncated pointer")
            if end < 0:
                end = off + 2
            off = ((n & 0x3F) << 8) | msg[off + 1]
            continue
        labels.append(msg[off + 1 : off + 1 + n].decode("ascii", "replace"))
        off += 1 + n
    raise DnsFormatError("name too long or looping")


def query_name(msg: bytes) -> str:
    """The first question's name of a DNS message (a query), lower case, no final dot."""
    if len(msg) < HEADER.size:
        raise DnsFormatError("shorter than a DNS header")
    _qid, _flags, qd, _an, _ns, _ar = HEADER.unpack_from(msg)
    if qd < 1:
        raise DnsFormatError("no question")
    name, _ = _read_name(msg, HEADER.size)
    return name.lower()


def answer_addresses(msg: bytes, qid: int) -> tuple[list[bytes], bool]:
    """(A/AAAA record data in order, truncated flag) of a reply to query `qid`."""
    if len(msg) < HEADER.size:
        raise DnsFormatError("shorter than a DNS header")
    rid, flags, qd, an, _ns, _ar = HEADER.unpack_from(msg)
    if rid != qid:
        raise DnsFormatError("reply to another query")
    off = HEADER.size
    for _ in range(qd):
        _, off = _read_name(msg, off)
        off += 4
    out: list[bytes] = []
    for _ in range(an):
        _, off = _read_name(msg, off)
        if off + 10 > len(msg):
            raise DnsFormatError("truncated record")
        rtype, _rclass, _ttl, rdlen = struct.unpack_from("!HHIH", msg, off)
        off += 10
        data = msg[off : off + rdlen]
        off += rdlen
        if (rtype == TYPE_A and rdlen == 4) or (rtype == TYPE_AAAA and rdlen == 16):
            out.append(data)
    return out, bool(flags & FLAG_TC)
