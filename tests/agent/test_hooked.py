"""agent/incoming/hooked.py on loopback: a stream lost to a reset marks the loss it keeps
for wait_closed() as seen. A Hooked is in a cycle with that exception (its frames are in
the traceback), and asyncio marks it seen only when the protocol is freed, which the
collector may do after freeing the future: "Future exception was never retrieved" in the
agent's log (seen in full runs of test_http1_lane.py before the fix, order-dependent)."""

from __future__ import annotations

import asyncio
import socket
import struct

import pytest

from mirrord.agent.incoming.hooked import hooked_of, open_connection


async def test_a_reset_streams_kept_loss_is_marked_seen() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    sock = socket.create_connection(listener.getsockname())
    sock.setblocking(False)
    far, _ = listener.accept()
    reader, writer = await open_connection(sock)
    hooked = hooked_of((reader, writer))
    assert hooked is not None
    far.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    far.close()  # a reset
    with pytest.raises(ConnectionResetError):
        await asyncio.wait_for(hooked.read(1024), 5)
    closed = hooked._closed  # type: ignore[attr-defined]  # StreamReaderProtocol's, what wait_closed() would await
    assert closed.done()
    assert not closed._log_traceback  # asyncio's "not retrieved" flag: cleared already
    writer.close()
    listener.close()
