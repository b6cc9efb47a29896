"""A filtered HTTP/1.1 connection (agent/incoming/http1.py) on in-memory streams: plain
requests and their answers go as the bytes that came, each to its side, in order; from the
first request that is not plain, h11 takes the connection; what is not HTTP/1.x goes to the
pod whole."""

from __future__ import annotations

import asyncio
from typing import Any

import h11
import pytest

from mirrord.agent.incoming.delivery import Delivery
from mirrord.agent.incoming.http1 import FilteredConnection
from mirrord.agent.incoming.http_filter import Request


class Writer:
    def __init__(self) -> None:
        self.data = bytearray()
        self.closed = False

    def write(self, data: bytes) -> None:
        self.data += data

    async def drain(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.closed = True


def reader(data: bytes, eof: bool = True) -> asyncio.StreamReader:
    r = asyncio.StreamReader()
    r.feed_data(data)
    if eof:
        r.feed_eof()
    return r


class Router:
    def route(self, request: Request) -> str | None:
        return "me" if ("X-User", "me") in request.headers else None


class World:
    """The peer's bytes in; the pod's and the client's answers given in advance (each
    side answers in order); what each side and the peer got."""

    def __init__(self, peer: bytes, pod: bytes = b"", local: bytes = b"") -> None:
        self.peer = (reader(peer), Writer())
        self.pod_answers = pod
        self.local_answers = local
        self.pod_got = Writer()
        self.pods = 0
        self.deliveries: list[Delivery] = []

    async def open_pod(self) -> Any:
        self.pods += 1
        return reader(self.pod_answers), self.pod_got

    def open_delivery(self, key: str) -> Delivery:
        assert key == "me"
        d = Delivery()
        d.attached.set()
        d.from_client.put_nowait(self.local_answers)
        d.from_client.put_nowait(None)
        self.deliveries.append(d)
        return d

    def local_got(self) -> bytes:
        out = b""
        for d in self.deliveries:
            while not d.to_client.empty():
                out += d.to_client.get_nowait() or b""
        return out

    async def run(self) -> None:
        conn = FilteredConnection(self.peer, Router(), self.open_pod, self.open_delivery)
        await asyncio.wait_for(conn.run(), 5)


def get(path: str, user: str = "", extra: str = "", method: str = "GET") -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: pod\r\n"
    if user:
        head += f"X-User: {user}\r\n"
    return (head + extra + "\r\n").encode()


def ok(body: bytes, extra: str = "") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n%s" % (len(body), extra.encode(), body)


CHUNKED_OK = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"


async def test_plain_requests_go_byte_for_byte_each_to_its_side() -> None:
    post = b"POST /p HTTP/1.1\r\nX-User: me\r\nContent-Length: 4\r\n\r\nbody"
    requests = [get("/1", "me"), get("/2", "you"), post, get("/3", method="HEAD")]
    world = World(
        b"".join(requests),
        pod=ok(b"two") + b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n",  # HEAD: no body
        local=ok(b"one") + CHUNKED_OK,
    )
    await world.run()
    assert world.pod_got.data == requests[1] + requests[3]
    assert world.local_got() == requests[0] + post
    assert world.peer[1].data == (
        ok(b"one") + ok(b"two") + CHUNKED_OK + b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n"
    )
    assert world.pods == 1 and len(world.deliveries) == 1  # one of each, kept alive


async def test_an_answer_that_ends_with_its_close_ends_the_connection() -> None:
    world = World(get("/1") + get("/2"), pod=b"HTTP/1.1 200 OK\r\n\r\nuntil the close")
    await world.run()
    assert world.peer[1].data == b"HTTP/1.1 200 OK\r\n\r\nuntil the close"
    assert world.pod_got.data == get("/1")  # the second is never sent


async def test_a_request_that_is_not_plain_is_h11s_from_its_start() -> None:
    chunked = (
        b"POST /c HTTP/1.1\r\nHost: pod\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n"
    )
    world = World(get("/1", "me") + chunked + get("/3"), pod=ok(b"c") + ok(b"3"), local=ok(b"1"))
    await world.run()
    assert world.local_got() == get("/1", "me")
    # h11 re-serialised the chunked one (same bytes here) and took the one after it too.
    server = h11.Connection(h11.SERVER)
    server.receive_data(bytes(world.pod_got.data))
    event = server.next_event()
    assert isinstance(event, h11.Request) and event.target == b"/c"
    assert world.peer[1].data == ok(b"1") + ok(b"c") + ok(b"3")


async def test_garbage_after_a_plain_request_drops_the_connection() -> None:
    world = World(get("/1") + b"NOT HTTP AT ALL\r\n\r\n", pod=ok(b"1"))
    with pytest.raises(h11.RemoteProtocolError):
        await world.run()
    assert world.pod_got.data == get("/1")  # nothing of the rest reached the pod
    assert world.peer[1].data == ok(b"1")


async def test_what_is_not_http_goes_to_the_pod_whole() -> None:
    tls = b"\x16\x03\x01\x00\x05hello"
    world = World(tls, pod=b"\x16\x03\x03server")
    await world.run()
    assert world.pod_got.data == tls and world.peer[1].data == b"\x16\x03\x03server"


async def test_pipelined_requests_are_answered_in_order() -> None:
    world = World(
        get("/1", "me") + get("/2") + get("/3", "me"), pod=ok(b"2"), local=ok(b"1") + ok(b"3")
    )
    await world.run()
    assert world.peer[1].data == ok(b"1") + ok(b"2") + ok(b"3")


async def test_a_request_that_asks_to_close_is_the_last() -> None:
    world = World(get("/1", extra="Connection: close\r\n") + get("/2"), pod=ok(b"1") + ok(b"2"))
    await world.run()
    assert world.pod_got.data == get("/1", extra="Connection: close\r\n")
    assert world.peer[1].data == ok(b"1")
