"""The proxy's side of direct delivery notes (proxy/incoming.py): read on the loop or, for
an accept that comes first, at once; only root's (the agent's) or our own are taken."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import subprocess
import sys

import pytest

from mirrord.features.incoming.delivery import IncomingProxy, IncomingSettings
from mirrord.wire.direct import NOTE_FAILED, NOTE_GONE, NOTE_NEW, Note, encode_note

PEER = (b"\x0a\x00\x00\x03", 40123)
ORIGINAL = (b"\x0a\x00\x00\x02", 8080)


def _send(name: str, note: Note) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.connect(name)
        s.send(encode_note(note))


async def test_notes_are_read_when_accept_asks_and_only_from_root_or_us() -> None:
    proxy = IncomingProxy(None, IncomingSettings(), direct=True)  # type: ignore[arg-type]
    name = proxy._open_notes()
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
        argv = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
        subprocess.run([*argv, sys.executable, "-c", code, name[1:], forged], check=True)
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
    proxy = IncomingProxy(None, IncomingSettings(), direct=True)  # type: ignore[arg-type]
    name = proxy._open_notes()
    code = (
        "import socket, sys; s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); "
        "s.connect('\\0' + sys.argv[1])\n"
        "for i in range(500): s.send(b'x' * 8)"
    )
    argv = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    with caplog.at_level(logging.WARNING, logger="mirrord.features.incoming.delivery"):
        try:
            # Concurrently: the loop reads while the sender fills the queue (10 datagrams).
            sender = await asyncio.create_subprocess_exec(
                *argv, sys.executable, "-c", code, name[1:]
            )
            assert await asyncio.wait_for(sender.wait(), 30) == 0
            proxy.delivered(0)  # reads what is queued
        finally:
            await proxy.close()
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2, lines
    assert "uid 65534" in lines[0]
    assert "500 datagrams from other users were ignored" in lines[1]
