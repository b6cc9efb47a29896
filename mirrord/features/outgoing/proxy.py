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
import collections
import contextlib
import errno
import itertools
import logging
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import grpc.aio

from mirrord.features.outgoing.conntable import bound_udp_ports, connected_local_ports
from mirrord.features.outgoing.direct import DirectConnector
from mirrord.features.outgoing.redirect import Connected
from mirrord.features.outgoing.relay import open_stream, relay, tcp_method
from mirrord.features.outgoing.udp import UdpInterceptor
from mirrord.features.sockets.fdlimit import raise_fd_limit
from mirrord.features.sockets.reset import reset
from mirrord.features.sockets.sockaddr import Destination
from mirrord.v1 import net_pb2, net_pb2_grpc

if TYPE_CHECKING:
    from mirrord.features.outgoing.relay import TcpCall

log = logging.getLogger("mirrord.features.outgoing.proxy")

ACCEPT_TIMEOUT_S = 30.0  # a connect interrupted before reaching its interceptor
V4 = b"\x7f\0\0\x01"
V6 = b"\0" * 15 + b"\x01"
V4_MAPPED = b"\0" * 10 + b"\xff\xff" + V4
# `Net.Tcp` streams kept after their connection ended cleanly (TcpConnect.reuse), for the
# next connects: one then costs one message round trip instead of also a new HTTP/2
# stream and the per-call setup on both sides, whose CPU competes with the connection
# itself. Each idle one costs the agent a waiting handler and one unconnected socket.
IDLE_STREAMS = 8
DNS_PORT = 53
DIRECT_PRUNE_MIN = 256  # direct connections noted before the first prune of closed ones
# How often UDP flows are checked for program sockets that were closed: a resolver's
# socket lives one lookup, its flow (and the agent's socket) would idle on for IDLE_S.
UDP_SWEEP_S = 5.0
SPARE_LISTENERS = 4  # interceptor sockets bound ahead per kind (v4/v6)


def _bound(family: int, bind_ip: str) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        sock.bind((bind_ip, 0))
    except OSError:
        sock.close()
        raise
    return sock


def _ipv6_loopback_usable() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


class NetProxy:
    def __init__(
        self,
        channel: grpc.aio.Channel,
        metadata: tuple[tuple[str, str], ...],
        *,
        udp_sender_ok: Callable[[int], bool] | None = None,
        dns_local: Callable[[str], bool] | None = None,
        on_dns: Callable[[str, bool, list[str], str], None] | None = None,
    ) -> None:
        """udp_sender_ok: is the UDP socket at this local port the program's? Interceptors
        take datagrams from no one else. dns_local: dns.filter, the query names answered
        here. on_dns: --explain, told each DNS reply the program gets."""
        self.stub = net_pb2_grpc.NetStub(channel)
        # Set by use_direct() when the agent shares our loopback (proxy/direct.py), with
        # what direct connections stand for, by the program socket's (kind, local port).
        self._direct: DirectConnector | None = None
        self._direct_peers: dict[tuple[str, int], bytes] = {}
        self._direct_locals: dict[tuple[str, int], tuple[bytes, int]] = {}
        self._direct_prune_at = DIRECT_PRUNE_MIN
        self.tcp = tcp_method(channel)
        self.metadata = metadata
        # AF_INET6 sockets go to ::1, or to the v4 interceptors (v4-mapped) without IPv6.
        self._v6 = _ipv6_loopback_usable()
        self._peers: dict[tuple[str, int], bytes] = {}  # interceptor -> program's sockaddr
        self._pod_locals: dict[tuple[str, int], tuple[bytes, int]] = {}  # interceptor -> pod
        self._locals: dict[tuple[str, int], tuple[str, int]] = {}  # program port -> interceptor
        self._udp: dict[tuple[int, bytes, int], UdpInterceptor] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._idle: collections.deque[TcpCall] = collections.deque()
        # Per interceptor kind, a port where nothing listens (refused_port): bound and never
        # listening, it holds the port and the kernel answers every SYN to it with a RST.
        # Made here once: the tracer thread only reads the port.
        self._refusers: list[socket.socket] = []
        self._refused_ports: dict[str, int] = {}
        for kind, bind_ip, family in {self._bind(socket.AF_INET), self._bind(socket.AF_INET6)}:
            sock = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
            self._refusers.append(sock)
            sock.bind((bind_ip, 0))
            self._refused_ports[kind] = int(sock.getsockname()[1])
        # Interceptor sockets bound ahead, per kind; not listening until used, so nothing
        # can connect to them meanwhile (a SYN to a bound, non-listening port gets a RST).
        self._spare_listeners: dict[str, list[socket.socket]] = {}
        self._closed = False
        self.dns_local = dns_local
        self.on_dns = on_dns
        self.udp_sender_ok = udp_sender_ok
        self.refused_peers = 0  # connections to TCP interceptors from others, reset
        self._udp_sweep: asyncio.Task[None] | None = None
        self._unix_dir: str | None = None  # the unix listeners' private directory
        self._unix_names = itertools.count()
        raise_fd_limit()

    async def use_direct(self) -> None:
        """Connect program sockets straight to the agent (it shares our loopback: see
        HelloReply.loopback_id). An agent without `Net.Direct` leaves the stream path."""
        try:
            reply = await self.stub.Direct(
                net_pb2.DirectRequest(), metadata=self.metadata, timeout=10.0
            )
        except grpc.aio.AioRpcError as e:
            log.debug("no direct connections: %s", e.code().name)
            return
        if reply.v4_port or reply.v6_port:
            self._direct = DirectConnector(reply.v4_port, reply.v6_port, reply.secret)

    # --- Redirector --------------------------------------------------------------------

    async def connect_tcp(self, sock: socket.socket, dest: Destination) -> Connected:
        try:
            if await self.connect_direct(sock, dest):
                return Connected(0)  # connected (to the agent), the pod-side connect made
            port, pod_errno = await self.open_tcp(dest), 0
        except OSError as e:
            if e.errno != errno.ECONNREFUSED:
                raise
            # A loopback port nobody listens on: the program's connect is refused by its
            # own kernel, as it would be (ECONNREFUSED, or EINPROGRESS then SO_ERROR).
            port, pod_errno = self.refused_port(dest.family), errno.ECONNREFUSED
        # Loopback to a listening socket: the handshake completes within the call, so even
        # a blocking socket does not hold the loop up.
        ip = socket.inet_ntop(sock.family, self.interceptor_ip(dest.family))
        err = sock.connect_ex((ip, port))
        if not pod_errno and err in (0, errno.EINPROGRESS):
            name = sock.getsockname()
            if isinstance(name, tuple):
                self.note_local(self._bind(dest.family)[0], int(name[1]), port)
        return Connected(-err, pod_errno)

    async def connect_direct(self, sock: socket.socket, dest: Destination) -> bool:
        if self._direct is None:
            return False
        kind = self._bind(dest.family)[0]
        port = self._direct.port(kind)
        if not port or self._closed:
            return False
        ip = socket.inet_ntop(sock.family, self.interceptor_ip(dest.family))
        reply = await self._direct.connect(sock, (ip, port), dest.ip, dest.port)
        # Keyed by the program socket's own port: every direct connection has the same
        # peer; lookups check that the peer is the agent's listener. Entries of closed
        # connections go in batches (_prune_direct).
        local_port = int(sock.getsockname()[1])
        self._direct_peers[(kind, local_port)] = dest.raw
        self._direct_locals[(kind, local_port)] = (reply.ip, reply.port)
        if len(self._direct_peers) >= self._direct_prune_at:
            self._prune_direct()
        return True

    def _prune_direct(self) -> None:
        """Forget direct connections that are closed: one /proc/net/tcp read when the
        table has doubled since the last prune, so it stays within twice the live ones."""
        assert self._direct is not None
        for kind in ("v4", "v6"):
            port = self._direct.port(kind)
            live = connected_local_ports(port, kind) if port else set()
            if live is None:
                continue
            for key in [k for k in self._direct_peers if k[0] == kind and k[1] not in live]:
                self._direct_peers.pop(key, None)
                self._direct_locals.pop(key, None)
        self._direct_prune_at = max(DIRECT_PRUNE_MIN, 2 * len(self._direct_peers))

    def interceptor_ip(self, family: int) -> bytes:
        if family == socket.AF_INET:
            return V4
        return V6 if self._v6 else V4_MAPPED

    def _bind(self, family: int) -> tuple[str, str, int]:
        """(kind, bind address, socket family) of the interceptor for a program socket."""
        if family == socket.AF_INET6 and self._v6:
            return "v6", "::1", socket.AF_INET6
        return "v4", "127.0.0.1", socket.AF_INET

    def refused_port(self, family: int) -> int:
        return self._refused_ports[self._bind(family)[0]]

    async def open_tcp(self, dest: Destination) -> int:
        if self._closed:
            raise OSError(errno.ENETUNREACH, "mirrord is shutting down")
        call, connected = await open_stream(
            self.tcp, self.metadata, dest.ip, dest.port, self._idle_call(), reuse=True
        )
        kind, bind_ip, family = self._bind(dest.family)
        try:
            listener, port = self._listener(kind, bind_ip, family)
        except OSError:
            call.cancel()
            raise
        self._peers[(kind, port)] = dest.raw
        self._pod_locals[(kind, port)] = (connected.local.ip, connected.local.port)
        # The relay starts one loop iteration later, after the program's connect was
        # answered: the task completing our caller schedules the tracer's wake-up, and a
        # task created now would run first (and hold the GIL the tracer thread needs).
        asyncio.get_running_loop().call_soon(self._start_serve, listener, call, kind, port)
        return port

    def _listener(self, kind: str, bind_ip: str, family: int) -> tuple[socket.socket, int]:
        """A listening interceptor on a fresh port: a spare one bound ahead (socket() and
        bind() are off the connect's critical path), made now when none is left."""
        spares = self._spare_listeners.setdefault(kind, [])
        listener = spares.pop() if spares else None
        try:
            if listener is None:
                listener = _bound(family, bind_ip)
            listener.listen(1)
            listener.setblocking(False)
            return listener, int(listener.getsockname()[1])
        except OSError:
            if listener is not None:
                listener.close()
            raise

    def _refill_listeners(self, kind: str) -> None:
        spares = self._spare_listeners.setdefault(kind, [])
        _, bind_ip, family = self._bind(socket.AF_INET if kind == "v4" else socket.AF_INET6)
        with contextlib.suppress(OSError):  # EMFILE…: made on demand instead
            while len(spares) < SPARE_LISTENERS and not self._closed:
                spares.append(_bound(family, bind_ip))

    def _start_serve(self, listener: socket.socket, call: TcpCall, kind: str, port: int) -> None:
        if self._closed:
            listener.close()
            call.cancel()
            self._forget(kind, port)
            return
        task = asyncio.get_running_loop().create_task(self._serve(listener, call, kind, port))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def open_unix(self, path: str) -> bytes:
        if self._closed:
            raise OSError(errno.ENETUNREACH, "mirrord is shutting down")
        call, _ = await open_stream(
            self.tcp, self.metadata, b"", 0, self._idle_call(), unix_path=path, reuse=True
        )
        if self._unix_dir is None:
            self._unix_dir = tempfile.mkdtemp(prefix="mirrord-unix-")
        name = f"{self._unix_dir}/{next(self._unix_names)}"
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            listener.bind(name)
            listener.listen(1)
            listener.setblocking(False)
        except OSError:
            listener.close()
            call.cancel()
            raise
        task = asyncio.get_running_loop().create_task(self._serve_unix(listener, call, name))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return name.encode()

    async def _serve_unix(self, listener: socket.socket, call: TcpCall, name: str) -> None:
        loop = asyncio.get_running_loop()
        try:
            conn, _ = await asyncio.wait_for(loop.sock_accept(listener), ACCEPT_TIMEOUT_S)
        except TimeoutError:
            call.cancel()
            return
        finally:
            listener.close()
            with contextlib.suppress(OSError):
                os.unlink(name)  # one connection per listener, like the TCP interceptors
        if await relay(conn, call, pipelined=True):
            self._give_back(call)

    def _idle_call(self) -> TcpCall | None:
        while self._idle:
            call = self._idle.popleft()
            if not call.done():  # one the agent ended (session gone) is of no use
                return call
        return None

    def _give_back(self, call: TcpCall) -> None:
        if self._closed or call.done() or len(self._idle) >= IDLE_STREAMS:
            call.cancel()
        else:
            self._idle.append(call)

    async def _serve(self, listener: socket.socket, call: TcpCall, kind: str, port: int) -> None:
        try:
            try:
                conn = await self._accept_program(listener, kind, port)
            finally:
                listener.close()
                self._refill_listeners(kind)
            if conn is None:
                call.cancel()
                return
            # As on the agent's side: relayed bytes go out as they come.
            with contextlib.suppress(OSError):
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if await relay(conn, call, pipelined=True):
                self._give_back(call)
        finally:
            self._forget(kind, port)

    async def _accept_program(
        self, listener: socket.socket, kind: str, port: int
    ) -> socket.socket | None:
        """The program's connection to this interceptor; None after ACCEPT_TIMEOUT_S.
        Anyone on this machine can connect to a loopback port: a connection whose source
        is not the program socket the supervisor connected here (note_local, made before
        the relay starts) is reset, and the wait goes on."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + ACCEPT_TIMEOUT_S
        while True:
            try:
                # The supervisor connects the program's socket right after open_tcp, so
                # the connection is usually there already: no waiting task nor timer.
                conn, peer = listener.accept()
            except BlockingIOError:
                try:
                    conn, peer = await asyncio.wait_for(
                        loop.sock_accept(listener), max(0.0, deadline - loop.time())
                    )
                except TimeoutError:
                    return None
            # By port: a v4-mapped program socket is noted as "v6" but comes in on "v4".
            noted = [self._locals.get((k, int(peer[1]))) for k in ("v4", "v6")]
            if any(n is not None and n[1] == port for n in noted):
                return conn
            self.refused_peers += 1
            if self.refused_peers == 1:
                log.warning(
                    "a connection to mirrord's interceptor came from a socket that is not "
                    "the program's (port %d): reset, as any further ones",
                    peer[1],
                )
            reset(conn)

    def _forget(self, kind: str, port: int) -> None:
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
            dns_local = self.dns_local if dest.port == DNS_PORT else None
            icpt = UdpInterceptor(
                self.stub,
                self.metadata,
                bind_ip,
                family,
                dest.ip,
                dest.port,
                dns_local,
                self.udp_sender_ok,
                on_dns=self.on_dns if dest.port == DNS_PORT else None,
            )
            self._udp[key] = icpt
            self._peers[(kind, icpt.local_port)] = dest.raw
            if self._udp_sweep is None:
                self._udp_sweep = asyncio.get_running_loop().create_task(self._sweep_udp())
                self._tasks.add(self._udp_sweep)
        return icpt.local_port

    def _is_direct(self, kind: str, port: int) -> bool:
        return self._direct is not None and port == self._direct.port(kind)

    def original(self, kind: str, port: int, local_port: int | None = None) -> bytes | None:
        if self._is_direct(kind, port):
            return self._direct_peers.get((kind, local_port)) if local_port else None
        return self._peers.get((kind, port))

    def note_local(self, kind: str, local_port: int, interceptor_port: int) -> None:
        self._locals[(kind, local_port)] = (kind, interceptor_port)

    def pod_local(
        self, kind: str, local_port: int, peer_port: int | None = None
    ) -> tuple[bytes, int] | None:
        if peer_port is not None and self._is_direct(kind, peer_port):
            return self._direct_locals.get((kind, local_port))
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

    async def _sweep_udp(self) -> None:
        while not self._closed:
            await asyncio.sleep(UDP_SWEEP_S)
            if not any(icpt.flows for icpt in self._udp.values()):
                continue
            read_at = time.monotonic()
            bound = await asyncio.to_thread(bound_udp_ports)
            if bound is None:
                continue
            ended = sum(icpt.end_flows_without(bound, read_at) for icpt in self._udp.values())
            if ended:
                log.debug("%d udp flows of closed program sockets ended", ended)

    # --- lifecycle -----------------------------------------------------------------------

    async def close(self) -> None:
        """Reset every relayed connection and close the interceptors."""
        self._closed = True
        while self._idle:
            self._idle.popleft().cancel()
        for sock in self._refusers:
            sock.close()
        for spares in self._spare_listeners.values():
            for sock in spares:
                sock.close()
        self._spare_listeners.clear()
        if self._unix_dir is not None:
            shutil.rmtree(self._unix_dir, ignore_errors=True)
        self._refusers.clear()
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
