"""Direct connections (agent/net/direct.py, proxy/direct.py) between the real proxy code
and the real agent in this process: the relay, the pod's errors, a socket that can still
connect elsewhere after a refusal, wrong secrets, and the session's end."""

from __future__ import annotations

import asyncio
import errno
import os
import socket

import pytest

from mirrord.features.outgoing.direct import DirectConnector
from mirrord.v1 import net_pb2, net_pb2_grpc
from mirrord.wire.direct import SECRET_SIZE, DirectRequest, encode_request
from tests.features.outgoing.net_world import World, inprocess_agent

GET = b"GET / HTTP/1.0\r\n\r\n"


async def _read_all(sock: socket.socket) -> bytes:
    loop = asyncio.get_running_loop()
    body = b""
    while chunk := await loop.sock_recv(sock, 65536):
        body += chunk
    return body


@pytest.mark.parametrize("blocking", [True, False], ids=["blocking", "non-blocking"])
async def test_direct_connection_relays_and_tells_the_pods_errors(
    world: World, blocking: bool
) -> None:
    async with inprocess_agent(world) as (client, _method, svc):
        stub = net_pb2_grpc.NetStub(client.channel)
        reply = await stub.Direct(net_pb2.DirectRequest(), metadata=client.metadata())
        assert reply.v4_port > 0 and len(reply.secret) == SECRET_SIZE
        connector = DirectConnector(reply.v4_port, reply.v6_port, reply.secret)
        listener = ("127.0.0.1", reply.v4_port)
        loop = asyncio.get_running_loop()

        sock = socket.socket()
        sock.setblocking(blocking)  # as the program's socket is: the connector keeps it
        with sock:
            got = await connector.connect(sock, listener, svc, 8080)
            assert got.errno == 0
            assert socket.inet_ntoa(got.ip) == world.target.address  # the pod-side socket
            assert sock.getblocking() == blocking
            sock.setblocking(False)
            await loop.sock_sendall(sock, GET)
            sock.shutdown(socket.SHUT_WR)  # the half-close reaches the pod's server
            assert (await _read_all(sock)).endswith(b"service")

        sock = socket.socket()
        sock.setblocking(blocking)
        with sock:
            with pytest.raises(OSError) as refused:
                await connector.connect(sock, listener, svc, 9)
            assert refused.value.errno == errno.ECONNREFUSED
            # Unconnected again, with no error left pending: it can connect elsewhere.
            with pytest.raises(OSError) as not_connected:
                sock.getpeername()
            assert not_connected.value.errno == errno.ENOTCONN
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0
            got = await connector.connect(sock, listener, svc, 8080)
            assert got.errno == 0


async def test_a_wrong_secret_gets_nothing(world: World) -> None:
    async with inprocess_agent(world) as (client, _method, svc):
        stub = net_pb2_grpc.NetStub(client.channel)
        reply = await stub.Direct(net_pb2.DirectRequest(), metadata=client.metadata())
        loop = asyncio.get_running_loop()
        for first in (
            encode_request(DirectRequest(b"x" * SECRET_SIZE, svc, 8080)),
            GET + b"\0" * 30,  # not a request at all
        ):
            with socket.create_connection(("127.0.0.1", reply.v4_port)) as sock:
                sock.sendall(first)
                sock.setblocking(False)
                try:
                    answer = await asyncio.wait_for(loop.sock_recv(sock, 100), 5)
                except ConnectionResetError:
                    answer = b""
                assert answer == b""  # closed: no reply, nothing connected


async def test_the_sessions_end_resets_its_connections_and_closes_the_listener(
    world: World,
) -> None:
    async with inprocess_agent(world) as (client, _method, svc):
        stub = net_pb2_grpc.NetStub(client.channel)
        reply = await stub.Direct(net_pb2.DirectRequest(), metadata=client.metadata())
        connector = DirectConnector(reply.v4_port, reply.v6_port, reply.secret)
        sock = socket.socket()
        await connector.connect(sock, ("127.0.0.1", reply.v4_port), svc, 8080)
        sock.setblocking(False)
        await client.close()  # the pod's server still waits for our request
        with sock, pytest.raises(ConnectionResetError):
            await asyncio.wait_for(_read_all(sock), 5)
        # No session left to use them: the agent (still serving) closed its listeners.
        for _ in range(40):
            try:
                socket.create_connection(("127.0.0.1", reply.v4_port), timeout=2).close()
            except ConnectionRefusedError:
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the direct listener outlived its last session")


async def test_closed_direct_connections_are_forgotten(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """#12: what the proxy noted per direct connection (original peer, pod-side address)
    stayed for good; it now stays within twice the connections still open."""
    import mirrord.features.outgoing.proxy
    from mirrord.features.outgoing.proxy import NetProxy
    from mirrord.features.sockets.sockaddr import parse_sockaddr

    monkeypatch.setattr(
        mirrord.features.outgoing.proxy, "DIRECT_PRUNE_MIN", 16
    )  # 256 in use: a quick test
    DIRECT_PRUNE_MIN = 16
    async with inprocess_agent(world) as (client, _method, svc):
        proxy = NetProxy(client.channel, client.metadata())
        await proxy.use_direct()
        raw = socket.AF_INET.to_bytes(2, "little") + (8080).to_bytes(2, "big") + svc + bytes(8)
        dest = parse_sockaddr(raw)
        assert dest is not None
        kept = []
        try:
            for i in range(3 * DIRECT_PRUNE_MIN):
                sock = socket.socket()
                assert await proxy.connect_direct(sock, dest)
                if i % 10 == 0:
                    kept.append(sock)  # open: must stay known
                else:
                    sock.close()
            assert len(proxy._direct_peers) <= 2 * DIRECT_PRUNE_MIN
            for sock in kept:
                assert proxy.original("v4", proxy._direct.port("v4"), sock.getsockname()[1])
        finally:
            for sock in kept:
                sock.close()
            await proxy.close()


async def test_a_flood_of_silent_connections_holds_few_agent_fds(world: World) -> None:
    """#12: each connection to the direct listener that never sent its request held an
    agent fd for 10 s (2,000 of them: 2,033 fds), open to any local user. Pending ones are
    capped (the oldest dropped), and a real client still gets through meanwhile."""
    from mirrord.agent.net.direct import MAX_PENDING

    def fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    async with inprocess_agent(world) as (client, _method, svc):
        stub = net_pb2_grpc.NetStub(client.channel)
        reply = await stub.Direct(net_pb2.DirectRequest(), metadata=client.metadata())
        listener = ("127.0.0.1", reply.v4_port)
        loop = asyncio.get_running_loop()
        before = fds()
        flood = []
        try:
            for _ in range(2000):
                s = socket.socket()
                s.setblocking(False)
                await loop.sock_connect(s, listener)  # and never a byte
                flood.append(s)
            await asyncio.sleep(0.5)  # the agent accepts them all
            # This process is the agent too: its side is what exceeds the flood's own.
            assert fds() - before - len(flood) <= MAX_PENDING + 16
            connector = DirectConnector(reply.v4_port, reply.v6_port, reply.secret)
            with socket.socket() as sock:
                sock.setblocking(False)
                got = await connector.connect(sock, listener, svc, 8080)
                assert got.errno == 0
                await loop.sock_sendall(sock, GET)
                sock.shutdown(socket.SHUT_WR)
                assert (await _read_all(sock)).endswith(b"service")
        finally:
            for s in flood:
                s.close()
