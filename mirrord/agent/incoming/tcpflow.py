"""Mirroring by looking, not relaying: the TCP segments that reach a port, as the pod's
interfaces see them, put back together into each connection's bytes from its peer (pure:
packets in, events out).

The pod's own server answers its clients with nobody in between; the agent reads copies
of the packets (an AF_PACKET socket, sniff.py) with a classic BPF filter that keeps only
TCP to the port (pure ACKs left out), and this turns them into per-connection streams: a
connection is known from its SYN (one that began before the subscription is not copied),
its bytes go out in sequence order (a segment ahead of a gap waits, a retransmission is
cut to what is new), its FIN ends it once every byte before it came, a RST aborts it.
Best effort, as any mirror: a gap that never fills (a packet the socket's buffer dropped)
ends that copy.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from dataclasses import dataclass, field

# --- the kernel filter -----------------------------------------------------------------

_INSN = struct.Struct("=HBBI")  # struct sock_filter: code, jt, jf, k
_LD_B_ABS, _LD_H_ABS, _LD_B_IND, _LD_H_IND, _LD_MEM = 0x30, 0x28, 0x50, 0x48, 0x60
_LDX_B_MSH, _ST, _TAX = 0xB1, 0x02, 0x07
_AND_K, _RSH_K, _SUB_X = 0x54, 0x74, 0x1C
_JEQ_K, _JGT_K, _JSET_K, _RET_K = 0x15, 0x25, 0x45, 0x06
SNAPLEN = 262_144  # a GRO-merged segment is up to 64 KiB; whole packets, always
_SYN_FIN_RST = 0x07

# One instruction: (code, jump if true, jump if false, k), the jumps as labels.
_Insn = tuple[int, str | None, str | None, int]


def port_filter(port: int) -> bytes:
    """A cBPF program (struct sock_filter[]) for a SOCK_DGRAM packet socket: IPv4 (not a
    later fragment) or IPv6 (TCP as the first header) whose TCP destination is `port`,
    and that carries bytes, a SYN, a FIN or a RST. Pure ACKs, about half of a short
    connection's packets, tell the copy nothing: each one kept would wake the agent."""
    program: list[tuple[str | None, _Insn]] = [
        (None, (_LD_B_ABS, None, None, 0)),  # the version nibble
        (None, (_AND_K, None, None, 0xF0)),
        (None, (_JEQ_K, None, "v6", 0x40)),
        (None, (_LD_B_ABS, None, None, 9)),
        (None, (_JEQ_K, None, "drop", 6)),  # TCP
        (None, (_LD_H_ABS, None, None, 6)),
        (None, (_JSET_K, "drop", None, 0x1FFF)),  # a later fragment has no TCP header
        (None, (_LDX_B_MSH, None, None, 0)),  # X = the IPv4 header's length
        (None, (_LD_H_IND, None, None, 2)),  # the TCP destination port
        (None, (_JEQ_K, None, "drop", port)),
        (None, (_LD_B_IND, None, None, 13)),  # the TCP flags
        (None, (_JSET_K, "keep", None, _SYN_FIN_RST)),
        (None, (_LD_H_ABS, None, None, 2)),  # total length - IP header - TCP header
        (None, (_SUB_X, None, None, 0)),
        (None, (_ST, None, None, 0)),
        (None, (_LD_B_IND, None, None, 12)),  # data offset, in words: (byte >> 4) * 4
        (None, (_AND_K, None, None, 0xF0)),
        (None, (_RSH_K, None, None, 2)),
        (None, (_TAX, None, None, 0)),
        (None, (_LD_MEM, None, None, 0)),
        (None, (_SUB_X, None, None, 0)),
        (None, (_JGT_K, "keep", "drop", 0)),
        ("v6", (_JEQ_K, None, "drop", 0x60)),
        (None, (_LD_B_ABS, None, None, 6)),
        (None, (_JEQ_K, None, "drop", 6)),  # TCP as the next header
        (None, (_LD_H_ABS, None, None, 42)),
        (None, (_JEQ_K, None, "drop", port)),
        (None, (_LD_B_ABS, None, None, 53)),
        (None, (_JSET_K, "keep", None, _SYN_FIN_RST)),
        (None, (_LD_B_ABS, None, None, 52)),
        (None, (_AND_K, None, None, 0xF0)),
        (None, (_RSH_K, None, None, 2)),
        (None, (_TAX, None, None, 0)),
        (None, (_LD_H_ABS, None, None, 4)),  # payload length (TCP header and bytes)
        (None, (_SUB_X, None, None, 0)),
        (None, (_JGT_K, "keep", "drop", 0)),
        ("keep", (_RET_K, None, None, SNAPLEN)),
        ("drop", (_RET_K, None, None, 0)),
    ]
    at = {label: i for i, (label, _insn) in enumerate(program) if label is not None}

    def jump(pc: int, target: str | None) -> int:
        return 0 if target is None else at[target] - pc - 1

    return b"".join(
        _INSN.pack(code, jump(pc, jt), jump(pc, jf), k)
        for pc, (_label, (code, jt, jf, k)) in enumerate(program)
    )


# --- packets ---------------------------------------------------------------------------

FIN, SYN, RST, ACK = 0x01, 0x02, 0x04, 0x10
Address = tuple[str, int]


@dataclass(frozen=True)
class Segment:
    src: Address
    dst: Address
    seq: int
    flags: int
    payload: bytes


def parse_segment(packet: bytes) -> Segment | None:
    """A TCP segment from an IP packet (network header first); None for anything else."""
    if len(packet) < 20:
        return None
    version = packet[0] >> 4
    if version == 4:
        header = (packet[0] & 0x0F) * 4
        (total,) = struct.unpack_from("!H", packet, 2)
        if packet[9] != 6 or header < 20:
            return None
        src = socket.inet_ntoa(packet[12:16])  # as ipaddress writes it, 10x faster
        dst = socket.inet_ntoa(packet[16:20])
    elif version == 6 and len(packet) >= 40:
        header = 40
        total = 40 + struct.unpack_from("!H", packet, 4)[0]
        if packet[6] != 6:
            return None
        src = str(ipaddress.IPv6Address(packet[8:24]))
        dst = str(ipaddress.IPv6Address(packet[24:40]))
    else:
        return None
    total = min(total, len(packet))  # a short capture or trailing padding
    if total < header + 20:
        return None
    sport, dport, seq = struct.unpack_from("!HHI", packet, header)
    offset = (packet[header + 12] >> 4) * 4
    if offset < 20:
        return None
    flags = packet[header + 13]
    return Segment((src, sport), (dst, dport), seq, flags, bytes(packet[header + offset : total]))


# --- connections -----------------------------------------------------------------------

MOD = 1 << 32
MAX_FLOWS = 4096  # connections followed at once; past it, the least active is dropped
MAX_AHEAD = 256  # segments held beyond a gap; past it, that copy ends


@dataclass(frozen=True)
class Event:
    # "new", "data", "end" (every byte came, then the FIN), "abort" (a RST, or its 4-tuple
    # reused), "lost" (a gap that did not fill: a packet the socket's buffer dropped; or
    # the least active connection, dropped for a new one)
    kind: str
    key: tuple[Address, Address]  # (peer, original destination)
    data: bytes = b""


@dataclass
class _Flow:
    isn: int  # the SYN's sequence number: a retransmitted SYN is not a new connection
    next: int  # the next byte's sequence number
    ahead: dict[int, bytes] = field(default_factory=dict)
    fin: int | None = None  # the FIN's sequence number, once seen


class Reassembler:
    """Connections to one port, from their segments."""

    def __init__(self, max_flows: int = MAX_FLOWS) -> None:
        self._flows: dict[tuple[Address, Address], _Flow] = {}
        self._max = max_flows

    def __len__(self) -> int:
        return len(self._flows)

    def forget(self, key: tuple[Address, Address]) -> None:
        self._flows.pop(key, None)

    def feed(self, seg: Segment) -> list[Event]:
        key = (seg.src, seg.dst)
        flow = self._flows.get(key)
        if seg.flags & SYN and not seg.flags & ACK:
            if flow is not None and flow.isn == seg.seq:
                return []  # a retransmitted SYN
            started: list[Event] = []
            if flow is not None:  # its 4-tuple reused: the old one is over
                del self._flows[key]
                started.append(Event("abort", key))
            if len(self._flows) >= self._max:  # the least recently active one goes
                oldest = next(iter(self._flows))
                del self._flows[oldest]
                started.append(Event("lost", oldest))
            self._flows[key] = _Flow(seg.seq, (seg.seq + 1) % MOD)
            started.append(Event("new", key))
            return started
        if flow is None:
            return []  # began before we looked, or not followed
        self._flows[key] = self._flows.pop(key)  # the most recently active, last
        if seg.flags & RST:
            del self._flows[key]
            return [Event("abort", key)]
        events: list[Event] = []
        if seg.flags & FIN:
            flow.fin = (seg.seq + len(seg.payload)) % MOD
        self._take(flow, seg.seq, seg.payload, key, events)
        if len(flow.ahead) > MAX_AHEAD:
            del self._flows[key]
            return [*events, Event("lost", key)]
        if flow.fin is not None and flow.next == flow.fin:
            del self._flows[key]
            events.append(Event("end", key))
        return events

    @staticmethod
    def _take(
        flow: _Flow, seq: int, payload: bytes, key: tuple[Address, Address], out: list[Event]
    ) -> None:
        if payload:
            behind = (flow.next - seq) % MOD
            if behind < MOD // 2:  # starts at or before the next byte
                if behind < len(payload):
                    out.append(Event("data", key, payload[behind:]))
                    flow.next = (flow.next + len(payload) - behind) % MOD
            else:
                flow.ahead[seq] = payload
                return
        while flow.ahead:  # what waited for this one
            waiting = [s for s in flow.ahead if (flow.next - s) % MOD < MOD // 2]
            if not waiting:
                return
            for s in waiting:
                data = flow.ahead.pop(s)
                behind = (flow.next - s) % MOD
                if behind < len(data):
                    out.append(Event("data", key, data[behind:]))
                    flow.next = (flow.next + len(data) - behind) % MOD
