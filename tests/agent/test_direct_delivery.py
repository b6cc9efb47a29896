"""agent/incoming/direct.py's deliveries on loopback sockets: a test listener stands in for
the program, a datagram socket for the client's note queue. A consumer that pulls the
program's answers itself (an HTTP/1.x filtered connection) gets them from Delivery.recv,
nothing through the queue; others get them queued; the end is clean (a FIN) only when the
program ended first. Delivering sockets never share a live source port, and a port whose
connection is in use is left for another."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from mirrord.agent.incoming import direct
from mirrord.agent.incoming.delivery import Delivery
from mirrord.agent.incoming.direct import DirectTarget
from mirrord.wire.direct import NOTE_GONE, NOTE_NEW, decode_note
from mirrord.wire.source_ports import SourcePorts
from tests.wire.ports_helpers import Scripted, reusing, unused_port

PEER = ("10.1.2.3", 40000)
ORIGINAL = ("10.1.2.4", 80)


class World:
    def __init__(self, tmp: Path) -> None:
        self.program = socket.create_server(("127.0.0.1", 0))
        self.program.setblocking(False)
        self.notes = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notes.bind(str(tmp / "notes"))
        self.notes.setblocking(False)
        self.target = DirectTarget("127.0.0.1", self.program.getsockname()[1], str(tmp / "notes"))

    async def start(self, delivery: Delivery, steal: bool = True) -> asyncio.Task[None]:
        task = asyncio.ensure_future(self.target.deliver(delivery, 80, PEER, ORIGINAL, steal))
        await asyncio.wait_for(delivery.attached.wait(), 5)
        return task

    async def accept(self) -> socket.socket:
        conn, _ = await asyncio.wait_for(asyncio.get_running_loop().sock_accept(self.program), 5)
        conn.setblocking(False)
        return conn

    def note_kinds(self) -> list[bytes]:
        return [kind for kind, _port in self.notes_sent()]

    def notes_sent(self) -> list[tuple[bytes, int]]:
        notes = []
        while True:
            try:
                note = decode_note(self.notes.recv(4096))
            except BlockingIOError:
                return notes
            notes.append((note.kind, note.port))

    def close(self) -> None:
        self.target.close()
        self.program.close()
        self.notes.close()


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    w = World(tmp_path)
    yield w
    w.close()


def _queued_bytes(delivery: Delivery) -> list[bytes]:
    items = []
    while not delivery.from_client.empty():
        items.append(delivery.from_client.get_nowait())
    return [item for item in items if item is not None]  # None: the delivery's close


async def _recv(sock: socket.socket) -> bytes:
    return await asyncio.wait_for(asyncio.get_running_loop().sock_recv(sock, 65536), 5)


async def _pulled(world: World) -> tuple[Delivery, asyncio.Task[None], socket.socket]:
    """A delivery whose consumer pulls the answers (HTTP/1.x filtered), running, and the
    program's end of it."""
    delivery = Delivery()
    delivery.pulls_answers = True
    task = await world.start(delivery)
    conn = await world.accept()
    assert delivery.send is not None and delivery.recv is not None
    return delivery, task, conn


async def test_pulled_answers_come_from_recv_and_end_cleanly(world: World) -> None:
    delivery, task, conn = await _pulled(world)
    assert delivery.send is not None and delivery.recv is not None
    await delivery.send(b"request")
    assert await _recv(conn) == b"request"
    conn.sendall(b"answer")
    assert await asyncio.wait_for(delivery.recv(), 5) == b"answer"
    assert _queued_bytes(delivery) == []  # nothing went through the queue
    conn.shutdown(socket.SHUT_WR)  # the program ends first: Connection: close
    assert await asyncio.wait_for(delivery.recv(), 5) == b""
    await delivery.to_client.put(None)  # the filtered connection's end, as share.py does it
    delivery.closed.set()
    await asyncio.wait_for(task, 5)
    await asyncio.sleep(0.05)
    assert conn.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0  # no reset came
    assert await _recv(conn) == b""  # our end came as a FIN
    conn.close()
    assert world.note_kinds() == [NOTE_NEW, NOTE_GONE]


async def test_what_the_program_sends_after_the_consumer_ended_is_dropped(world: World) -> None:
    delivery, task, conn = await _pulled(world)
    assert delivery.send is not None
    await delivery.send(b"request")
    assert await _recv(conn) == b"request"
    await delivery.to_client.put(None)  # the consumer is done (the peer left)
    assert await _recv(conn) == b""  # passed on as a half-close
    conn.sendall(b"late answer")  # nobody's: read and dropped until the program's end
    conn.shutdown(socket.SHUT_WR)
    await asyncio.wait_for(task, 5)
    assert _queued_bytes(delivery) == []
    conn.close()


async def test_a_peer_gone_mid_answer_resets_the_program(world: World) -> None:
    delivery, task, conn = await _pulled(world)
    await delivery.to_client.put(None)
    delivery.closed.set()  # the filtered connection is over, the program has not ended
    await asyncio.wait_for(task, 5)
    assert await _recv(conn) == b""  # the half-close, then the reset
    with pytest.raises((BrokenPipeError, ConnectionResetError)):  # after a FIN, send works
        conn.send(b"an answer for nobody")
    conn.close()


async def test_answers_are_queued_when_not_pulled(world: World) -> None:
    delivery = Delivery()  # an HTTP/2 filtered connection reads the queue
    task = await world.start(delivery)
    conn = await world.accept()
    assert delivery.recv is None and delivery.send is not None
    await delivery.send(b"frames")
    assert await _recv(conn) == b"frames"
    conn.sendall(b"answer")
    assert await asyncio.wait_for(delivery.from_client.get(), 5) == b"answer"
    conn.shutdown(socket.SHUT_WR)
    assert await asyncio.wait_for(delivery.from_client.get(), 5) is None
    await delivery.to_client.put(None)
    await asyncio.wait_for(task, 5)
    assert await _recv(conn) == b""
    conn.close()


async def test_a_mirror_copy_drops_the_programs_answers(world: World) -> None:
    delivery = Delivery()
    task = await world.start(delivery, steal=False)
    conn = await world.accept()
    assert delivery.send is None and delivery.recv is None
    await delivery.to_client.put(b"copy")
    assert await _recv(conn) == b"copy"
    conn.sendall(b"answer nobody wants")
    await delivery.to_client.put(None)
    assert await _recv(conn) == b""
    conn.shutdown(socket.SHUT_WR)
    await asyncio.wait_for(task, 5)
    assert _queued_bytes(delivery) == []
    conn.close()


async def test_a_live_deliverys_port_is_never_given_to_another(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    port, other = unused_port(), unused_port()
    monkeypatch.setattr(direct, "source_ports", SourcePorts(Scripted([port, port, other])))
    first, second = Delivery(), Delivery()
    tasks = [await world.start(first, steal=False), await world.start(second, steal=False)]
    conns = [await world.accept(), await world.accept()]
    assert sorted(c.getpeername()[1] for c in conns) == sorted([port, other])
    # Skipped at once, not bound and found taken at connect (a GONE between).
    assert world.notes_sent() == [(NOTE_NEW, port), (NOTE_NEW, other)]
    for delivery, conn in zip((first, second), conns, strict=True):
        delivery.close()
        conn.close()  # a copy is read to the program's end
    await asyncio.wait_for(asyncio.gather(*tasks), 5)
    assert direct.source_ports.live == set()  # both released at their GONE


async def test_a_port_whose_connection_is_taken_is_left_for_another(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Bound (SO_REUSEADDR shares it), but the connect fails: the same four-tuple is in
    use. The delivery tells that port GONE and goes on from another."""
    port, other = unused_port(), unused_port()
    holder = reusing()  # someone's live connection from that port to the program
    holder.bind(("127.0.0.1", port))
    holder.connect(world.program.getsockname())
    held = await world.accept()
    monkeypatch.setattr(direct, "source_ports", SourcePorts(Scripted([port, other])))
    delivery = Delivery()
    task = await world.start(delivery, steal=False)
    conn = await world.accept()
    assert conn.getpeername()[1] == other
    delivery.close()
    conn.close()  # a copy is read to the program's end
    await asyncio.wait_for(task, 5)
    assert world.notes_sent() == [
        (NOTE_NEW, port),
        (NOTE_GONE, port),
        (NOTE_NEW, other),
        (NOTE_GONE, other),
    ]
    for sock in (held, holder):
        sock.close()
