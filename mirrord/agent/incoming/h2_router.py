"""Steal with an HTTP filter, for HTTP/2 (prior knowledge, so gRPC too): per stream.

Sans-I/O: an `H2Router` holds three HTTP/2 connections as h2 state machines and moves
frames between them; its caller (`http2.py`) moves bytes between them and the sockets.

- `peer`: the redirected client, h2 server side.
- a `Side` per destination (`"pod"`: the pod's server; else a target the router named: a
  session's program over a delivered connection), h2 client side. A side is created at
  the first stream routed to it (the caller sees `Side.wants_transport` and opens it);
  bytes for it wait in its h2 buffer meanwhile. A side that sent GOAWAY takes no new
  stream: the next one makes a fresh side of the same target.

Per stream (`Route`): the request's headers decide the target (`HttpFilter`, on the
headers as `request_of` renders them), then frames flow both ways in order through two
`Pump`s (peer → side: headers, data, trailers, end; side → peer: the response). Stream IDs
differ on each connection; a route maps the peer's ID to the side's.

Flow control is end to end: data received on one connection is acknowledged (its window
re-opened) only once it was handed to the other one, so a slow receiver slows the
sender down and buffering per stream is bounded by the windows we advertise.

RST_STREAM goes across with its error code. A side's GOAWAY refuses (REFUSED_STREAM, safe
to retry) the streams it did not process; a side that fails or closes resets its
streams on the peer. The peer's GOAWAY ends the router once its streams are done.
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings

from mirrord.agent.incoming.http_filter import Request, RequestRouter

# "pod", or the key of a client-side target the RequestRouter named (a session).
Target = str
POD: Target = "pod"
Headers = list[tuple[bytes, bytes]]

# What we advertise as a receiver on every connection. Bytes are acknowledged only once
# forwarded, so these bound what one stream / one connection can have in flight in the
# agent; bigger than the 64 KiB default so a bulk stream is not window-bound.
STREAM_WINDOW = 1 << 20
CONNECTION_WINDOW = 4 << 20
MAX_CONCURRENT_STREAMS = 100


def request_of(headers: Sequence[tuple[bytes, bytes]]) -> Request:
    """The request as the HTTP filter sees it: `:method` is the method, `:path` the
    request-target; regular headers are matched as `name: value`, and `:authority` as
    `host: value` when there is no `host` header (HTTP/2's Host), so a filter written for
    HTTP/1.1 matches the same requests over HTTP/2. Other pseudo-headers are not headers."""
    method = target = ""
    authority: str | None = None
    regular: list[tuple[str, str]] = []
    for raw_name, raw_value in headers:
        name, value = raw_name.decode("latin-1"), raw_value.decode("latin-1")
        if name == ":method":
            method = value
        elif name == ":path":
            target = value
        elif name == ":authority":
            authority = value
        elif not name.startswith(":"):
            regular.append((name, value))
    if authority is not None and not any(n.lower() == "host" for n, _ in regular):
        regular.append(("host", authority))
    return Request(method=method, target=target, headers=regular)


def _connection(client_side: bool) -> h2.connection.H2Connection:
    conn = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=client_side, header_encoding=None)
    )
    settings: dict[h2.settings.SettingCodes, int] = {
        h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
        h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: MAX_CONCURRENT_STREAMS,
    }
    if client_side:
        settings[h2.settings.SettingCodes.ENABLE_PUSH] = 0  # pushes would have no peer stream
    conn.local_settings = h2.settings.Settings(client=client_side, initial_values=settings)
    conn.initiate_connection()
    conn.increment_flow_control_window(CONNECTION_WINDOW - 65535)
    return conn


@dataclass
class _Item:
    """One thing to pass on, in order: headers (end_stream or not), data, or end."""

    kind: Literal["headers", "data", "end"]
    headers: Headers | None = None
    data: bytes = b""
    flow: int = 0  # flow-controlled length (data + padding) still to acknowledge
    end: bool = False


@dataclass
class Pump:
    """One direction of one stream: items from `src`'s stream to `dst`'s, in order,
    within `dst`'s flow-control window."""

    src: h2.connection.H2Connection
    src_id: int
    dst: h2.connection.H2Connection | None = None
    dst_id: int | None = None
    items: deque[_Item] = field(default_factory=deque)
    finished: bool = False  # the end went out, or the stream was reset

    def push(self, item: _Item) -> None:
        if self.finished:
            self._ack(item)
        else:
            self.items.append(item)

    def _ack(self, item: _Item) -> None:
        if item.flow:
            self.src.acknowledge_received_data(item.flow, self.src_id)
            item.flow = 0

    def discard(self) -> None:
        """Reset: nothing more goes out; what was received is acknowledged all the same
        (the connection's window must not shrink for good)."""
        self.finished = True
        while self.items:
            self._ack(self.items.popleft())

    def pump(self) -> None:
        if self.dst is None or self.dst_id is None or self.finished:
            return
        dst, sid = self.dst, self.dst_id
        try:
            while self.items:
                item = self.items[0]
                if item.kind == "headers":
                    assert item.headers is not None
                    dst.send_headers(sid, item.headers, end_stream=item.end)
                elif item.kind == "end":
                    dst.end_stream(sid)
                else:
                    window = min(dst.local_flow_control_window(sid), dst.max_outbound_frame_size)
                    if window <= 0 and item.data:
                        return
                    chunk = item.data[:window]
                    last = len(chunk) == len(item.data)
                    dst.send_data(sid, chunk, end_stream=item.end and last)
                    item.data = item.data[len(chunk) :]
                    sent_flow = item.flow if last else min(item.flow, len(chunk))
                    if sent_flow:
                        self.src.acknowledge_received_data(sent_flow, self.src_id)
                        item.flow -= sent_flow
                    if not last:
                        continue
                self.items.popleft()
                if item.end or item.kind == "end":
                    self.finished = True
                    return
        except h2.exceptions.StreamClosedError:
            self.discard()  # the receiver reset it meanwhile; its reset is relayed apart


@dataclass
class Route:
    """One peer stream and where it went."""

    peer_id: int
    side: Side
    up: Pump  # peer -> side
    down: Pump  # side -> peer
    side_id: int | None = None

    @property
    def done(self) -> bool:
        return self.up.finished and self.down.finished


class Side:
    """One HTTP/2 client connection to a destination."""

    def __init__(self, target: Target, generation: int) -> None:
        self.target = target
        self.name = f"{target}#{generation}"
        self.conn = _connection(client_side=True)
        self.routes: dict[int, Route] = {}  # by side stream ID
        self.waiting: deque[Route] = deque()  # routed here, no stream yet (concurrency limit)
        self.going_away = False  # GOAWAY received: no new streams
        self.closed = False
        self.transport_open = False  # set by the caller

    @property
    def wants_transport(self) -> bool:
        return not self.transport_open and not self.closed

    @property
    def idle(self) -> bool:
        return not self.routes and not self.waiting

    def can_open_stream(self) -> bool:
        limit = self.conn.remote_settings.max_concurrent_streams
        return not self.going_away and self.conn.open_outbound_streams < limit


class H2Router:
    def __init__(self, router: RequestRouter) -> None:
        self.router = router
        self.peer = _connection(client_side=False)
        self.routes: dict[int, Route] = {}  # by peer stream ID
        self.sides: list[Side] = []
        self._generation = 0
        self.peer_going_away = False
        self.failed = False  # a protocol error on the peer connection: GOAWAY queued
        self.stolen = 0
        self.passed = 0

    # --- state the caller looks at -----------------------------------------------------

    @property
    def finished(self) -> bool:
        return self.failed or (self.peer_going_away and not self.routes)

    def idle_sides(self) -> list[Side]:
        """Sides with nothing left to do that will get no new stream: to close."""
        return [s for s in self.sides if s.going_away and s.idle and not s.closed]

    # --- input -------------------------------------------------------------------------

    def receive_peer(self, data: bytes) -> None:
        try:
            events = self.peer.receive_data(data)
        except h2.exceptions.ProtocolError:
            self.failed = True  # h2 queued the GOAWAY for the peer
            return
        for event in events:
            self._peer_event(event)
        self._pump_all()

    def receive_side(self, side: Side, data: bytes) -> None:
        try:
            events = side.conn.receive_data(data)
        except h2.exceptions.ProtocolError:
            self.side_closed(side, h2.errors.ErrorCodes.PROTOCOL_ERROR)
            return
        for event in events:
            self._side_event(side, event)
        self._start_waiting(side)
        self._pump_all()

    def side_closed(
        self, side: Side, code: int = h2.errors.ErrorCodes.CANCEL, *, refused: bool = False
    ) -> None:
        """The side's transport is gone (or could not be opened: `refused`, nothing of
        ours was processed there): its streams are reset on the peer."""
        if side.closed:
            return
        side.closed = True
        if side in self.sides:
            self.sides.remove(side)
        for route in [*side.routes.values(), *side.waiting]:
            self._reset_peer(route, h2.errors.ErrorCodes.REFUSED_STREAM if refused else code)
        side.routes.clear()
        side.waiting.clear()
        self._pump_all()

    def peer_closed(self) -> None:
        for route in list(self.routes.values()):
            self._forget(route)
            if route.side_id is not None and not route.side.closed:
                self._reset_side(route, h2.errors.ErrorCodes.CANCEL)
        self.peer_going_away = True

    # --- the peer's events -------------------------------------------------------------

    def _peer_event(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.RequestReceived):
            assert event.stream_id is not None and event.headers is not None
            self._new_stream(event.stream_id, list(event.headers), event.stream_ended is not None)
            return
        route = self.routes.get(getattr(event, "stream_id", None) or 0)
        if isinstance(event, h2.events.DataReceived):
            if route is None:  # a stream we reset: only the connection window matters
                self._ack_orphan(self.peer, event)
                return
            route.up.push(
                _Item("data", data=event.data or b"", flow=event.flow_controlled_length or 0)
            )
        elif isinstance(event, h2.events.TrailersReceived) and route is not None:
            route.up.push(_Item("headers", headers=list(event.headers or ()), end=True))
        elif isinstance(event, h2.events.StreamEnded) and route is not None:
            self._push_end(route.up)
        elif isinstance(event, h2.events.StreamReset) and route is not None:
            route.up.discard()
            route.down.discard()
            if route.side_id is not None:
                self._reset_side(route, event.error_code or 0)
            else:
                self._unwait(route)
            self._forget(route)
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.peer_going_away = True

    def _new_stream(self, peer_id: int, headers: Headers, ended: bool) -> None:
        key = self.router.route(request_of(headers))
        target: Target = POD if key is None else key
        if key is not None:
            self.stolen += 1
        else:
            self.passed += 1
        side = self._side_for(target)
        route = Route(peer_id, side, up=Pump(self.peer, peer_id), down=Pump(side.conn, 0))
        route.up.push(_Item("headers", headers=headers, end=ended))
        self.routes[peer_id] = route
        side.waiting.append(route)
        self._start_waiting(side)

    def _side_for(self, target: Target) -> Side:
        for side in self.sides:
            if side.target == target and not side.going_away:
                return side
        self._generation += 1
        side = Side(target, self._generation)
        self.sides.append(side)
        return side

    def _start_waiting(self, side: Side) -> None:
        """Give waiting routes a stream on their side, in arrival order (stream IDs must
        grow), as far as the side's concurrency limit allows."""
        while side.waiting and side.can_open_stream():
            route = side.waiting.popleft()
            side_id = side.conn.get_next_available_stream_id()
            route.side_id = side_id
            route.up.dst, route.up.dst_id = side.conn, side_id
            route.down.src_id = side_id
            route.down.dst, route.down.dst_id = self.peer, route.peer_id
            side.routes[side_id] = route
            route.up.pump()  # the headers open the stream: they go out now, in ID order
        if side.going_away and side.waiting:
            # Streams GOAWAY left without a place go to a fresh side of the same target.
            fresh = self._side_for(side.target)
            while side.waiting:
                route = side.waiting.popleft()
                route.side = fresh
                route.down.src = fresh.conn
                fresh.waiting.append(route)
            self._start_waiting(fresh)

    # --- a side's events ---------------------------------------------------------------

    def _side_event(self, side: Side, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.ConnectionTerminated):
            side.going_away = True
            last = event.last_stream_id if event.last_stream_id is not None else 0
            for side_id, gone in list(side.routes.items()):
                if side_id > last:  # never processed: the peer may safely retry it
                    self._reset_peer(gone, h2.errors.ErrorCodes.REFUSED_STREAM)
                    del side.routes[side_id]
            return
        sid = getattr(event, "stream_id", None) or 0
        route = side.routes.get(sid)
        if isinstance(event, h2.events.DataReceived) and route is None:
            self._ack_orphan(side.conn, event)
            return
        if route is None:
            return
        if isinstance(event, h2.events.ResponseReceived | h2.events.InformationalResponseReceived):
            ended = isinstance(event, h2.events.ResponseReceived) and event.stream_ended
            route.down.push(_Item("headers", headers=list(event.headers or ()), end=bool(ended)))
        elif isinstance(event, h2.events.DataReceived):
            route.down.push(
                _Item("data", data=event.data or b"", flow=event.flow_controlled_length or 0)
            )
        elif isinstance(event, h2.events.TrailersReceived):
            route.down.push(_Item("headers", headers=list(event.headers or ()), end=True))
        elif isinstance(event, h2.events.StreamEnded):
            self._push_end(route.down)
        elif isinstance(event, h2.events.StreamReset):
            route.up.discard()
            route.down.discard()
            self._reset_peer(route, event.error_code or 0)
            del side.routes[sid]

    # --- helpers -----------------------------------------------------------------------

    @staticmethod
    def _push_end(pump: Pump) -> None:
        """End of stream: carried by the last item already queued where it can be (a
        headers-only answer stays one HEADERS frame: gRPC's trailers-only responses)."""
        last = pump.items[-1] if pump.items else None
        if last is not None and last.kind in ("headers", "data"):
            last.end = True
        elif not pump.finished:
            pump.push(_Item("end"))

    @staticmethod
    def _ack_orphan(conn: h2.connection.H2Connection, event: h2.events.DataReceived) -> None:
        if event.flow_controlled_length and event.stream_id:
            conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)

    def _reset_peer(self, route: Route, code: int) -> None:
        route.up.discard()
        route.down.discard()
        if self.routes.get(route.peer_id) is route:
            with contextlib.suppress(h2.exceptions.StreamClosedError):
                self.peer.reset_stream(route.peer_id, code)
            self._forget(route)

    def _reset_side(self, route: Route, code: int) -> None:
        side = route.side
        assert route.side_id is not None
        side.routes.pop(route.side_id, None)
        with contextlib.suppress(h2.exceptions.StreamClosedError):
            side.conn.reset_stream(route.side_id, code)

    def _unwait(self, route: Route) -> None:
        if route in route.side.waiting:
            route.side.waiting.remove(route)

    def _forget(self, route: Route) -> None:
        if self.routes.get(route.peer_id) is route:
            del self.routes[route.peer_id]

    def _pump_all(self) -> None:
        for route in list(self.routes.values()):
            route.up.pump()
            route.down.pump()
            if route.done:
                self._forget(route)
                if route.side_id is not None:
                    route.side.routes.pop(route.side_id, None)
        for side in list(self.sides):
            self._start_waiting(side)
