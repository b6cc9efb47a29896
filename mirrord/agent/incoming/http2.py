"""The I/O around `H2Router`: a filtered connection that started with the HTTP/2 client
preface. Reads each connection (peer socket, pod socket, the client's delivery), feeds
the router, and writes out what the router has for each one. Sides are opened lazily,
when the router first routes a stream to them; the pod side is one connection to the
pod's server (marked socket), the local side one delivered connection to the client
(the program then sees an HTTP/2 prior-knowledge connection from mirrord)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from mirrord.agent.incoming.delivery import Delivery
from mirrord.agent.incoming.h2_router import H2Router, Side
from mirrord.agent.incoming.http_filter import RequestRouter
from mirrord.agent.incoming.relay import CHUNK, OpenPod, Streams

log = logging.getLogger(__name__)


class _Outlet:
    """Where one connection's bytes go: a socket (the transport buffers; the h2 windows
    bound how much) or a delivery's bounded queue (a backlog waits for room, in order)."""

    def __init__(self, writer: asyncio.StreamWriter | None, delivery: Delivery | None) -> None:
        self.writer = writer
        self.delivery = delivery
        self._backlog: deque[bytes | None] = deque()
        self._draining: asyncio.Task[None] | None = None

    def send(self, data: bytes | None) -> None:
        """data None: end (EOF to the client, close of a socket)."""
        if self.writer is not None:
            if data is None:
                self.writer.close()
            elif not self.writer.is_closing():
                self.writer.write(data)
            return
        assert self.delivery is not None
        if not self._backlog:
            try:
                self.delivery.to_client.put_nowait(data)
                return
            except asyncio.QueueFull:
                pass
        self._backlog.append(data)
        if self._draining is None or self._draining.done():
            self._draining = asyncio.ensure_future(self._drain())

    async def _drain(self) -> None:
        assert self.delivery is not None
        while self._backlog:
            await self.delivery.to_client.put(self._backlog[0])
            self._backlog.popleft()

    async def close(self) -> None:
        self.send(None)
        if self._draining is not None:
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(self._draining), 2.0)
            self._draining.cancel()


class H2FilteredConnection:
    def __init__(
        self,
        peer: Streams,
        first: bytes,
        router: RequestRouter,
        open_pod: OpenPod,
        open_delivery: Callable[[str], Delivery],
    ) -> None:
        self.peer = peer
        self.first = first
        self.router = H2Router(router)
        self.open_pod = open_pod
        self.open_delivery = open_delivery
        self._outlets: dict[Side, _Outlet] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._done = asyncio.Event()

    async def run(self) -> None:
        self.router.receive_peer(self.first)
        self._flush()
        reading = self._spawn(self._read_peer())
        try:
            if not self.router.finished:
                await self._done.wait()
        finally:
            self._flush()
            for task in (reading, *self._tasks):
                task.cancel()
            await asyncio.gather(reading, *self._tasks, return_exceptions=True)
            for outlet in self._outlets.values():
                await outlet.close()
            log.info(
                "HTTP/2 filtered connection: %d streams stolen, %d passed to the pod",
                self.router.stolen,
                self.router.passed,
            )

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _read_peer(self) -> None:
        try:
            while data := await self.peer[0].read(CHUNK):
                self.router.receive_peer(data)
                self._flush()
        except OSError as e:
            log.debug("HTTP/2 peer: %s", e)
        finally:
            # However reading ends (an error of ours included), the connection does.
            self._done.set()
        self.router.peer_closed()
        self._flush()

    def _flush(self) -> None:
        """Open the sides the router started, write what every connection has to send,
        close the sides it is done with; the end when the router is."""
        router = self.router
        for side in list(router.sides):
            if side.wants_transport:
                side.transport_open = True
                self._spawn(self._open_side(side))
        for side in router.sides:
            outlet = self._outlets.get(side)
            if outlet is not None:  # else still opening: h2 keeps its bytes meanwhile
                data = side.conn.data_to_send()
                if data:
                    outlet.send(data)
        data = router.peer.data_to_send()
        if data and not self.peer[1].is_closing():
            self.peer[1].write(data)
        for side in router.idle_sides():
            router.side_closed(side)
            outlet = self._outlets.pop(side, None)
            if outlet is not None:
                self._spawn(outlet.close())
        if router.finished:
            self._done.set()

    async def _open_side(self, side: Side) -> None:
        opened = False
        try:
            if side.target == "pod":
                reader, writer = await self.open_pod()
                self._outlets[side] = _Outlet(writer, None)
                opened = True
                self._flush()
                await self._read_side(side, lambda: reader.read(CHUNK))
            else:
                delivery = self.open_delivery(side.target)
                if not await delivery.wait_attached():
                    raise ConnectionError("the client did not take the filtered connection")
                self._outlets[side] = _Outlet(None, delivery)
                opened = True
                self._flush()
                await self._read_side(side, delivery.from_client.get)
        except (OSError, ConnectionError) as e:
            log.info("HTTP/2 %s side: %s", side.name, e)
            self.router.side_closed(side, refused=not opened)
        except Exception:
            log.exception("HTTP/2 %s side failed", side.name)
            self.router.side_closed(side, refused=not opened)
        else:
            self.router.side_closed(side)
        outlet = self._outlets.pop(side, None)
        if outlet is not None:
            await outlet.close()
        self._flush()

    async def _read_side(self, side: Side, read: Callable[[], Awaitable[bytes | None]]) -> None:
        while True:
            data = await read()
            if not data:
                return
            self.router.receive_side(side, data)
            self._flush()
            if side.closed:
                return
