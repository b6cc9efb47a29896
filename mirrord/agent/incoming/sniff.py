"""The packet socket a mirror reads its copies from (tcpflow.py has the what and why).

An AF_PACKET SOCK_DGRAM socket (the network header first, whatever the link type: veth,
loopback, tunnels) made in the target's netns on its namespace worker, with the port's
BPF filter attached before anything is read; what came in before the filter is thrown
away. Needs CAP_NET_RAW (the DaemonSet has it). Packets the pod sends (PACKET_OUTGOING:
on loopback each packet shows twice) and, with ignore_localhost, packets on loopback
are skipped.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import socket
import struct
from collections.abc import Callable

from mirrord.agent.incoming.tcpflow import SNAPLEN, Event, Reassembler, parse_segment, port_filter

log = logging.getLogger(__name__)

ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4
SO_ATTACH_FILTER = 26
SO_RCVBUFFORCE = 33
# Bursts wait here while the loop is busy (a 4 MiB body in 1448-byte segments takes about
# 7 MiB of it); more than it holds, arriving faster than we read, loses that copy.
RCVBUF = 16 << 20
BATCH = 256  # packets read per wake-up before other work gets a turn


def make_sniffer(port: int) -> socket.socket:
    """The filtered packet socket for `port` in the current (the target's) netns."""
    sock = socket.socket(
        socket.AF_PACKET,
        socket.SOCK_DGRAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC,
        socket.htons(ETH_P_ALL),
    )
    try:
        program = port_filter(port)
        buf = ctypes.create_string_buffer(program, len(program))
        fprog = struct.pack("HL", len(program) // 8, ctypes.addressof(buf))
        sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RCVBUF)
        except PermissionError:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
        while True:  # unfiltered packets from before the filter
            try:
                sock.recv(1)
            except BlockingIOError:
                break
    except BaseException:
        sock.close()
        raise
    return sock


class Sniffer:
    """Reads the socket on the loop and hands each connection event to `on_event`."""

    def __init__(
        self, sock: socket.socket, on_event: Callable[[Event], None], skip_loopback: bool
    ) -> None:
        self.sock = sock
        self.flows = Reassembler()
        self._on_event = on_event
        self._skip_loopback = skip_loopback
        self._buf = bytearray(SNAPLEN)
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self.sock.fileno(), self._ready)

    def close(self) -> None:
        if self._loop is not None:
            self._loop.remove_reader(self.sock.fileno())
            self._loop = None
        self.sock.close()

    def _ready(self) -> None:
        view = memoryview(self._buf)
        for _ in range(BATCH):
            try:
                n, addr = self.sock.recvfrom_into(self._buf)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                log.warning("mirror: reading packets failed: %s", e)
                return
            if addr[2] == PACKET_OUTGOING or (self._skip_loopback and addr[0] == "lo"):
                continue
            seg = parse_segment(bytes(view[:n]))
            if seg is None:
                continue
            for event in self.flows.feed(seg):
                self._on_event(event)
