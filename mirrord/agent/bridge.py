"""Two TCP connections joined in the agent: what one side receives is written to the
other by a pair of asyncio protocols, one callback and one send per chunk, no task or
queue (the direct connections of a local agent: outgoing and stolen incoming ones).

Flow control: when a side's transport cannot take more, the other side stops reading.
Half-closes are passed on as they come. `done` is True once both directions ended with an
EOF, False when either side was lost first. Bytes a side receives before the other side
is joined are kept and written once it is.

Closing: clean, each socket's SO_LINGER is turned off first (a FIN); otherwise both are
aborted, which is a reset for a socket whose owner set SO_LINGER 0 (a dying agent's
sockets are reset by the kernel the same way).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from typing import Any

LINGER_RESET = struct.pack("ii", 1, 0)
LINGER_OFF = struct.pack("ii", 0, 0)


def set_linger(sock: Any, value: bytes) -> None:  # a socket, or a transport's TransportSocket
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, value)


class Half(asyncio.Protocol):
    """One side: its transport's bytes go to the other side's transport."""

    def __init__(self, bridge: Bridge) -> None:
        self.bridge = bridge
        self.transport: asyncio.Transport | None = None
        self.other: Half | None = None
        self.eof = False  # this side's EOF was passed on
        self._early: list[bytes] = []
        self._early_eof = False
        # The other side is joined and what came before went to it (flush). Its transport
        # alone is not enough: an EOF passed on before the early bytes would lose them.
        self._joined = False

    def _out(self) -> asyncio.Transport | None:
        if not self._joined or self.other is None:
            return None
        return self.other.transport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        out = self._out()
        if out is None:
            self._early.append(data)
        else:
            out.write(data)

    def eof_received(self) -> bool:
        out = self._out()
        if out is None:
            self._early_eof = True
        else:
            self._pass_eof(out)
        return True  # half-closed: the other direction goes on

    def _pass_eof(self, out: asyncio.Transport) -> None:
        self.eof = True
        if out.can_write_eof():
            out.write_eof()
        self.bridge.check_done()

    def flush(self) -> None:
        """The other side is joined now: what came before goes to it."""
        out = self.other.transport if self.other is not None else None
        assert out is not None
        self._joined = True
        for data in self._early:
            out.write(data)
        self._early.clear()
        if self._early_eof:
            self._pass_eof(out)

    def pause_writing(self) -> None:
        # Our transport's buffer is full of the other side's bytes: stop reading them.
        if self.other is not None and self.other.transport is not None:
            self.other.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.other is not None and self.other.transport is not None:
            self.other.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.bridge.lost()


class Bridge:
    def __init__(self) -> None:
        self.done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self.a = Half(self)
        self.b = Half(self)
        self.a.other, self.b.other = self.b, self.a

    async def attach(self, half: Half, sock: socket.socket) -> None:
        """Join a connected socket as `half` (its transport then owns the socket)."""
        await asyncio.get_running_loop().create_connection(lambda: half, sock=sock)
        assert half.other is not None
        half.other.flush()

    def adopt(
        self, half: Half, transport: asyncio.Transport, early: list[bytes], eof: bool
    ) -> None:
        """Join an existing transport (reading paused) as `half`, with the bytes (and
        EOF) its earlier protocol received."""
        half.transport = transport
        transport.set_protocol(half)
        assert half.other is not None
        half.other.flush()
        for data in early:
            half.data_received(data)
        if eof:
            half.eof_received()
        else:
            transport.resume_reading()

    def check_done(self) -> None:
        if self.a.eof and self.b.eof and not self.done.done():
            self.done.set_result(True)

    def lost(self) -> None:
        if not self.done.done():
            self.done.set_result(self.a.eof and self.b.eof)

    def ended_cleanly(self) -> bool:
        """Both directions ended with an EOF. (`done` is cancelled with whoever awaited
        it: a cancelled wait is no clean end.)"""
        d = self.done
        return d.done() and not d.cancelled() and d.result()

    def joined(self, half: Half) -> bool:
        return half.transport is not None

    def close(self, clean: bool) -> None:
        for half in (self.a, self.b):
            if half.transport is None:
                continue
            if clean:
                set_linger(half.transport.get_extra_info("socket"), LINGER_OFF)
                half.transport.close()
            else:
                half.transport.abort()
