"""agent/bridge.py on loopback sockets: bytes both ways with half-closes, bytes that come
before the other side is joined, and a cancelled wait (a session's end) resetting both."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import pytest

from mirrord.agent.bridge import LINGER_RESET, Bridge, set_linger


async def _pair() -> tuple[socket.socket, socket.socket]:
    """A connected loopback pair: (the outer end a test drives, the end the bridge gets)."""
    loop = asyncio.get_running_loop()
    with socket.create_server(("127.0.0.1", 0)) as srv:
        srv.setblocking(False)
        outer = socket.socket()
        outer.setblocking(False)
        await loop.sock_connect(outer, srv.getsockname())
        inner, _ = await loop.sock_accept(srv)
    inner.setblocking(False)
    return outer, inner


async def _read_all(sock: socket.socket) -> bytes:
    loop = asyncio.get_running_loop()
    data = b""
    while chunk := await asyncio.wait_for(loop.sock_recv(sock, 1 << 16), 5):
        data += chunk
    return data


@pytest.fixture
async def ends() -> AsyncIterator[
    tuple[socket.socket, socket.socket, socket.socket, socket.socket]
]:
    left, left_in = await _pair()
    right, right_in = await _pair()
    yield left, left_in, right, right_in
    for s in (left, left_in, right, right_in):
        s.close()


async def test_bytes_and_half_closes_both_ways(ends: tuple[socket.socket, ...]) -> None:
    left, left_in, right, right_in = ends
    loop = asyncio.get_running_loop()
    bridge = Bridge()
    await loop.sock_sendall(left, b"early")  # before the other side is joined
    left.shutdown(socket.SHUT_WR)
    await bridge.attach(bridge.a, left_in)
    await asyncio.sleep(0.05)  # read by the bridge, kept for the other side
    await bridge.attach(bridge.b, right_in)
    assert await _read_all(right) == b"early"  # the bytes and then the EOF
    big = bytes(range(256)) * 40000  # ~10 MiB: more than the buffers on the way
    sender = asyncio.ensure_future(loop.sock_sendall(right, big))
    got = b""
    while len(got) < len(big):
        got += await asyncio.wait_for(loop.sock_recv(left, 1 << 16), 5)
    assert got == big
    await sender
    right.shutdown(socket.SHUT_WR)
    assert await _read_all(left) == b""  # its EOF too
    assert await asyncio.wait_for(bridge.done, 5) is True
    assert bridge.ended_cleanly()
    bridge.close(bridge.ended_cleanly())


async def test_a_cancelled_wait_resets_both_sides(ends: tuple[socket.socket, ...]) -> None:
    left, left_in, right, right_in = ends
    loop = asyncio.get_running_loop()
    for inner in (left_in, right_in):
        set_linger(inner, LINGER_RESET)
    bridge = Bridge()

    async def relay() -> None:
        try:
            await bridge.attach(bridge.a, left_in)
            await bridge.attach(bridge.b, right_in)
            await bridge.done
        finally:
            bridge.close(bridge.ended_cleanly())

    task = asyncio.ensure_future(relay())
    await asyncio.sleep(0.05)
    task.cancel()  # as a session's end cancels its relays
    await asyncio.gather(task, return_exceptions=True)
    assert not bridge.ended_cleanly()
    for outer in (left, right):
        with pytest.raises(ConnectionResetError):
            await asyncio.wait_for(loop.sock_recv(outer, 10), 5)


async def test_bytes_and_eof_queued_before_both_sides_are_joined_keep_their_order() -> None:
    """A server that speaks and closes at once (a banner, an error): its bytes and FIN wait
    on the pod's socket while the agent joins both sides back to back, as the direct relay
    does. The EOF used to be passed on as soon as the other side had a transport, before
    the early bytes were flushed to it: the program saw an empty connection."""
    for _ in range(20):
        pod_far, pod = await _pair()
        program, local = await _pair()
        await asyncio.get_running_loop().sock_sendall(pod_far, b"220 banner\r\n")
        pod_far.close()
        await asyncio.sleep(0.01)  # both queued on `pod` before the bridge exists
        bridge = Bridge()
        try:
            await bridge.attach(bridge.a, pod)
            await bridge.attach(bridge.b, local)
            assert await _read_all(program) == b"220 banner\r\n"
        finally:
            bridge.close(clean=False)
            program.close()
