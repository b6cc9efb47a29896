"""UDP interceptors: one loopback UDP socket per remote address the program sends to.

Each program socket sending to it (told apart by its source address) is a flow: one
`Net.Udp` stream, so the pod uses one socket per program socket, as the program would
have. Replies are sent from the interceptor to the program's socket; the supervisor makes
recvfrom show the remote address instead of ours. Idle flows are closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeAlias

import grpc
import grpc.aio
from grpc.aio import EOF  # type: ignore[attr-defined]  # missing from grpc-stubs

from mirrord.v1 import net_pb2, net_pb2_grpc
from mirrord.wire import dns as dnswire

if TYPE_CHECKING:
    UdpCall: TypeAlias = grpc.aio.StreamStreamCall[
        net_pb2.UdpClientMessage, net_pb2.UdpServerMessage
    ]

log = logging.getLogger("mirrord.features.outgoing.proxy")

IDLE_S = 60.0
MAX_DATAGRAM = 65536
RECHECK_S = 1.0  # a flow's sender is checked again after this long (its port may change hands)


class _Flow:
    def __init__(self, owner: UdpInterceptor, src: Any, now: float) -> None:
        self.owner = owner
        self.src = src
        self.checked_at = now  # when its sender was last found to be the program's
        self.started = now
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
                    if self.owner.on_dns is not None:
                        self.owner.dns_reply(msg.datagram, local=False)
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
        dns_local: Callable[[str], bool] | None = None,
        sender_ok: Callable[[int], bool] | None = None,
        on_dns: Callable[[str, bool, list[str], str], None] | None = None,
    ) -> None:
        """dns_local: for a nameserver's address, which query names are answered here
        (dns.filter) instead of by the pod's nameserver. sender_ok: is the socket at this
        loopback port the program's? Anyone on this machine can send to the interceptor;
        only the program may reach the pod through it."""
        self.stub = stub
        self.dns_local = dns_local
        self.sender_ok = sender_ok
        self.refused = 0  # datagrams from other senders, dropped
        # --explain, for a nameserver's interceptor: told each reply (name, answered here,
        # addresses, rcode). None: off.
        self.on_dns = on_dns
        self._answering: set[asyncio.Task[None]] = set()
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
            now = time.monotonic()
            if flow is None or now - flow.checked_at > RECHECK_S:
                if not self._from_program(src):
                    continue
                if flow is not None:
                    flow.checked_at = now
            if self.dns_local is not None and self._answered_locally(data, src):
                continue
            if flow is None:
                flow = self.flows[src] = _Flow(self, src, now)
            flow.queue.put_nowait(data)

    def _from_program(self, src: Any) -> bool:
        if self.sender_ok is None or self.sender_ok(int(src[1])):
            return True
        self.refused += 1
        if self.refused == 1:
            log.warning(
                "a datagram to mirrord's UDP interceptor came from a socket that is not the "
                "program's (port %d): dropped, as any further ones",
                src[1],
            )
        return False

    def _answered_locally(self, data: bytes, src: Any) -> bool:
        try:
            name, _qtype, _end = dnswire.question(data)
        except dnswire.DnsFormatError:
            return False
        assert self.dns_local is not None
        if not self.dns_local(name):
            return False
        task = asyncio.get_running_loop().create_task(self._answer(data, src, name))
        self._answering.add(task)
        task.add_done_callback(self._answering.discard)
        return True

    async def _answer(self, query: bytes, src: Any, name: str) -> None:
        """Answer with what this machine's resolver says (its /etc/hosts, its DNS), as a
        program resolving the name without mirrord would get."""
        loop = asyncio.get_running_loop()
        addresses: list[bytes] | None = []
        rcode = 0
        try:
            infos = await loop.getaddrinfo(name, None, type=socket.SOCK_DGRAM)
        except socket.gaierror as e:
            infos, addresses = [], None
            rcode = (
                dnswire.RCODE_NXDOMAIN if e.errno == socket.EAI_NONAME else dnswire.RCODE_SERVFAIL
            )
        for info in infos:
            packed = ipaddress.ip_address(str(info[4][0]).split("%")[0]).packed
            if addresses is not None and packed not in addresses:
                addresses.append(packed)
        with contextlib.suppress(OSError, dnswire.DnsFormatError):
            answer = dnswire.build_answer(query, addresses, rcode)
            self.sock.sendto(answer, src)
            if self.on_dns is not None:
                self.dns_reply(answer, local=True)

    def dns_reply(self, msg: bytes, local: bool) -> None:
        assert self.on_dns is not None
        try:
            name, addresses, rcode = dnswire.reply_summary(msg)
        except dnswire.DnsFormatError:
            return
        self.on_dns(name, local, addresses, rcode)

    def pod_local(self, src_port: int) -> tuple[bytes, int] | None:
        for src, flow in self.flows.items():
            if src[1] == src_port:
                return flow.local
        return None

    def end_flows_without(self, bound: set[int], before: float) -> int:
        """End the flows whose program socket is closed (its port is not in `bound`),
        among those started before `before` (a table read before a flow began says
        nothing of it); each frees a socket in the agent. How many ended."""
        ended = 0
        for src, flow in list(self.flows.items()):
            if flow.started < before and int(src[1]) not in bound:
                flow.task.cancel()
                self.flows.pop(src, None)
                ended += 1
        return ended

    def close(self) -> None:
        with contextlib.suppress(Exception):
            asyncio.get_running_loop().remove_reader(self.sock.fileno())
        for flow in list(self.flows.values()):
            flow.task.cancel()
        for task in list(self._answering):
            task.cancel()
        self.sock.close()
