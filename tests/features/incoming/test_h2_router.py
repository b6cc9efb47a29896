"""H2Router without I/O: a real h2 client (the peer) and real h2 servers (the pod's server,
the local program) exchange bytes with the router in memory."""

from __future__ import annotations

from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.errors
import h2.events

from mirrord.agent.incoming.h2_router import STREAM_WINDOW, H2Router, Side, request_of
from mirrord.agent.incoming.http_filter import OneFilter, Request, build_filter

ME = [(b"x-user", b"me")]


def _conn(client_side: bool) -> h2.connection.H2Connection:
    conn = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=client_side, header_encoding=None)
    )
    conn.initiate_connection()
    return conn


def req(path: str, extra: list[tuple[bytes, bytes]] | None = None) -> list[tuple[bytes, bytes]]:
    return [
        (b":method", b"POST"),
        (b":path", path.encode()),
        (b":scheme", b"http"),
        (b":authority", b"target:8080"),
        *(extra or []),
    ]


@dataclass
class App:
    """A server: answers each request at its end with `name:path` plus the request body's
    length, and a grpc-status trailer; some paths behave differently (see respond)."""

    name: str
    conn: h2.connection.H2Connection = field(default_factory=lambda: _conn(False))
    seen: list[str] = field(default_factory=list)
    bodies: dict[int, bytes] = field(default_factory=dict)
    paths: dict[int, str] = field(default_factory=dict)
    reset_by_peer: dict[int, int] = field(default_factory=dict)
    outbox: dict[int, bytes] = field(default_factory=dict)  # body bytes waiting for window

    def feed(self, data: bytes) -> None:
        for event in self.conn.receive_data(data):
            if isinstance(event, h2.events.RequestReceived):
                assert event.stream_id and event.headers
                path = dict(event.headers)[b":path"].decode()
                self.paths[event.stream_id] = path
                self.bodies[event.stream_id] = b""
                self.seen.append(path)
                if path == "/reset":
                    self.conn.reset_stream(event.stream_id, h2.errors.ErrorCodes.ENHANCE_YOUR_CALM)
            elif isinstance(event, h2.events.DataReceived):
                assert event.stream_id and event.data is not None
                self.bodies[event.stream_id] += event.data
                self.conn.acknowledge_received_data(
                    event.flow_controlled_length or 0, event.stream_id
                )
            elif isinstance(event, h2.events.StreamEnded):
                assert event.stream_id
                self.respond(event.stream_id)
            elif isinstance(event, h2.events.StreamReset):
                assert event.stream_id
                self.reset_by_peer[event.stream_id] = event.error_code or 0
            elif isinstance(event, h2.events.WindowUpdated):
                self.send_outbox()

    def respond(self, sid: int) -> None:
        path = self.paths[sid]
        if path == "/reset":
            return
        if path == "/trailers-only":
            self.conn.send_headers(
                sid, [(b":status", b"200"), (b"grpc-status", b"7")], end_stream=True
            )
            return
        if path == "/hang":
            return  # answers never: for resets from the peer
        self.conn.send_headers(sid, [(b":status", b"200"), (b"x-from", self.name.encode())])
        if path == "/echo":
            self.outbox[sid] = self.bodies[sid]
        else:
            self.outbox[sid] = f"{self.name}:{path}:{len(self.bodies[sid])}".encode()
        self.send_outbox()

    def send_outbox(self) -> None:
        for sid, data in list(self.outbox.items()):
            while data:
                n = min(self.conn.local_flow_control_window(sid), self.conn.max_outbound_frame_size)
                if n <= 0:
                    break
                self.conn.send_data(sid, data[:n])
                data = data[n:]
            self.outbox[sid] = data
            if not data:
                del self.outbox[sid]
                self.conn.send_headers(sid, [(b"grpc-status", b"0")], end_stream=True)


@dataclass
class Answer:
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytes = b""
    trailers: list[tuple[bytes, bytes]] = field(default_factory=list)
    ended: bool = False
    reset: int | None = None
    headers_ended: bool = False  # the response was one HEADERS frame with END_STREAM


class World:
    def __init__(self, **flt: str) -> None:
        flt_ = build_filter(**flt) if flt else build_filter(header_filter="x")
        self.router = H2Router(OneFilter(flt_))
        self.client = _conn(True)
        self.apps: dict[Side, App] = {}
        self.answers: dict[int, Answer] = {}
        self.uploads: dict[int, bytes] = {}
        self.goaway: int | None = None
        self.client.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 65535})

    def request(
        self, path: str, extra: list[tuple[bytes, bytes]] | None = None, body: bytes = b""
    ) -> int:
        sid = self.client.get_next_available_stream_id()
        self.client.send_headers(sid, req(path, extra), end_stream=not body)
        self.answers[sid] = Answer()
        if body:
            self.uploads[sid] = body
        self.run()
        return sid

    def _upload(self) -> None:
        for sid, data in list(self.uploads.items()):
            while data:
                n = min(
                    self.client.local_flow_control_window(sid), self.client.max_outbound_frame_size
                )
                if n <= 0:
                    break
                self.client.send_data(sid, data[:n])
                data = data[n:]
            self.uploads[sid] = data
            if not data:
                del self.uploads[sid]
                self.client.end_stream(sid)

    def _client_feed(self, data: bytes) -> None:
        for event in self.client.receive_data(data):
            sid = getattr(event, "stream_id", None)
            answer = self.answers.get(sid or 0)
            if isinstance(event, h2.events.ResponseReceived) and answer:
                answer.headers = list(event.headers or ())
                answer.headers_ended = event.stream_ended is not None
            elif isinstance(event, h2.events.DataReceived) and answer:
                answer.body += event.data or b""
                self.client.acknowledge_received_data(event.flow_controlled_length or 0, sid or 0)
            elif isinstance(event, h2.events.TrailersReceived) and answer:
                answer.trailers = list(event.headers or ())
            elif isinstance(event, h2.events.StreamEnded) and answer:
                answer.ended = True
            elif isinstance(event, h2.events.StreamReset) and answer:
                answer.reset = event.error_code
            elif isinstance(event, h2.events.WindowUpdated):
                self._upload()
            elif isinstance(event, h2.events.ConnectionTerminated):
                self.goaway = event.error_code

    def run(self) -> None:
        """Move bytes until nobody has anything to say."""
        for _ in range(10_000):
            moved = False
            self._upload()
            if data := self.client.data_to_send():
                self.router.receive_peer(data)
                moved = True
            if data := self.router.peer.data_to_send():
                self._client_feed(data)
                moved = True
            for side in list(self.router.sides):
                side.transport_open = True
                app = self.apps.setdefault(side, App(side.target))
                if data := side.conn.data_to_send():
                    app.feed(data)
                    moved = True
                if data := app.conn.data_to_send():
                    self.router.receive_side(side, data)
                    moved = True
            if not moved:
                return
        raise AssertionError("no quiescence")

    def app(self, target: str) -> App:
        (app,) = [a for s, a in self.apps.items() if s.target == target and not s.closed]
        return app


def test_streams_of_one_connection_are_routed_by_header() -> None:
    w = World(header_filter="^x-user: me$")
    sids = [w.request(f"/{i}", ME if i % 2 else None) for i in range(6)]
    w.run()
    for i, sid in enumerate(sids):
        answer = w.answers[sid]
        side = "local" if i % 2 else "pod"
        assert answer.ended and answer.reset is None
        assert answer.body == f"{side}:/{i}:0".encode()
        assert (b"x-from", side.encode()) in answer.headers
        assert answer.trailers == [(b"grpc-status", b"0")]
    assert w.app("pod").seen == ["/0", "/2", "/4"]
    assert w.app("local").seen == ["/1", "/3", "/5"]
    assert len(w.apps) == 2  # one connection per side for all streams
    assert (w.router.stolen, w.router.passed) == (3, 3)
    assert w.router.routes == {}  # finished streams are forgotten


def test_concurrent_streams_answer_on_their_own_ids() -> None:
    w = World(path_filter="^/mine")
    # All requests are open before any answer: the routes must map IDs both ways.
    sids = []
    for i in range(4):
        sid = w.client.get_next_available_stream_id()
        path = f"/mine/{i}" if i in (1, 2) else f"/other/{i}"
        w.client.send_headers(sid, req(path), end_stream=False)
        w.answers[sid] = Answer()
        sids.append((sid, path))
    w.run()
    for sid, path in reversed(sids):
        w.client.send_data(sid, path.encode() * 3, end_stream=True)
    w.run()
    for sid, path in sids:
        side = "local" if path.startswith("/mine") else "pod"
        assert w.answers[sid].body == f"{side}:{path}:{3 * len(path)}".encode()


def test_bodies_larger_than_every_window_pass_both_ways() -> None:
    w = World(header_filter="^x-user: me$")
    big = bytes(range(256)) * (3 * STREAM_WINDOW // 256)
    up = w.request("/echo", ME, body=big)
    down = w.request("/echo", body=big[::-1])
    w.run()
    assert w.answers[up].body == big
    assert w.answers[down].body == big[::-1]
    assert w.answers[up].trailers == [(b"grpc-status", b"0")]
    # Everything was acknowledged: the windows are whole again on the router's side.
    assert w.router.peer.inbound_flow_control_window > 0


def test_trailers_only_answer_stays_one_headers_frame() -> None:
    w = World(header_filter="^x-user: me$")
    sid = w.request("/trailers-only", ME)
    assert w.answers[sid].headers_ended
    assert (b"grpc-status", b"7") in w.answers[sid].headers


def test_resets_cross_with_their_code() -> None:
    w = World(header_filter="^x-user: me$")
    from_side = w.request("/reset", ME)
    assert w.answers[from_side].reset == h2.errors.ErrorCodes.ENHANCE_YOUR_CALM
    hanging = w.request("/hang")
    w.client.reset_stream(hanging, h2.errors.ErrorCodes.CANCEL)
    w.run()
    pod = w.app("pod")
    assert list(pod.reset_by_peer.values()) == [h2.errors.ErrorCodes.CANCEL]
    ok = w.request("/after", ME)
    assert w.answers[ok].body == b"local:/after:0"


def test_side_goaway_refuses_unprocessed_streams_and_a_fresh_side_takes_new_ones() -> None:
    w = World(header_filter="^x-user: me$")
    first = w.request("/hang", ME)
    local = w.app("local")
    local.conn.close_connection(last_stream_id=0)  # stream 1 was not processed
    w.run()
    assert w.answers[first].reset == h2.errors.ErrorCodes.REFUSED_STREAM
    again = w.request("/again", ME)
    assert w.answers[again].body == b"local:/again:0"
    assert len([s for s in w.apps if s.target == "local"]) == 2


def test_a_side_that_cannot_be_opened_refuses_its_streams() -> None:
    w = World(header_filter="^x-user: me$")
    sid = w.client.get_next_available_stream_id()
    w.client.send_headers(sid, req("/x", ME), end_stream=True)
    w.answers[sid] = Answer()
    w.router.receive_peer(w.client.data_to_send())
    (side,) = w.router.sides
    assert side.wants_transport
    w.router.side_closed(side, refused=True)
    w.run()
    assert w.answers[sid].reset == h2.errors.ErrorCodes.REFUSED_STREAM
    assert w.router.sides == []


def test_peer_goaway_finishes_after_open_streams() -> None:
    w = World(header_filter="^x-user: me$")
    w.request("/hang")
    w.client.close_connection()
    w.run()
    assert not w.router.finished  # one stream still open
    w.router.peer_closed()
    assert w.router.finished
    w.run()
    assert list(w.app("pod").reset_by_peer.values()) == [h2.errors.ErrorCodes.CANCEL]


def test_protocol_error_from_the_peer_fails_with_goaway() -> None:
    w = World(header_filter="x")
    w.run()
    w.router.receive_peer(b"\x00\x00\x01\x00\x00\x00\x00\x00\x00x")  # DATA on stream 0
    assert w.router.finished
    w._client_feed(w.router.peer.data_to_send())
    assert w.goaway == h2.errors.ErrorCodes.PROTOCOL_ERROR


def test_request_of_renders_pseudo_headers_as_filters_expect() -> None:
    r = request_of(req("/a/b?q=1", [(b"x-user", b"me")]))
    assert r == Request("POST", "/a/b?q=1", [("x-user", "me"), ("host", "target:8080")])
    # An explicit host header wins over :authority.
    r = request_of([(b":authority", b"a"), (b"host", b"b"), (b":method", b"GET")])
    assert r.headers == [("host", "b")]
    assert build_filter(header_filter="^host: target").matches(request_of(req("/")))
    assert build_filter(path_filter="^/a/b$").matches(request_of(req("/a/b?q=1")))
    assert build_filter(method_filter="post").matches(request_of(req("/")))
    assert not build_filter(header_filter=":path").matches(request_of(req("/")))
