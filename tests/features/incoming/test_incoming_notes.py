"""The proxy's side of direct delivery notes (proxy/incoming.py): read on the loop or, for
an accept that comes first, at once; only root's (the agent's) or our own are taken."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
import subprocess
import sys
from array import array

import pytest

from mirrord.features.incoming.delivery import LOST, IncomingProxy, IncomingSettings
from mirrord.wire.direct import NOTE_FAILED, NOTE_GONE, NOTE_HANDOFF, NOTE_NEW, Note, encode_note

PEER = (b"\x0a\x00\x00\x03", 40123)
NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]  # another user
ORIGINAL = (b"\x0a\x00\x00\x02", 8080)


def open_notes() -> tuple[IncomingProxy, str]:
    """A proxy of a direct session (no agent needed) and its notes socket's name."""
    proxy = IncomingProxy(None, IncomingSettings(), direct=True)  # type: ignore[arg-type]
    return proxy, proxy._open_notes()


def _send(name: str, note: Note) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.connect(name)
        s.send(encode_note(note))


async def test_notes_are_read_when_accept_asks_and_only_from_root_or_us() -> None:
    proxy, name = open_notes()
    assert name.startswith("\0")  # abstract: nothing to leave behind in the file system
    try:
        _send(name, Note(NOTE_NEW, 50001, 8080, peer=PEER, original=ORIGINAL))
        # No loop turn in between: the lookup itself reads what is queued.
        assert proxy.delivered(50001) == (("10.0.0.3", 40123), ("10.0.0.2", 8080))
        _send(name, Note(NOTE_GONE, 50001))
        assert proxy.delivered(50001) is None

        # Another user's note (nobody) is ignored: it cannot make the program see a peer.
        code = (
            "import socket, sys; s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); "
            "s.connect('\\0' + sys.argv[1]); s.send(bytes.fromhex(sys.argv[2]))"
        )
        forged = encode_note(Note(NOTE_NEW, 50002, 8080, peer=PEER, original=ORIGINAL)).hex()
        subprocess.run([*NOBODY, sys.executable, "-c", code, name[1:], forged], check=True)
        assert proxy.delivered(50002) is None

        _send(name, Note(NOTE_FAILED, 50003, 8080, errno=111))
        proxy.delivered(0)
        assert proxy._failed[8080][0] == 1
        assert os.strerror(111) in proxy._failed[8080][1]
    finally:
        await proxy.close()


async def test_a_flood_of_forged_notes_is_reported_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """#12: each forged note printed a warning on the user's terminal (3,000 datagrams,
    3,000 lines): one warning, then the count at the end."""
    proxy, name = open_notes()
    code = (
        "import socket, sys; s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); "
        "s.connect('\\0' + sys.argv[1])\n"
        "for i in range(500): s.send(b'x' * 8)"
    )
    with caplog.at_level(logging.WARNING, logger="mirrord.features.incoming.delivery"):
        try:
            # Concurrently: the loop reads while the sender fills the queue (10 datagrams).
            sender = await asyncio.create_subprocess_exec(
                *NOBODY, sys.executable, "-c", code, name[1:]
            )
            assert await asyncio.wait_for(sender.wait(), 30) == 0
            proxy.delivered(0)  # reads what is queued
        finally:
            await proxy.close()
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2, lines
    assert "uid 65534" in lines[0]
    assert "500 datagrams from other users were ignored" in lines[1]


def _tcp_pair() -> tuple[socket.socket, socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname())
        accepted, _ = listener.accept()
    return client, accepted


def _send_fd(name: str, note: Note, fd: int) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.connect(name)
        s.sendmsg([encode_note(note)], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array("i", [fd]))])


async def test_a_handed_over_connection_is_taken_once_by_its_doorbell() -> None:
    """NOTE_HANDOFF carries the connection's fd: the accept its doorbell wakes takes it
    (with the peer and original destination), once; what nobody takes is reset at the
    end, so its peer does not wait for an answer that cannot come."""
    proxy, name = open_notes()
    kept_client, kept = _tcp_pair()
    lost_client, lost = _tcp_pair()
    try:
        _send_fd(name, Note(NOTE_HANDOFF, 50010, 8080, peer=PEER, original=ORIGINAL), kept.fileno())
        kept.close()  # the agent's copy: ours is the only one left
        assert proxy.take_handed(50011) is None
        taken = proxy.take_handed(50010)
        assert taken is not None
        fd, peer, original = taken
        assert (peer, original) == (("10.0.0.3", 40123), ("10.0.0.2", 8080))
        assert proxy.take_handed(50010) is None and proxy.delivered(50010) is None
        with socket.socket(fileno=fd) as mine:  # the peer's own connection, no relay
            mine.sendall(b"answer")
            assert kept_client.recv(16) == b"answer"

        _send_fd(name, Note(NOTE_HANDOFF, 50012, 8080, peer=PEER, original=ORIGINAL), lost.fileno())
        lost.close()
        proxy.delivered(0)  # read: held for an accept that never comes

        # Its doorbell could not ring (the program's listener is gone): reset at once.
        rang_client, rang = _tcp_pair()
        _send_fd(name, Note(NOTE_HANDOFF, 50013, 8080, peer=PEER, original=ORIGINAL), rang.fileno())
        rang.close()
        _send(name, Note(NOTE_FAILED, 50013, 8080, errno=111))
        proxy.delivered(0)
        rang_client.settimeout(5)
        with pytest.raises(ConnectionResetError):
            rang_client.recv(16)
        rang_client.close()
        assert proxy.take_handed(50013) is None
    finally:
        await proxy.close()
    lost_client.settimeout(5)
    with pytest.raises(ConnectionResetError):
        lost_client.recv(16)
    kept_client.close()
    lost_client.close()


async def test_an_accept_reads_the_notes_only_up_to_its_own() -> None:
    """The accept's own note is read, the one after it is left for the next accept (or
    the loop), and both connections are given to their own doorbells."""
    proxy, name = open_notes()
    first_client, first = _tcp_pair()
    second_client, second = _tcp_pair()
    try:
        for port, sock in ((50020, first), (50021, second)):
            _send_fd(
                name, Note(NOTE_HANDOFF, port, 8080, peer=PEER, original=ORIGINAL), sock.fileno()
            )
            sock.close()
        taken = proxy.take_handed(50020)
        assert taken is not None
        assert 50021 not in proxy._handed  # still queued in the socket
        again = proxy.take_handed(50021)
        assert again is not None
        for (fd, _, _), client in ((taken, first_client), (again, second_client)):
            with socket.socket(fileno=fd) as mine:
                mine.sendall(b"hi")
                assert client.recv(8) == b"hi"
    finally:
        await proxy.close()
        first_client.close()
        second_client.close()


async def test_notes_no_accept_asks_for_are_still_read_by_the_loop() -> None:
    """The loop reads the notes a moment after they come (the accepts read their own
    first): a program that does not accept must not leave them in the socket's queue,
    whose ~250 datagrams would then stop the agent's notes. 600 handoffs, sent by a
    thread that blocks while the queue is full: all of them are kept for an accept."""
    proxy, name = open_notes()
    client, accepted = _tcp_pair()
    count = 600

    def send_all() -> None:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.connect(name)
            s.settimeout(10)
            fds = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array("i", [accepted.fileno()]))]
            for port in range(50100, 50100 + count):
                note = Note(NOTE_HANDOFF, port, 8080, peer=PEER, original=ORIGINAL)
                s.sendmsg([encode_note(note)], fds)

    try:
        await asyncio.wait_for(asyncio.to_thread(send_all), 30)
        for _ in range(200):  # the last ones: one more read, a few ms later
            if proxy._handed_count == count:
                break
            await asyncio.sleep(0.01)
        assert proxy._handed_count == count
        assert proxy._delivered_count[8080] == count
    finally:
        await proxy.close()
        accepted.close()
    client.settimeout(5)
    with pytest.raises(ConnectionResetError):  # never accepted: reset at the end
        client.recv(16)
    client.close()


async def test_fds_that_come_with_anything_else_are_closed() -> None:
    """Another user's HANDOFF (its fd could be any socket), a NEW with an fd: nothing is
    held, and every fd we were sent is closed (its other end sees the end)."""
    proxy, name = open_notes()
    code = (
        "import array, socket, sys\n"
        "a, b = socket.socketpair()\n"
        "s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); s.connect('\\0' + sys.argv[1])\n"
        "s.sendmsg([bytes.fromhex(sys.argv[2])], "
        "[(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array('i', [a.fileno()]))])\n"
        "a.close(); b.settimeout(10)\n"
        "print('closed' if b.recv(1) == b'' else 'open')\n"
    )
    note = encode_note(Note(NOTE_HANDOFF, 50020, 8080, peer=PEER, original=ORIGINAL)).hex()
    try:
        forger = await asyncio.create_subprocess_exec(
            *NOBODY, sys.executable, "-c", code, name[1:], note, stdout=asyncio.subprocess.PIPE
        )
        out, _ = await asyncio.wait_for(forger.communicate(), 30)
        assert out.decode().strip() == "closed"
        assert proxy.take_handed(50020) is None

        a, b = socket.socketpair()
        _send_fd(name, Note(NOTE_NEW, 50021, 8080, peer=PEER, original=ORIGINAL), a.fileno())
        a.close()
        assert proxy.delivered(50021) is not None  # the note counts, its fd does not
        assert proxy.take_handed(50021) is None
        b.settimeout(5)
        assert b.recv(1) == b""
        b.close()

        # A handoff whose fd did not come (our fd table full): its doorbell is told apart,
        # so the program's accept gets ECONNABORTED, not the doorbell.
        _send(name, Note(NOTE_HANDOFF, 50022, 8080, peer=PEER, original=ORIGINAL))
        assert proxy.take_handed(50022) == (LOST, ("10.0.0.3", 40123), ("10.0.0.2", 8080))
        assert proxy.take_handed(50022) is None and proxy.delivered(50022) is None
    finally:
        await proxy.close()


def test_an_accept_woken_for_a_lost_handoff_is_aborted_not_given_the_doorbell() -> None:
    """The supervisor's side: a doorbell whose connection never reached us is closed, and
    the program's accept gets ECONNABORTED (servers retry it), not the reset doorbell."""
    from mirrord.features.incoming.handlers import IncomingHandlers, IncomingPolicy
    from mirrord.features.sockets.sockaddr import build_sockaddr
    from mirrord.supervisor.actions import Fake

    class Lost:
        def take_handed(self, port: int) -> tuple[int, tuple[str, int], tuple[str, int]]:
            assert port == 50030
            return LOST, ("10.0.0.3", 40123), ("10.0.0.2", 8080)

    handlers = IncomingHandlers(IncomingPolicy(), Lost())  # type: ignore[arg-type]
    doorbell, other_end = socket.socketpair()
    peer = build_sockaddr(socket.AF_INET, b"\x7f\x00\x00\x01", 50030)
    action = handlers._deliver((doorbell.detach(), peer), 0, 0, 0, 0, 0, None)  # type: ignore[arg-type]
    assert action == Fake(-errno.ECONNABORTED)
    other_end.settimeout(5)
    assert other_end.recv(1) == b""  # the doorbell was closed
    other_end.close()


async def test_a_doorbell_port_reused_before_its_accept_keeps_both_connections() -> None:
    """A doorbell is reset at once, so the next one may get its port before the program
    accepted the first: both connections wait, taken in the order their doorbells queue.
    (One was reset instead: a lost connection in about one run in ten of 200 under
    signals.)"""
    proxy, name = open_notes()
    first_client, first = _tcp_pair()
    second_client, second = _tcp_pair()
    try:
        other = (b"\x0a\x00\x00\x04", 40999)
        _send_fd(
            name, Note(NOTE_HANDOFF, 50040, 8080, peer=PEER, original=ORIGINAL), first.fileno()
        )
        _send_fd(
            name, Note(NOTE_HANDOFF, 50040, 8080, peer=other, original=ORIGINAL), second.fileno()
        )
        first.close()
        second.close()
        taken = [proxy.take_handed(50040), proxy.take_handed(50040)]
        assert proxy.take_handed(50040) is None
        assert [t[1] for t in taken if t is not None] == [("10.0.0.3", 40123), ("10.0.0.4", 40999)]
        for t, client in zip(taken, (first_client, second_client), strict=True):
            assert t is not None
            with socket.socket(fileno=t[0]) as mine:
                mine.sendall(b"yours")
                assert client.recv(16) == b"yours"  # each its own, none reset
    finally:
        await proxy.close()
        first_client.close()
        second_client.close()
