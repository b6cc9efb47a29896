"""The agent's `Net.Udp` flow, in-process against the test pod's echo service: ending a flow
in every way leaves the agent's event loop sound for the sockets that come after it."""

from __future__ import annotations

import asyncio
import os
import socket

from mirrord.v1 import net_pb2, net_pb2_grpc
from tests.net.net_world import World, inprocess_agent


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
