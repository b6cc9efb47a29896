"""Streams whose bytes a callback can take before their reader sees them.

An asyncio stream wakes its reading task once per chunk; a keep-alive exchange of small
requests and answers pays that wake-up (a loop turn, a task step) twice per request. A
`Hooked` stream is an ordinary StreamReader/StreamWriter pair, but while a `Lane` is
attached its bytes, end and loss go to the lane's callbacks instead, and the task that
owns the stream waits meanwhile. The lane detaches itself when it meets anything it does
not handle, handing its state back to the task; from then on the reader gets what comes,
in order after what the lane handed back.

A lane may only be attached while the reader holds nothing unread (`Hooked.idle`), or
bytes would be seen out of order.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable
from typing import Any, Protocol


class Lane(Protocol):
    def take(self, stream: Hooked, data: bytes) -> None:
        """Bytes that came on `stream` (the lane owns them now)."""

    def ended(self, stream: Hooked) -> None:
        """`stream` ended or was lost: the lane hands back (the reader gets the end)."""


class Hooked(asyncio.StreamReaderProtocol):
    """A stream's protocol with an optional lane in front of its reader."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        connected: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
        | None = None,
    ) -> None:
        super().__init__(reader, connected)
        self.reader = reader
        self.lane: Lane | None = None
        self.fed = 0  # bytes given to the reader
        self.consumed = 0  # bytes its owner says it read (`read`)
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        super().connection_made(transport)

    def data_received(self, data: bytes) -> None:
        lane = self.lane
        if lane is not None:
            lane.take(self, data)
            return
        self.fed += len(data)
        super().data_received(data)

    def eof_received(self) -> bool:
        if self.lane is not None:
            self.lane.ended(self)
        return bool(super().eof_received())

    def connection_lost(self, exc: Exception | None) -> None:
        if self.lane is not None:
            self.lane.ended(self)
        super().connection_lost(exc)
        # The loss is also kept on a future of StreamReaderProtocol's for wait_closed(),
        # which nobody here awaits; asyncio marks it seen when the protocol is freed, but
        # a Hooked is in a cycle with that exception (its frames' tracebacks), and the
        # collector may free the future first: "Future exception was never retrieved".
        closed = getattr(self, "_closed", None)
        if isinstance(closed, asyncio.Future) and closed.done() and not closed.cancelled():
            closed.exception()

    async def read(self, n: int) -> bytes:
        """reader.read(n), counted: a lane may attach once all that came was read."""
        data = await self.reader.read(n)
        self.consumed += len(data)
        return data

    def idle(self) -> bool:
        """Nothing unread in the reader, no end seen, not lost or closing: a lane may
        attach (it would never hear of an end that came before)."""
        transport = self.transport
        return (
            self.fed == self.consumed
            and not self.reader.at_eof()
            and self.reader.exception() is None
            and transport is not None
            and not transport.is_closing()
        )


def hooked_of(streams: tuple[Any, Any]) -> Hooked | None:
    """The stream of a (reader, writer) pair if it is hooked and its reader is the one
    read (not a tee in front of it, nor streams made elsewhere)."""
    reader, writer = streams
    if not isinstance(writer, asyncio.StreamWriter):
        return None
    protocol = writer.transport.get_protocol()
    if isinstance(protocol, Hooked) and protocol.reader is reader:
        return protocol
    return None


async def start_server(
    connected: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
    sock: socket.socket,
) -> asyncio.Server:
    """asyncio.start_server on a listening socket, each connection's stream `Hooked`."""
    loop = asyncio.get_running_loop()
    return await loop.create_server(lambda: Hooked(asyncio.StreamReader(), connected), sock=sock)


async def open_connection(
    sock: socket.socket, limit: int = 2**16
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """asyncio.open_connection on a connected socket, its stream `Hooked`."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=limit)
    transport, protocol = await loop.create_connection(lambda: Hooked(reader), sock=sock)
    return reader, asyncio.StreamWriter(transport, protocol, reader, loop)
