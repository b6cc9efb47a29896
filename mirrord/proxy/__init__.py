"""The local proxy (asyncio, in the mirrord process; no ptrace here).

`NetProxy` implements the supervisor's `Redirector`: for every redirected connect it asks
the agent to connect from the pod first, then opens a one-shot loopback listener whose
port stands for that connection; the program's socket is connected to it and bytes flow
natively between the program and this process, which relays them over the `Net.Tcp`
stream. UDP destinations get a loopback UDP interceptor each (proxy/udp.py).

The tables here are read by the supervisor's handlers on the tracer thread; single dict
operations are atomic in CPython, so no lock is needed.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import resource
import socket

import grpc.aio

from mirrord.proxy.relay import open_stream, relay, reset
from mirrord.proxy.udp import UdpInterceptor
from mirrord.supervisor.net import Destination
from mirrord.v1 import net_pb2, net_pb2_grpc

log = logging.getLogger("mirrord.proxy")

ACCEPT_TIMEOUT_S = 30.0  # a connect interrupted before reaching its interceptor
V4 = b"\x7f\0\0\x01"
V6 = b"\0" * 15 + b"\x01"
V4_MAPPED = b"\0" * 10 + b"\xff\xff" + V4


def raise_fd_limit() -> None:
    """Each relayed connection costs an fd here (and the program keeps its own): lift the
    soft limit to the hard one so a thousand connections do not hit EMFILE."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _ipv6_loopback_usable() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


class NetProxy:
    def __init__(self, channel: grpc.aio.Channel, metadata: tuple[tuple[str, str], ...]) -> None:
        self.stub = net_pb2_grpc.NetStub(channel)
        self.metadata = metadata
        # AF_INET6 sockets go to ::1, or to the v4 interceptors (v4-mapped) without IPv6.
        self._v6 = _ipv6_loopback_usable()
        self._peers: dict[tuple[str, int], bytes] = {}  # interceptor -> program's sockaddr
        self._pod_locals: dict[tuple[str, int], tuple[bytes, int]] = {}  # interceptor -> pod
        self._locals: dict[tuple[str, int], tuple[str, int]] = {}  # program port -> interceptor
        self._udp: dict[tuple[int, bytes, int], UdpInterceptor] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False
        raise_fd_limit()

    # --- Redirector --------------------------------------------------------------------

    def interceptor_ip(self, family: int) -> bytes:
        if family == socket.AF_INET:
            return V4
        return V6 if self._v6 else V4_MAPPED

    def _bind(self, family: int) -> tuple[str, str, int]:
        """(kind, bind address, socket family) of the interceptor for a program socket."""
        if family == socket.AF_INET6 and self._v6:
            return "v6", "::1", socket.AF_INET6
        return "v4", "127.0.0.1", socket.AF_INET

    async def open_tcp(self, dest: Destination) -> int:
        if self._closed:
            raise OSError(errno.ENETUNREACH, "mirrord is shutting down")
        call, connected = await open_stream(self.stub, self.metadata, dest.ip, dest.port)
        kind, bind_ip, family = self._bind(dest.family)
        listener = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            listener.bind((bind_ip, 0))
            listener.listen(1)
            listener.setblocking(False)
        except OSError:
            listener.close()
            call.cancel()
            raise
        port = int(listener.getsockname()[1])
        self._peers[(kind, port)] = dest.raw
        self._pod_locals[(kind, port)] = (connected.local.ip, connected.local.port)
        task = asyncio.get_running_loop().create_task(self._serve(listener, call, kind, port))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return port

    async def _serve(self, listener: socket.socket, call: object, kind: str, port: int) -> None:
        loop = asyncio.get_running_loop()
        try:
            try:
                conn, _ = await asyncio.wait_for(loop.sock_accept(listener), ACCEPT_TIMEOUT_S)
            except TimeoutError:
                call.cancel()  # type: ignore[attr-defined]
                return
            finally:
                listener.close()
            await relay(conn, call)  # type: ignore[arg-type]
        finally:
            self._peers.pop((kind, port), None)
            self._pod_locals.pop((kind, port), None)
            for key, value in list(self._locals.items()):
                if value == (kind, port):
                    self._locals.pop(key, None)

    def _udp_key(self, dest: Destination) -> tuple[int, bytes, int]:
        return (dest.family, dest.ip, dest.port)

    def udp_port(self, dest: Destination) -> int | None:
        icpt = self._udp.get(self._udp_key(dest))
        return icpt.local_port if icpt is not None else None

    async def open_udp(self, dest: Destination) -> int:
        key = self._udp_key(dest)
        icpt = self._udp.get(key)
        if icpt is None:
            if self._closed:
                raise OSError(errno.ENETUNREACH, "mirrord is shutting down")
            kind, bind_ip, family = self._bind(dest.family)
            icpt = UdpInterceptor(self.stub, self.metadata, bind_ip, family, dest.ip, dest.port)
            self._udp[key] = icpt
            self._peers[(kind, icpt.local_port)] = dest.raw
        return icpt.local_port

    def original(self, kind: str, port: int) -> bytes | None:
        return self._peers.get((kind, port))

    def note_local(self, kind: str, local_port: int, interceptor_port: int) -> None:
        self._locals[(kind, local_port)] = (kind, interceptor_port)

    def pod_local(self, kind: str, local_port: int) -> tuple[bytes, int] | None:
        icpt = self._locals.get((kind, local_port))
        if icpt is None:
            return None
        found = self._pod_locals.get(icpt)
        if found is not None:
            return found
        for udp in self._udp.values():
            if udp.local_port == icpt[1]:
                return udp.pod_local(local_port)
        return None

    # --- lifecycle -----------------------------------------------------------------------

    async def close(self) -> None:
        """Reset every relayed connection and close the interceptors."""
        self._closed = True
        for udp in self._udp.values():
            udp.close()
        self._udp.clear()
        tasks = list(self._tasks)
        for t in tasks:
            t.cancel()
        if tasks:
            with contextlib.suppress(Exception):
                await asyncio.wait(tasks, timeout=2.0)

    async def resolve(self, name: str, timeout: float = 10.0) -> list[bytes]:
        """Addresses of `name` as the pod resolves it (its /etc/hosts, its nameservers)."""
        reply = await self.stub.Resolve(
            net_pb2.ResolveRequest(name=name),
            metadata=self.metadata,
            timeout=timeout,
        )
        return list(reply.addresses)


__all__ = ["NetProxy", "open_stream", "relay", "reset"]
