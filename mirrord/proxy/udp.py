"""UDP interceptors: one loopback UDP socket per remote address the program sends to.

Each program socket sending to it (told apart by its source address) is a flow: one
`Net.Udp` stream, so the pod uses one socket per program socket, as the program would
have. Replies are sent from the interceptor to the program's socket; the supervisor makes
recvfrom show the remote address instead of ours. Idle flows are closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from typing import TYPE_CHECKING, Any, TypeAlias

import grpc
import grpc.aio
from grpc.aio import EOF  # type: ignore[attr-defined]  # missing from grpc-stubs

from mirrord.v1 import net_pb2, net_pb2_grpc

if TYPE_CHECKING:
    UdpCall: TypeAlias = grpc.aio.StreamStreamCall[
        net_pb2.UdpClientMessage, net_pb2.UdpServerMessage
    ]

log = logging.getLogger("mirrord.proxy")

IDLE_S = 60.0
MAX_DATAGRAM = 65536


class _Flow:
    def __init__(self, owner: UdpInterceptor, src: Any) -> None:
        self.owner = owner
        self.src = src
        self.queue: asyncio.Queue[bytes] = asyncio.Queue()
        self.local: tuple[bytes, int] | None = None
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        call: UdpCall = self.owner.stub.Udp(metadata=self.owner.metadata)  # type: ignore[call-arg,assignment]
        sender: asyncio.Task[None] | None = None
        try:
            await call.write(
                net_pb2.UdpClientMessage(
                    open=net_pb2.UdpOpen(
                        remote=net_pb2.SocketAddress(ip=self.owner.ip, port=self.owner.port)
                    )
                )
            )
            first = await call.read()
            if first is EOF or not isinstance(first, net_pb2.UdpServerMessage):
                return
            if first.WhichOneof("msg") != "opened":
                return
            self.local = (first.opened.ip, first.opened.port)
            sender = asyncio.create_task(self._send(call))
            while True:
                msg = await asyncio.wait_for(call.read(), IDLE_S)
                if msg is EOF or not isinstance(msg, net_pb2.UdpServerMessage):
                    return
                if msg.WhichOneof("msg") == "datagram":
                    with contextlib.suppress(OSError):
                        self.owner.sock.sendto(msg.datagram, self.src)
        except (TimeoutError, grpc.aio.AioRpcError) as e:
            log.debug("udp flow %s ended: %r", self.src, e)
        finally:
            if sender is not None:
                sender.cancel()
            call.cancel()
            self.owner.flows.pop(self.src, None)

    async def _send(self, call: UdpCall) -> None:
        while True:
            data = await self.queue.get()
            await call.write(net_pb2.UdpClientMessage(datagram=data))


class UdpInterceptor:
    def __init__(
        self,
        stub: net_pb2_grpc.NetStub,
        metadata: tuple[tuple[str, str], ...],
        bind_ip: str,
        family: int,
        ip: bytes,
        port: int,
    ) -> None:
        self.stub = stub
        self.metadata = metadata
        self.ip = ip
        self.port = port
        self.sock = socket.socket(family, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self.sock.bind((bind_ip, 0))
        self.sock.setblocking(False)
        self.local_port: int = self.sock.getsockname()[1]
        self.flows: dict[Any, _Flow] = {}
        asyncio.get_running_loop().add_reader(self.sock.fileno(), self._readable)

    def _readable(self) -> None:
        for _ in range(64):  # bounded, so one busy sender cannot starve the loop
            try:
                data, src = self.sock.recvfrom(MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            flow = self.flows.get(src)
            if flow is None:
                flow = self.flows[src] = _Flow(self, src)
            flow.queue.put_nowait(data)

    def pod_local(self, src_port: int) -> tuple[bytes, int] | None:
        for src, flow in self.flows.items():
            if src[1] == src_port:
                return flow.local
        return None

    def close(self) -> None:
        with contextlib.suppress(Exception):
            asyncio.get_running_loop().remove_reader(self.sock.fileno())
        for flow in list(self.flows.values()):
            flow.task.cancel()
        self.sock.close()
