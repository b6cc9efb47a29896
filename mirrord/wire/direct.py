"""What goes between the program's side and a local agent outside gRPC, pure encoding.

Outgoing (Net.Direct): the two messages that open a direct connection. Incoming
(IncomingDirect): the notes the agent sends to the client's datagram socket.

The program's socket (through the supervisor's duplicate of it) connects to the agent's
direct listener and sends a `request`: this session's secret and where to connect from
the pod. The agent answers with a `reply`: 0 and the pod-side local address, or the
errno the pod's kernel gave (then it closes). After a 0 the same TCP connection carries
the program's bytes, relayed by the agent. Fixed sizes, so each side reads an exact count.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

MAGIC = b"MRD1"
SECRET_SIZE = 16
# magic, secret, family (4|6), port, address (IPv4 in the first 4 bytes)
_REQUEST = struct.Struct(f"!4s{SECRET_SIZE}sBH16s")
# errno, family (4|6|0), port, address
_REPLY = struct.Struct("!IBH16s")
REQUEST_SIZE = _REQUEST.size
REPLY_SIZE = _REPLY.size


class DirectWireError(ValueError):
    pass


@dataclass(frozen=True)
class DirectRequest:
    secret: bytes
    ip: bytes  # 4 or 16 bytes
    port: int


@dataclass(frozen=True)
class DirectReply:
    errno: int  # 0: connected
    ip: bytes = b""  # the pod-side socket's own address (4, 16 or 0 bytes)
    port: int = 0


def _family(ip: bytes) -> int:
    if len(ip) == 4:
        return 4
    if len(ip) == 16:
        return 6
    raise DirectWireError(f"an address is 4 or 16 bytes, not {len(ip)}")


def _ip(family: int, raw: bytes) -> bytes:
    if family == 4:
        return raw[:4]
    if family == 6:
        return raw
    if family == 0:
        return b""
    raise DirectWireError(f"unknown address family {family}")


def encode_request(req: DirectRequest) -> bytes:
    if len(req.secret) != SECRET_SIZE:
        raise DirectWireError(f"the secret is {SECRET_SIZE} bytes, not {len(req.secret)}")
    return _REQUEST.pack(MAGIC, req.secret, _family(req.ip), req.port, req.ip.ljust(16, b"\0"))


def decode_request(data: bytes) -> DirectRequest:
    if len(data) != REQUEST_SIZE:
        raise DirectWireError(f"a request is {REQUEST_SIZE} bytes, not {len(data)}")
    magic, secret, family, port, raw = _REQUEST.unpack(data)
    if magic != MAGIC:
        raise DirectWireError("not a mirrord direct connection")
    if family == 0:
        raise DirectWireError("a request needs an address")
    return DirectRequest(secret, _ip(family, raw), port)


def encode_reply(reply: DirectReply) -> bytes:
    family = _family(reply.ip) if reply.ip else 0
    return _REPLY.pack(reply.errno, family, reply.port, reply.ip.ljust(16, b"\0"))


def decode_reply(data: bytes) -> DirectReply:
    if len(data) != REPLY_SIZE:
        raise DirectWireError(f"a reply is {REPLY_SIZE} bytes, not {len(data)}")
    err, family, port, raw = _REPLY.unpack(data)
    return DirectReply(err, _ip(family, raw), port)


# --- incoming: what the agent tells the client's datagram socket (IncomingDirect) ------

NOTE_NEW = b"N"  # a delivery: its source port, the subscribed port, peer, original destination
NOTE_GONE = b"G"  # that delivery's connection is closed
NOTE_FAILED = b"F"  # a delivery could not reach the program (errno)
# A connection handed over whole (IncomingDirect.handoff): its fd rides along (SCM_RIGHTS);
# `port` is the doorbell's, the connection the agent makes to the program's listener
# right after so that the program's accept wakes up for it.
NOTE_HANDOFF = b"H"
NOTE_KINDS = (NOTE_NEW, NOTE_GONE, NOTE_FAILED, NOTE_HANDOFF)
# kind, source port, subscribed port, errno, peer (family, ip, port), original (same)
_NOTE = struct.Struct("!cHHIB16sHB16sH")
NOTE_SIZE = _NOTE.size


@dataclass(frozen=True)
class Note:
    kind: bytes
    port: int  # the delivering socket's (or doorbell's) local port (NEW, GONE, HANDOFF)
    sub_port: int = 0  # the target's subscribed port (NEW, FAILED, HANDOFF)
    errno: int = 0  # FAILED
    peer: tuple[bytes, int] = (b"", 0)  # (4 or 16 address bytes, port)
    original: tuple[bytes, int] = (b"", 0)


def encode_note(note: Note) -> bytes:
    if note.kind not in NOTE_KINDS:
        raise DirectWireError(f"unknown note kind {note.kind!r}")
    (pip, pport), (oip, oport) = note.peer, note.original
    return _NOTE.pack(
        note.kind,
        note.port,
        note.sub_port,
        note.errno,
        _family(pip) if pip else 0,
        pip.ljust(16, b"\0"),
        pport,
        _family(oip) if oip else 0,
        oip.ljust(16, b"\0"),
        oport,
    )


def decode_note(data: bytes) -> Note:
    if len(data) != NOTE_SIZE:
        raise DirectWireError(f"a note is {NOTE_SIZE} bytes, not {len(data)}")
    kind, port, sub_port, err, pfam, pip, pport, ofam, oip, oport = _NOTE.unpack(data)
    if kind not in NOTE_KINDS:
        raise DirectWireError(f"unknown note kind {kind!r}")
    return Note(kind, port, sub_port, err, (_ip(pfam, pip), pport), (_ip(ofam, oip), oport))
