"""The mirror's packets → connections (agent/incoming/tcpflow.py), without I/O: the BPF
filter run by a small cBPF interpreter, IPv4/IPv6 parsing, and reassembly with
retransmissions, reordering, gaps, FIN, RST, a reused 4-tuple and sequence wrap."""

from __future__ import annotations

import struct

from mirrord.agent.incoming.tcpflow import (
    ACK,
    FIN,
    RST,
    SNAPLEN,
    SYN,
    Event,
    Reassembler,
    Segment,
    parse_segment,
    port_filter,
)

PEER, POD = ("10.0.0.3", 40000), ("10.0.0.2", 8080)
KEY = (PEER, POD)


def run_filter(program: bytes, packet: bytes) -> int:
    """The cBPF instructions port_filter uses, as the kernel runs them."""
    insns = [struct.unpack_from("=HBBI", program, i) for i in range(0, len(program), 8)]
    a = x = pc = 0
    mem = [0] * 16
    while True:
        code, jt, jf, k = insns[pc]
        if code == 0x30:
            a = packet[k]
        elif code == 0x28:
            a = struct.unpack_from("!H", packet, k)[0]
        elif code == 0x50:
            a = packet[x + k]
        elif code == 0x48:
            a = struct.unpack_from("!H", packet, x + k)[0]
        elif code == 0x60:
            a = mem[k]
        elif code == 0x02:
            mem[k] = a
        elif code == 0xB1:
            x = (packet[k] & 0x0F) * 4
        elif code == 0x07:
            x = a
        elif code == 0x54:
            a &= k
        elif code == 0x74:
            a >>= k
        elif code == 0x1C:
            a = (a - x) & 0xFFFFFFFF
        elif code == 0x15:
            pc += jt if a == k else jf
        elif code == 0x25:
            pc += jt if a > k else jf
        elif code == 0x45:
            pc += jt if a & k else jf
        elif code == 0x06:
            return k
        else:
            raise AssertionError(f"unexpected opcode {code:#x}")
        pc += 1
        assert pc < len(insns), "ran off the end"


def tcp(
    dport: int, seq: int = 7, flags: int = 0x18, payload: bytes = b"hi", options: bytes = b""
) -> bytes:
    offset = (5 + len(options) // 4) << 4
    head = struct.pack("!HHIIBBHHH", 40000, dport, seq, 0, offset, flags, 0, 0, 0)
    return head + options + payload


def v4(segment: bytes, proto: int = 6, frag: int = 0, options: bytes = b"") -> bytes:
    ihl = 5 + len(options) // 4
    total = ihl * 4 + len(segment)
    head = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, total, 0, frag, 64, proto, 0,
                       bytes([10, 0, 0, 3]), bytes([10, 0, 0, 2]))  # fmt: skip
    return head + options + segment


def v6(segment: bytes, next_header: int = 6) -> bytes:
    head = struct.pack("!IHBB16s16s", 0x60000000, len(segment), next_header, 64,
                       b"\0" * 15 + b"\1", b"\0" * 15 + b"\2")  # fmt: skip
    return head + segment


def test_the_filter_keeps_tcp_to_the_port_only() -> None:
    program = port_filter(8080)
    assert run_filter(program, v4(tcp(8080))) == SNAPLEN
    assert run_filter(program, v4(tcp(8080), options=b"\1\1\1\0")) == SNAPLEN  # IHL 6
    assert run_filter(program, v6(tcp(8080))) == SNAPLEN
    for dropped in (
        v4(tcp(8081)),
        v4(tcp(8080), proto=17),
        v4(tcp(8080), frag=0x0005),  # a later fragment: no TCP header there
        v6(tcp(8081)),
        v6(tcp(8080), next_header=17),
    ):
        assert run_filter(program, dropped) == 0
    # The first fragment (more fragments set, offset 0) still has the header.
    assert run_filter(program, v4(tcp(8080), frag=0x2000)) == SNAPLEN


def test_the_filter_leaves_out_pure_acks() -> None:
    """Bytes, SYN, FIN and RST are kept (with IP and TCP options, padding after the
    packet); a segment with nothing of those is not read at all."""
    program = port_filter(8080)
    opts = b"\1\1\x08\x0a" + b"\0" * 8  # NOP NOP timestamps: a 32-byte TCP header
    for wrap in (v4, v6, lambda t: v4(t, options=b"\1\1\1\0")):
        assert run_filter(program, wrap(tcp(8080, flags=ACK, payload=b""))) == 0
        assert run_filter(program, wrap(tcp(8080, flags=ACK, payload=b"", options=opts))) == 0
        assert run_filter(program, wrap(tcp(8080, flags=ACK, payload=b"x", options=opts)))
        for flags in (SYN, SYN | ACK, FIN | ACK, RST, RST | ACK):
            assert run_filter(program, wrap(tcp(8080, flags=flags, payload=b""))) == SNAPLEN
        assert run_filter(program, wrap(tcp(8080, flags=ACK | 0x08, payload=b"1"))) == SNAPLEN
    # Link padding after a short IPv4 packet is not payload: the IP length says.
    assert run_filter(program, v4(tcp(8080, flags=ACK, payload=b"")) + b"\0" * 6) == 0


def test_segments_are_parsed_from_ipv4_and_ipv6() -> None:
    seg = parse_segment(v4(tcp(8080, seq=99, payload=b"GET /")) + b"\0\0")  # padding cut
    assert seg == Segment(PEER, POD, 99, 0x18, b"GET /")
    seg6 = parse_segment(v6(tcp(8080, payload=b"x")))
    assert seg6 is not None and seg6.src == ("::1", 40000) and seg6.payload == b"x"
    assert parse_segment(v4(tcp(8080), proto=17)) is None
    assert parse_segment(b"\x45" + b"\0" * 10) is None


def seg(seq: int, payload: bytes = b"", flags: int = ACK) -> Segment:
    return Segment(PEER, POD, seq, flags, payload)


def data(events: list[Event]) -> list[bytes]:
    return [e.data for e in events if e.kind == "data"]


def test_a_connection_in_order_with_retransmissions_and_reordering() -> None:
    flows = Reassembler()
    assert flows.feed(seg(5, b"too early")) == []  # no SYN seen: not followed
    assert flows.feed(seg(100, flags=SYN)) == [Event("new", KEY)]
    assert flows.feed(seg(100, flags=SYN)) == []  # the SYN again
    assert data(flows.feed(seg(101, b"abc"))) == [b"abc"]
    assert data(flows.feed(seg(101, b"abcdef"))) == [b"def"]  # retransmitted, with more
    assert flows.feed(seg(110, b"jk")) == []  # ahead of a gap: waits
    assert data(flows.feed(seg(107, b"ghi"))) == [b"ghi", b"jk"]
    assert flows.feed(seg(104, b"def")) == []  # old news
    assert flows.feed(seg(112, flags=ACK | FIN)) == [Event("end", KEY)]
    assert len(flows) == 0


def test_a_fin_before_the_last_bytes_ends_the_copy_once_they_came() -> None:
    flows = Reassembler()
    flows.feed(seg(0, flags=SYN))
    assert flows.feed(seg(4, b"late", flags=ACK | FIN)) == []
    assert flows.feed(seg(1, b"abc")) == [
        Event("data", KEY, b"abc"),
        Event("data", KEY, b"late"),
        Event("end", KEY),
    ]


def test_sequence_numbers_wrap() -> None:
    flows = Reassembler()
    flows.feed(seg(0xFFFFFFFE, flags=SYN))
    assert data(flows.feed(seg(0xFFFFFFFF, b"ab"))) == [b"ab"]
    assert data(flows.feed(seg(1, b"cd"))) == [b"cd"]


def test_reset_reuse_and_too_many_flows() -> None:
    flows = Reassembler(max_flows=2)
    flows.feed(seg(0, flags=SYN))
    assert flows.feed(seg(1, flags=RST)) == [Event("abort", KEY)]
    flows.feed(seg(0, flags=SYN))
    # The same 4-tuple with another SYN: the old connection is over.
    assert flows.feed(seg(500, flags=SYN)) == [Event("abort", KEY), Event("new", KEY)]
    other = Segment(("10.0.0.4", 1), POD, 0, SYN, b"")
    third = Segment(("10.0.0.5", 1), POD, 0, SYN, b"")
    flows.feed(other)
    flows.feed(seg(501, b"x"))  # KEY is the most recently active now
    events = flows.feed(third)  # full: the least recently active one goes
    assert events == [Event("lost", (other.src, POD)), Event("new", (third.src, POD))]


def test_a_gap_that_never_fills_ends_the_copy() -> None:
    flows = Reassembler()
    flows.feed(seg(0, flags=SYN))
    events: list[Event] = []
    for i in range(300):
        events += flows.feed(seg(10 + i * 2, b"xy"))
    assert events[-1] == Event("lost", KEY) and len(flows) == 0
