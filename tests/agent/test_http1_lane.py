"""The filtered steal's callback lane (agent/incoming/http1_lane.py) end to end on loopback
sockets: a peer connects to a hooked listener, a FilteredConnection routes each request by
its X-User header to one of two "programs" (test servers reached through real direct
deliveries) or to the "pod" (a test server too). Once a request went to a side, the
exchanges that follow run in the lane; whatever it does not handle it hands back, and the
task goes on from there: answers stay whole and in order either way."""

from __future__ import annotations

import asyncio
import hashlib
import socket
import struct
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from mirrord.agent.incoming import hooked
from mirrord.agent.incoming.delivery import Delivery
from mirrord.agent.incoming.direct import DirectTarget
from mirrord.agent.incoming.http1 import FilteredConnection
from mirrord.agent.incoming.http_filter import Request

PEER = ("10.1.2.3", 40000)
ORIGINAL = ("10.1.2.4", 80)
BIG = 32 << 20  # an answer well over what loopback and the lane buffer for the peer

Answer = Callable[[bytes], bytes]


def plain(name: str) -> Answer:
    def answer(head: bytes) -> bytes:
        path = head.split(b" ")[1]
        if path == b"/big":
            body = bytes(range(256)) * (BIG // 256)
        elif path == b"/bad-length":  # conflicting lengths: a framing error
            return b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nx"
        else:
            body = name.encode() + b":" + path
        return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)

    return answer


async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, answer: Answer) -> None:
    """A keep-alive HTTP/1.1 server of bodiless or Content-Length requests; a request
    for /hang-up is answered half and then the connection closed, one for /then-reset
    answered whole and then the connection is reset."""
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            if length:
                await reader.readexactly(length)
            if head.split(b" ")[1] == b"/then-reset":  # answered, then the connection is reset
                writer.write(answer(head))
                await writer.drain()
                sock = writer.get_extra_info("socket")
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                writer.transport.abort()
                return
            if head.split(b" ")[1] == b"/hang-up":
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nhalf")
                await writer.drain()
                writer.transport.abort()
                return
            writer.write(answer(head))
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def queued(delivery: Delivery, port: int) -> None:
    """A delivery served through its queues (what a Connection stream does)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)

    async def down() -> None:
        while (item := await delivery.to_client.get()) is not None:
            writer.write(item)
            await writer.drain()
        writer.write_eof()

    async def up() -> None:
        while data := await reader.read(65536):
            await delivery.from_client.put(data)
        await delivery.from_client.put(None)

    delivery.attached.set()
    try:
        await asyncio.gather(down(), up())
    finally:
        writer.close()


class Router:
    def route(self, request: Request) -> str | None:
        user = dict(request.headers).get("X-User")
        return user if user in ("a", "b") else None


class World:
    def __init__(self, tmp: Path, pulled: bool = True) -> None:
        self.tmp = tmp
        # False: the programs are reached through the delivery's queues, as on the gRPC
        # stream path, so only the pod's exchanges can run in the lane.
        self.pulled = pulled
        self.ports: dict[str, int] = {}
        self.servers: list[asyncio.Server] = []
        self.targets: dict[str, DirectTarget] = {}
        self.notes: list[socket.socket] = []  # the client's note queues (unread)
        self.tasks: list[asyncio.Task[None]] = []
        self.conns: list[FilteredConnection] = []
        self.pod_port = 0
        self.port = 0

    async def _server(self, answer: Answer) -> int:
        async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            await serve(r, w, answer)

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        self.servers.append(server)
        return int(server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        for name in ("a", "b"):
            port = self.ports[name] = await self._server(plain(name))
            notes = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            notes.bind(str(self.tmp / f"notes-{name}"))
            notes.setblocking(False)
            self.notes.append(notes)
            self.targets[name] = DirectTarget("127.0.0.1", port, str(self.tmp / f"notes-{name}"))
        self.pod_port = await self._server(plain("pod"))
        listener = socket.create_server(("127.0.0.1", 0))
        self.port = listener.getsockname()[1]
        self.servers.append(await hooked.start_server(self._accepted, listener))

    async def _accepted(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async def open_pod() -> Any:
            sock = socket.create_connection(("127.0.0.1", self.pod_port))
            sock.setblocking(False)
            return await hooked.open_connection(sock)  # as the subscription opens it

        def open_delivery(key: str) -> Delivery:
            delivery = Delivery()
            if self.pulled:
                run = self.targets[key].deliver(delivery, 80, PEER, ORIGINAL, True)
            else:
                run = queued(delivery, self.ports[key])
            self.tasks.append(asyncio.ensure_future(run))
            return delivery

        conn = FilteredConnection((reader, writer), Router(), open_pod, open_delivery)
        self.conns.append(conn)
        try:
            await conn.run()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    async def close(self) -> None:
        for server in self.servers:
            server.close()
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        for target in self.targets.values():
            target.close()
        for notes in self.notes:
            notes.close()


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    w = World(tmp_path)
    await w.start()
    yield w
    await w.close()


def req(path: str, user: str = "", body: bytes = b"") -> bytes:
    head = f"GET {path} HTTP/1.1\r\nHost: pod\r\n" + (f"X-User: {user}\r\n" if user else "")
    if body:
        head += f"Content-Length: {len(body)}\r\n"
    return head.encode() + b"\r\n" + body


async def answer_of(reader: asyncio.StreamReader) -> bytes:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    length = next(
        int(line.split(b":")[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    return await asyncio.wait_for(reader.readexactly(length), 10)


Peer = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def connect(world: World) -> Peer:
    return await asyncio.open_connection("127.0.0.1", world.port)


async def ask(peer: Peer, path: str, user: str = "", body: bytes = b"") -> bytes:
    """A request on the peer's connection; its answer's body."""
    peer[1].write(req(path, user, body))
    return await answer_of(peer[0])


async def in_lane(world: World, user: str = "a", path: str = "/1") -> Peer:
    """A connection whose first request went to `user`'s side: what follows on it runs
    in the lane."""
    peer = await connect(world)
    assert await ask(peer, path, user) == f"{user}:{path}".encode()
    return peer


async def the_end(peer: Peer) -> bytes:
    """What the agent sends until it ends the connection."""
    return await asyncio.wait_for(peer[0].read(), 5)


async def _until(check: Callable[[], bool]) -> None:
    for _ in range(500):
        if check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("not reached in 5 s")


async def test_keep_alive_requests_mixing_programs_and_the_pod(world: World) -> None:
    peer = await connect(world)
    users = ["a", "a", "b", "a", "", "b", "b", "a", "", "", "a", "b"] * 5
    for i, user in enumerate(users):
        assert (
            await ask(peer, f"/{i}", user, body=b"x" * (i % 3)) == f"{user or 'pod'}:/{i}".encode()
        )
    peer[1].close()
    conn = world.conns[0]
    stolen = sum(1 for u in users if u)
    assert conn.stolen == stolen and conn.passed == len(users) - stolen
    # Only the first request to each side (a, b, the pod) is the task's.
    assert conn.laned == len(users) - 3


async def test_on_the_stream_path_only_the_pods_exchanges_run_in_the_lane(
    tmp_path: Path,
) -> None:
    world = World(tmp_path, pulled=False)
    await world.start()
    try:
        peer = await connect(world)
        users = ["", "", "a", "", "a", "a", "", ""]
        for i, user in enumerate(users):
            assert await ask(peer, f"/{i}", user) == f"{user or 'pod'}:/{i}".encode()
        peer[1].close()
        # A request to the program hands back; the pod's after the first are laned.
        assert world.conns[0].laned == users.count("") - 1
    finally:
        await world.close()


async def test_pipelined_requests_come_back_in_order(world: World) -> None:
    reader, writer = await in_lane(world, path="/first")
    batch = [("a", "/1"), ("b", "/2"), ("a", "/3"), ("", "/4"), ("a", "/5")]
    writer.write(b"".join(req(path, user) for user, path in batch))
    for user, path in batch:
        assert await answer_of(reader) == f"{user or 'pod'}:{path}".encode()
    writer.close()


async def test_a_big_answer_to_a_slow_reader_is_handed_back_and_arrives_whole(
    world: World,
) -> None:
    reader, writer = await in_lane(world, path="/small")
    writer.write(req("/big", "a") + req("/after", "a"))
    await asyncio.sleep(0.5)  # the peer does not read: the agent's buffers fill
    body = await answer_of(reader)
    assert len(body) == BIG
    expected = hashlib.sha256(bytes(range(256)) * (BIG // 256)).hexdigest()
    assert hashlib.sha256(body).hexdigest() == expected
    assert await answer_of(reader) == b"a:/after"  # the connection goes on
    writer.close()


async def test_a_request_that_is_not_plain_goes_to_h11_mid_connection(world: World) -> None:
    peer = await in_lane(world)
    assert await ask(peer, "/2", "a") == b"a:/2"
    # Chunked: not plain. h11 parses it and re-frames it for the program.
    peer[1].write(
        b"GET /3 HTTP/1.1\r\nHost: pod\r\nX-User: a\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"2\r\nhi\r\n0\r\n\r\n"
    )
    assert await answer_of(peer[0]) == b"a:/3"
    assert await ask(peer, "/4", "b") == b"b:/4"
    peer[1].close()


async def test_a_program_that_hangs_up_mid_answer_fails_only_that_connection(
    world: World,
) -> None:
    peer = await in_lane(world)
    peer[1].write(req("/hang-up", "a"))
    assert (await the_end(peer)).endswith(b"half")  # the rest never comes: the end
    peer[1].close()
    other = await connect(world)  # a new connection is served as before
    assert await ask(other, "/2", "a") == b"a:/2"
    other[1].close()


async def test_the_peers_end_while_the_lane_waits_ends_the_connection(world: World) -> None:
    peer = await in_lane(world)
    assert await ask(peer, "/2", "a") == b"a:/2"
    peer[1].write_eof()  # in the lane, between requests
    assert await the_end(peer) == b""  # the agent ended it too
    await _until(lambda: all(t.done() for t in world.tasks))  # the deliveries are over
    peer[1].close()


async def test_a_request_asking_to_close_is_answered_then_the_connection_ends(
    world: World,
) -> None:
    reader, writer = await in_lane(world)
    writer.write(req("/2", "a").replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n"))
    assert await answer_of(reader) == b"a:/2"
    assert await the_end((reader, writer)) == b""
    writer.close()


async def test_bytes_that_are_no_request_in_the_lane_drop_the_connection(world: World) -> None:
    peer = await in_lane(world)
    peer[1].write(b"\x16\x03\x01\x00\xa5\x01\x00")  # a TLS record: never an HTTP request
    assert await the_end(peer) == b""
    assert world.conns[0].stolen == 1  # nothing of it went anywhere
    peer[1].close()


async def test_an_answer_framed_wrong_in_the_lane_fails_the_connection(world: World) -> None:
    peer = await in_lane(world)
    peer[1].write(req("/bad-length", "a"))
    assert await the_end(peer) == b""  # no part of it forwarded
    peer[1].close()


async def test_a_program_gone_between_requests_fails_the_next_one_for_it(
    world: World,
) -> None:
    """Its end came while no lane listened: the next lane must not take it for a live
    program (a request written to it would never be answered)."""
    peer = await in_lane(world, "b")
    assert await ask(peer, "/then-reset", "a") == b"a:/then-reset"
    await asyncio.sleep(0.2)  # the reset reaches the agent's side of the program
    assert await ask(peer, "/2", "b") == b"b:/2"  # the lane, with b
    peer[1].write(req("/3", "a"))
    assert await the_end(peer) == b""  # failed, not hanging
    peer[1].close()
