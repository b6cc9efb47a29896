"""The agent's `Net.Udp` flow, in-process against the test pod's echo service: ending a flow
in every way leaves the agent's event loop sound for the sockets that come after it."""

from __future__ import annotations

import asyncio
import os
import socket

import pytest

from mirrord.v1 import net_pb2, net_pb2_grpc
from tests.features.outgoing.net_world import World, inprocess_agent


def _closed_but_watched() -> list[int]:
    """Fds the running loop's selector still watches though they are closed (a stale
    registration: the next file to get that number inherits it)."""
    watched = asyncio.get_running_loop()._selector.get_map()  # type: ignore[attr-defined]
    stale = []
    for fd in list(watched):
        try:
            os.fstat(fd)
        except OSError:
            stale.append(fd)
    return stale


async def test_a_udp_flow_cancelled_while_receiving_leaves_no_stale_registration(
    world: World,
) -> None:
    """#12: the agent closed the flow's socket while its receive was pending, so the loop
    kept that fd number with a reader: a socket that got the number later was never polled
    (a steal listener that never accepted, a connect that hung)."""
    async with inprocess_agent(world) as (client, _method, svc):
        stub = net_pb2_grpc.NetStub(client.channel)
        before = set(_closed_but_watched())
        flow = stub.Udp(metadata=client.metadata())
        await flow.write(
            net_pb2.UdpClientMessage(
                open=net_pb2.UdpOpen(remote=net_pb2.SocketAddress(ip=svc, port=9999))
            )
        )
        assert (await flow.read()).WhichOneof("msg") == "opened"
        await flow.write(net_pb2.UdpClientMessage(datagram=b"ping"))
        assert (await flow.read()).datagram == b"echo:ping"
        flow.cancel()  # as mirrord ends an idle flow: the agent is waiting to receive
        for _ in range(50):
            await asyncio.sleep(0.02)
            stale = set(_closed_but_watched()) - before
            if not stale:
                break
        # The effect: a socket given the stale number is never polled.
        for fd in stale:
            r, w = socket.socketpair()
            if r.fileno() == fd:  # the lowest free number: the stale one, as in the agent
                reused = r
            else:
                os.dup2(r.fileno(), fd)
                r.close()
                reused = socket.socket(fileno=fd)
            reused.setblocking(False)
            try:
                receiving = asyncio.ensure_future(asyncio.get_running_loop().sock_recv(reused, 1))
                await asyncio.sleep(0.05)  # waiting: its reader is registered
                w.send(b"x")
                assert await asyncio.wait_for(receiving, 2) == b"x"
            finally:
                reused.close()
                w.close()
        assert not stale


def _agent_udp_sockets(world: World) -> int:
    """UDP sockets of this process (the in-process agent's) in the target's namespace."""
    with open(f"/proc/{world.target.main_pid}/net/udp") as f:
        inodes = {line.split()[9] for line in f.read().splitlines()[1:]}
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            link = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue  # the listing's own fd, or one closed meanwhile
        count += link.startswith("socket:[") and link[8:-1] in inodes
    return count


async def test_the_flow_of_a_closed_program_socket_ends_within_a_sweep(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A resolver's socket lives one lookup; its flow kept a socket open in the agent for
    60 s of idling (a soak with a lookup a second held ~900 agent fds). The proxy now ends
    the flows of closed program sockets on its next sweep; a live one is kept."""
    import mirrord.features.outgoing.proxy as proxy_mod
    from mirrord.features.outgoing.proxy import NetProxy
    from mirrord.features.sockets.sockaddr import parse_sockaddr

    monkeypatch.setattr(proxy_mod, "UDP_SWEEP_S", 0.2)
    async with inprocess_agent(world) as (client, _method, svc):
        proxy = NetProxy(client.channel, client.metadata())
        raw = socket.AF_INET.to_bytes(2, "little") + (9999).to_bytes(2, "big") + svc + bytes(8)
        dest = parse_sockaddr(raw)
        assert dest is not None
        loop = asyncio.get_running_loop()
        try:
            port = await proxy.open_udp(dest)
            assert _agent_udp_sockets(world) == 0
            programs = []
            for i in range(2):
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                s.setblocking(False)
                s.connect(("127.0.0.1", port))
                s.send(b"ping%d" % i)
                assert await asyncio.wait_for(loop.sock_recv(s, 100), 5) == b"echo:ping%d" % i
                programs.append(s)
            icpt = next(iter(proxy._udp.values()))
            assert len(icpt.flows) == 2
            assert _agent_udp_sockets(world) == 2  # one in the agent per flow
            programs[0].close()
            for _ in range(50):
                await asyncio.sleep(0.1)
                if len(icpt.flows) == 1:
                    break
            assert [src[1] for src in icpt.flows] == [programs[1].getsockname()[1]]
            for _ in range(50):  # the agent closes its socket for the ended flow
                if _agent_udp_sockets(world) == 1:
                    break
                await asyncio.sleep(0.1)
            assert _agent_udp_sockets(world) == 1
            programs[1].send(b"still")  # the live flow goes on
            assert await asyncio.wait_for(loop.sock_recv(programs[1], 100), 5) == b"echo:still"
            programs[1].close()
        finally:
            await proxy.close()
