"""Mirroring by looking, not relaying: the TCP segments that reach a port, as the pod's
interfaces see them, put back together into each connection's bytes from its peer (pure:
packets in, events out).

The pod's own server answers its clients with nobody in between; the agent reads copies
of the packets (an AF_PACKET socket, sniff.py) with a classic BPF filter that keeps only
TCP to the port, and this turns them into per-connection streams: a connection is known
from its SYN (one that began before the subscription is not copied), its bytes go out in
sequence order (a segment ahead of a gap waits, a retransmission is cut to what is new),
its FIN ends it once every byte before it came, a RST aborts it. Best effort, as any
mirror: a gap that never fills (a packet the socket's buffer dropped) ends that copy.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass, field

# --- the kernel filter -----------------------------------------------------------------

_INSN = struct.Struct("=HBBI")  # struct sock_filter: code, jt, jf, k
_LD_B_ABS, _LD_H_ABS, _LD_H_IND, _LDX_B_MSH = 0x30, 0x28, 0x48, 0xB1
_AND_K, _JEQ_K, _JSET_K, _RET_K = 0x54, 0x15, 0x45, 0x06
SNAPLEN = 262_144  # a GRO-merged segment is up to 64 KiB; whole packets, always


def port_filter(port: int) -> bytes:
    """A cBPF program (struct sock_filter[]) for a SOCK_DGRAM packet socket: IPv4 (not a
    later fragment) or IPv6 (TCP as the first header) whose TCP destination is `port`."""
    program = [
        (_LD_B_ABS, 0, 0, 0),  # 0: version nibble
        (_AND_K, 0, 0, 0xF0),
        (_JEQ_K, 0, 7, 0x40),  # 2: IPv4 -> 3, else -> 10
        (_LD_B_ABS, 0, 0, 9),
        (_JEQ_K, 0, 11, 6),  # 4: TCP, else drop
        (_LD_H_ABS, 0, 0, 6),
        (_JSET_K, 9, 0, 0x1FFF),  # 6: a later fragment has no TCP header: drop
        (_LDX_B_MSH, 0, 0, 0),  # X = IPv4 header length
        (_LD_H_IND, 0, 0, 2),  # TCP destination port
        (_JEQ_K, 5, 6, port),  # 9: accept / drop
        (_JEQ_K, 0, 5, 0x60),  # 10: IPv6, else drop
        (_LD_B_ABS, 0, 0, 6),
        (_JEQ_K, 0, 3, 6),  # 12: next header TCP, else drop
        (_LD_H_ABS, 0, 0, 42),
        (_JEQ_K, 0, 1, port),  # 14: accept / drop
        (_RET_K, 0, 0, SNAPLEN),  # 15: accept
        (_RET_K, 0, 0, 0),  # 16: drop
    ]
    return b"".join(_INSN.pack(*insn) for insn in program)


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
        src = str(ipaddress.IPv4Address(packet[12:16]))
        dst = str(ipaddress.IPv4Address(packet[16:20]))
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
