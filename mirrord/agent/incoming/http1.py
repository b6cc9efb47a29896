"""Steal with an HTTP filter, for HTTP/1.x: each request on a (keep-alive) connection goes
either to the client (it matches) or to the pod's server, and its response comes back to
the peer, in order.

Plain HTTP/1.1 requests (http1_framing.py says which) and their responses go as the
bytes that came: only the request head is parsed (for the route), and where each message
ends. From the first request that is not plain (another version, a chunked or large body,
Expect, Upgrade) the connection is h11's: it parses both sides, the peer's requests (h11 as
server) and each side's responses (h11 as client), and re-serialises them, so framing may
change (e.g. a response without length to an HTTP/1.1 peer becomes chunked), as with any
HTTP proxy. Both sides are opened lazily, at the first request that needs them. A
connection that starts with the HTTP/2 client preface is filtered per stream (http2.py);
one that does not start with an HTTP/1.x request or that preface (TLS, anything else) is
passed through to the pod's server whole: only matching requests are ever stolen.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import h11

from mirrord.agent.incoming.delivery import Delivery
from mirrord.agent.incoming.hooked import Hooked, hooked_of
from mirrord.agent.incoming.http1_framing import (
    MAX_HEAD,
    RequestHead,
    ResponseFramer,
    request_at,
)
from mirrord.agent.incoming.http1_lane import Handback, Http1Lane
from mirrord.agent.incoming.http2 import H2FilteredConnection
from mirrord.agent.incoming.http_filter import Request, RequestRouter
from mirrord.agent.incoming.relay import CHUNK, OpenPod, Streams, pipe

log = logging.getLogger(__name__)

H2_PREFACE = b"PRI * HTTP/2.0"


@dataclass
class Side:
    """Where requests go: the pod's server (a socket) or the client (a Delivery)."""

    name: str
    key: str | None = None  # the program's target key (None: the pod)
    conn: h11.Connection = field(default_factory=lambda: h11.Connection(h11.CLIENT))
    streams: Streams | None = None
    delivery: Delivery | None = None
    pending: bytearray = field(default_factory=bytearray)  # read, not yet the peer's
    _pod_hooked: Hooked | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        if self.streams is not None:
            self._pod_hooked = hooked_of(self.streams)

    @property
    def hooked(self) -> Hooked | None:
        """The stream a lane may take the answers of: the pod's, or a program's reached
        by direct delivery (set when the delivery is attached)."""
        if self.delivery is not None:
            return self.delivery.hooked
        return self._pod_hooked

    async def write(self, data: bytes) -> None:
        if self.delivery is not None:
            if self.delivery.send is not None:
                await self.delivery.send(data)  # straight to the local program
            else:
                await self.delivery.to_client.put(data)
        else:
            assert self.streams is not None
            self.streams[1].write(data)
            await self.streams[1].drain()

    async def read(self) -> bytes:
        if self.delivery is not None:
            if self.delivery.recv is not None:
                return await self.delivery.recv()  # straight from the local program
            return await self.delivery.from_client.get() or b""
        assert self.streams is not None
        if self._pod_hooked is not None:
            return await self._pod_hooked.read(CHUNK)  # counted: a lane may take it next
        return await self.streams[0].read(CHUNK)

    def close(self) -> None:
        if self.streams is not None:
            self.streams[1].close()
        if self.delivery is not None:
            with contextlib.suppress(asyncio.QueueFull):
                self.delivery.to_client.put_nowait(None)


def _as_request(event: h11.Request) -> Request:
    return Request(
        method=event.method.decode("latin-1"),
        target=event.target.decode("latin-1"),
        headers=[(n.decode("latin-1"), v.decode("latin-1")) for n, v in event.headers.raw_items()],
    )


class FilteredConnection:
    def __init__(
        self,
        peer: Streams,
        router: RequestRouter,
        open_pod: OpenPod,
        open_delivery: Callable[[str], Delivery],
    ) -> None:
        """open_delivery(key): a delivered connection to the target `router` named."""
        self.peer = peer
        self.router = router
        self.open_pod = open_pod
        self.open_delivery = open_delivery
        self.inbound = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
        self.pod: Side | None = None
        self.locals: dict[str, Side] = {}  # by target key, each opened at its first request
        self.stolen = 0
        self.passed = 0
        self.laned = 0  # of both: those a lane forwarded
        self._forwarded = False  # the fast path sent a request on

    async def run(self) -> None:
        try:
            rest = await self._plain_requests()
            if rest is None:
                return
            self._to_h11()
            if self._forwarded:  # mid-connection: h11 as if it had had it from the start
                self.inbound.receive_data(bytes(rest))
                self._pending_first = await self._peer_event()
            elif not await self._first_request(bytes(rest)):
                return
            await self._requests()
        finally:
            for side in (self.pod, *self.locals.values()):
                if side is not None:
                    side.close()

    async def _plain_requests(self) -> bytearray | None:
        """The fast path: plain requests and their responses forwarded as they came.
        Returns what was read of the first request that is not plain (h11 takes the
        connection from its start), or None once the connection is over. Once a request
        went to a side, the exchanges that follow run in callbacks (http1_lane.py) while
        they can; the lane hands back here at anything else."""
        buf = bytearray()
        # The peer's reads are counted when a lane may take its bytes (not through a
        # mirror's tee: its copies would miss them).
        peer = hooked_of(self.peer)
        read = peer.read if peer is not None else self.peer[0].read
        lane_ok = False  # a lane hands back without progress: not again until the task made some
        while True:
            lane = self._lane(peer, buf) if lane_ok else None
            if lane is not None:
                lane_ok = False
                back = await self._run_lane(lane)
                buf = back.buf
                if back.framer is not None:
                    side = self._by_key(back.key)
                    if not await self._plain_response(side, False, back.framer) or back.close:
                        return None
                continue
            req = request_at(buf)
            if req is None:
                return buf
            if not isinstance(req, RequestHead):  # MORE
                data = await read(CHUNK)
                if not data:
                    return buf if buf else None  # a request cut short: h11 says what it is
                buf += data
                continue
            need = req.size + req.body
            side = await self._side(Request(req.method, req.target, req.headers))
            self._forwarded = True
            await side.write(bytes(buf[:need]))
            del buf[:need]
            if not await self._plain_response(side, req.method == "HEAD") or req.close:
                return None
            lane_ok = True

    def _lane(self, peer: Hooked | None, buf: bytearray) -> Http1Lane | None:
        """A lane for what follows, when the peer and the sides opened so far are idle
        (nothing read and not forwarded)."""
        if peer is None or not peer.idle():
            return None
        sides: dict[str | None, Hooked] = {}
        for side in (self.pod, *self.locals.values()):
            hooked = side.hooked if side is not None else None
            if side is not None and hooked is not None and not side.pending and hooked.idle():
                sides[side.key] = hooked
        if not sides:
            return None
        return Http1Lane(peer, sides, self.router.route, self._count, buf)

    def _count(self, key: str | None) -> None:
        if key is None:
            self.passed += 1
        else:
            self.stolen += 1
        self.laned += 1

    def _by_key(self, key: str | None) -> Side:
        side = self.locals[key] if key is not None else self.pod
        assert side is not None
        return side

    async def _run_lane(self, lane: Http1Lane) -> Handback:
        lane.start()
        try:
            back = await lane.done
        finally:
            lane.detach()
        for key, data in back.pending.items():
            self._by_key(key).pending += data  # before what their readers get from now on
        if back.error is not None:
            raise back.error
        return back

    async def _plain_response(
        self, side: Side, head_request: bool, framer: ResponseFramer | None = None
    ) -> bool:
        """The side's answer, forwarded as it comes; whether the connection goes on.
        `framer`: an answer a lane began (head_request is then its own)."""
        framer = framer or ResponseFramer(head_request)
        buf = side.pending
        writer = self.peer[1]
        while True:
            n = framer.take(buf)
            if n:
                writer.write(bytes(buf[:n]))
                del buf[:n]
            if framer.done:
                await writer.drain()
                return framer.keep_alive
            await writer.drain()
            data = await side.read()
            if not data:
                if framer.until_close:
                    return False  # the response ended with the side's close
                raise ConnectionError(f"the {side.name} closed before answering")
            buf += data

    def _to_h11(self) -> None:
        """Sides opened by the fast path go on under h11 (at a request boundary, as its
        fresh state expects) with what they sent beyond their last answer."""
        for side in (self.pod, *self.locals.values()):
            if side is not None and side.pending:
                side.conn.receive_data(bytes(side.pending))
                side.pending.clear()

    async def _first_request(self, initial: bytes) -> bool:
        """Feed h11 (`initial`, what was read already, first) until the first request
        head: True. False when the connection was something else, handled here (HTTP/2
        filtered per stream, anything not HTTP/1.x passed through) or ended."""
        seen = b""
        while True:
            data = initial or await self.peer[0].read(CHUNK)
            initial = b""
            seen += data
            if not data:
                return False
            if H2_PREFACE.startswith(seen[: len(H2_PREFACE)]) and len(seen) < len(H2_PREFACE):
                continue
            if seen.startswith(H2_PREFACE):
                await H2FilteredConnection(
                    self.peer, seen, self.router, self.open_pod, self.open_delivery
                ).run()
                return False
            self.inbound.receive_data(data)
            try:
                event = self.inbound.next_event()
            except h11.RemoteProtocolError:
                await self._pass_through(seen, "not HTTP/1.x")
                return False
            if event is h11.NEED_DATA:
                continue
            self._pending_first = event
            return True

    async def _pass_through(self, seen: bytes, why: str) -> None:
        log.info("filtered connection passed through whole: %s", why)
        reader, writer = await self.open_pod()
        try:
            writer.write(seen)
            await writer.drain()
            await asyncio.gather(pipe(self.peer[0], writer), pipe(reader, self.peer[1]))
        finally:
            writer.close()

    async def _peer_event(self) -> Any:
        while True:
            event = self.inbound.next_event()
            if event is not h11.NEED_DATA:
                return event
            self.inbound.receive_data(await self.peer[0].read(CHUNK))

    async def _side(self, request: Request) -> Side:
        key = self.router.route(request)
        if key is not None:
            self.stolen += 1
            local = self.locals.get(key)
            if local is None:
                delivery = self.open_delivery(key)
                delivery.pulls_answers = True  # Side.read: Delivery.recv when direct
                local = self.locals[key] = Side(f"client {key}", key, delivery=delivery)
                if not await delivery.wait_attached():
                    raise ConnectionError("the client did not take the filtered connection")
            return local
        self.passed += 1
        if self.pod is None:
            self.pod = Side("pod", streams=await self.open_pod())
        return self.pod

    async def _requests(self) -> None:
        event: Any = self._pending_first
        while True:
            if isinstance(event, h11.ConnectionClosed):
                return
            if not isinstance(event, h11.Request):
                raise h11.RemoteProtocolError(f"expected a request, got {event!r}")
            side = await self._side(_as_request(event))
            head = side.conn.send(
                h11.Request(
                    method=event.method, target=event.target, headers=event.headers.raw_items()
                )
            )
            sent, whole = self._parsed_request(side, head or b"")
            if whole:  # most requests: all parsed already, no task per direction
                await side.write(sent)
                await self._response(side)
            else:  # a body still coming: read the answer meanwhile (it may come first)
                await asyncio.gather(self._request_body(side, sent), self._response(side))
            if (
                self.inbound.our_state is h11.MUST_CLOSE
                or self.inbound.their_state is h11.MUST_CLOSE
            ):
                return
            self.inbound.start_next_cycle()
            if side.conn.our_state is h11.DONE and side.conn.their_state is h11.DONE:
                side.conn.start_next_cycle()
            else:
                side.close()
                if side is self.pod:
                    self.pod = None
                else:
                    self.locals = {k: v for k, v in self.locals.items() if v is not side}
            event = await self._peer_event()

    # Both directions gather what h11 has parsed already (a head, its body, the end) into
    # one write: a GET and its answer then cost one send each way, not three.

    def _parsed_request(self, side: Side, head: bytes) -> tuple[bytes, bool]:
        """The request as far as h11 has parsed it, re-serialised for `side`, and whether
        that is all of it (its end included)."""
        pending = bytearray(head)
        while True:
            event = self.inbound.next_event()
            if not isinstance(event, h11.Event):  # NEED_DATA
                return bytes(pending), False
            pending += side.conn.send(event) or b""
            if isinstance(event, h11.EndOfMessage):
                return bytes(pending), True

    async def _request_body(self, side: Side, head: bytes) -> None:
        pending = bytearray(head)
        while True:
            event = self.inbound.next_event()
            if not isinstance(event, h11.Event):  # NEED_DATA (PAUSED only after the end)
                if pending:
                    await side.write(bytes(pending))
                    pending.clear()
                self.inbound.receive_data(await self.peer[0].read(CHUNK))
                continue
            pending += side.conn.send(event) or b""
            if isinstance(event, h11.EndOfMessage):
                await side.write(bytes(pending))
                return

    async def _response(self, side: Side) -> None:
        pending = bytearray()
        writer = self.peer[1]
        while True:
            event = side.conn.next_event()
            if not isinstance(event, h11.Event):  # NEED_DATA (PAUSED only after the end)
                if pending:
                    writer.write(pending)
                    pending = bytearray()
                    await writer.drain()
                side.conn.receive_data(await side.read())
                continue
            if isinstance(event, h11.ConnectionClosed):
                raise ConnectionError(f"the {side.name} closed before answering")
            if isinstance(event, h11.InformationalResponse | h11.Response):
                event = type(event)(
                    status_code=event.status_code,
                    headers=event.headers.raw_items(),
                    reason=event.reason,
                )
            pending += self.inbound.send(event) or b""
            if isinstance(event, h11.EndOfMessage):
                writer.write(pending)
                await writer.drain()
                return
