"""The little of the DNS wire format (RFC 1035) mirrord needs: build an A/AAAA query,
read the question of a query, the addresses of an answer, and build an answer. Pure.
"""

from __future__ import annotations

import ipaddress
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


RCODE_SERVFAIL = 2
RCODE_NXDOMAIN = 3
FLAG_QR = 0x8000
FLAG_RA = 0x0080
ANSWER_TTL = 5  # short: the program's own cache should not outlive our local answer


RCODE_NAMES = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED"}


def reply_summary(msg: bytes) -> tuple[str, list[str], str]:
    """(question name, A/AAAA addresses as text, rcode name) of a reply (--explain)."""
    if len(msg) < HEADER.size:
        raise DnsFormatError("shorter than a DNS header")
    qid, flags, qd, _an, _ns, _ar = HEADER.unpack_from(msg)
    if qd < 1 or not flags & FLAG_QR:
        raise DnsFormatError("not a reply")
    name, _ = _read_name(msg, HEADER.size)
    addresses, _tc = answer_addresses(msg, qid)
    rcode = flags & 0xF
    texts = [str(ipaddress.ip_address(a)) for a in addresses]
    return name.lower().rstrip("."), texts, RCODE_NAMES.get(rcode, f"RCODE{rcode}")


def question(msg: bytes) -> tuple[str, int, int]:
    """(name lower case without the final dot, qtype, offset after the first question)."""
    if len(msg) < HEADER.size:
        raise DnsFormatError("shorter than a DNS header")
    _qid, flags, qd, _an, _ns, _ar = HEADER.unpack_from(msg)
    if qd < 1 or flags & FLAG_QR:
        raise DnsFormatError("not a query")
    name, off = _read_name(msg, HEADER.size)
    if off + 4 > len(msg):
        raise DnsFormatError("truncated question")
    (qtype,) = struct.unpack_from("!H", msg, off)
    return name.lower(), qtype, off + 4


def build_answer(query: bytes, addresses: list[bytes] | None, rcode: int = 0) -> bytes:
    """A reply to `query`'s first question: the addresses of its type (A: the 4-byte
    ones, AAAA: the 16-byte ones; none for other types), or an error `rcode` (e.g.
    NXDOMAIN) when `addresses` is None."""
    _name, qtype, end = question(query)
    qid, flags = struct.unpack_from("!HH", query)
    wanted = {TYPE_A: 4, TYPE_AAAA: 16}.get(qtype)
    records = [a for a in (addresses or []) if wanted is not None and len(a) == wanted]
    out_flags = FLAG_QR | FLAG_RA | (flags & FLAG_RD) | (rcode if addresses is None else 0)
    head = HEADER.pack(qid, out_flags, 1, len(records), 0, 0)
    body = b"".join(
        struct.pack("!HHHIH", 0xC00C, qtype, CLASS_IN, ANSWER_TTL, len(a)) + a for a in records
    )
    return head + query[HEADER.size : end] + body
