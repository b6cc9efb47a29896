"""Incoming traffic, supervisor side: bind/listen/accept of the program's TCP listeners.

- bind(P) of a TCP socket that incoming traffic applies to (`IncomingPolicy.applies`): the
  supervisor binds the program's own socket itself, through a pidfd_getfd duplicate (same
  open file description, so the program's SO_REUSEADDR/V6ONLY options count): to the
  `listen_ports` port for P if one is set (EADDRINUSE as upstream if it is taken), else to P,
  else (P taken locally) to a free port. The syscall is then faked with 0. The local port
  → P mapping is remembered; getsockname says P.
- listen: the supervisor puts the socket in the listening state (again on the duplicate),
  then the thread waits (Defer) while the agent subscribes to the remote port, so no
  delivered connection can find the listener not yet listening.
- accept/accept4 and getpeername: a delivered connection comes from the proxy's (or the
  local agent's) loopback socket; its source port names it, so the kernel's 127.0.0.1:X
  is replaced by the real remote peer (stateless: dup/fork need nothing). getsockname of a
  delivered connection gives the pod-side original destination.
  Notify engine: the supervisor accepts on its duplicate of a subscribed listener and
  installs the connection in the program (InstallFd), the real peer written into its
  address buffer; every accept is trapped, so none of the program's can race ours (a
  per-listener lock: poll, then accept). A blocking listener with nothing queued waits on
  the loop (waits.py); a signal ends that wait as natively; a connection taken for an
  answer that could not be delivered is stashed for the restarted accept. Listeners that
  take no traffic of the target are the kernel's. Ptrace engine: only accepts that ask
  for the address stop, and it is rewritten at the exit stop.
"""

from __future__ import annotations

import collections
import ctypes
import errno
import ipaddress
import logging
import os
import select
import socket
import struct
import threading
from dataclasses import dataclass, field
from typing import Any, Protocol

from mirrord.features.sockets import rawmsg
from mirrord.features.sockets.listeners import held_by_program, program_holds_tcp_port
from mirrord.features.sockets.sockaddr import (
    V4_MAPPED_PREFIX,
    Destination,
    build_sockaddr,
    parse_sockaddr,
    rewrite_at_exit,
    write_name,
)
from mirrord.features.sockets.sockinfo import borrow_fd, borrowed_socket, raw_name
from mirrord.features.sockets.waits import retry_when_ready
from mirrord.supervisor.actions import Action, Allow, Defer, Fake, InstallFd, Memory, Syscall
from mirrord.supervisor.syscalls import NR
from mirrord.wire.addresses import packed_ip

log = logging.getLogger("mirrord.features.incoming.handlers")

_libc = ctypes.CDLL(None, use_errno=True)

# The accept queue of a listener that takes the target's traffic, whatever backlog the
# program asked for (the kernel caps it at net.core.somaxconn). The pod's clients spread
# their connections over the pod's queue; here they all come from the proxy, mirrored
# copies in bursts (the pod's server answers faster than the traced program accepts).
# With python's default of 5, the overflow lost connections for good: SYN cookies the
# kernel then sends fail once the queue is still full, and the proxy's connection, already
# "established" with its bytes sent, is reset before the program accepts it (the rest
# waited out SYN retransmits, 1 s and more).
DELIVERY_BACKLOG = 4096
INET = (socket.AF_INET, socket.AF_INET6)
# Handed-over connections remembered before the first sweep of those the program closed.
SWEEP_HANDED = 1024


@dataclass(frozen=True)
class IncomingPolicy:
    """Which listeners take the target's traffic, and on which local port (pure)."""

    ports: frozenset[int] | None = None  # upstream `ports`: only these (None: all)
    ignore_ports: frozenset[int] = frozenset()
    ignore_localhost: bool = False  # upstream: sockets bound to localhost stay local
    listen_ports: dict[int, int] = field(default_factory=dict)  # requested P -> local port

    def applies(self, dest: Destination) -> bool:
        if dest.port == 0 or dest.port in self.ignore_ports:
            return False
        if self.ports is not None and dest.port not in self.ports:
            return False
        ip = ipaddress.ip_address(dest.ip)
        return not (self.ignore_localhost and ip.is_loopback)


@dataclass(frozen=True)
class _Handed:
    inode: int  # the socket's, to tell it from another with the same peer
    peer: bytes  # sockaddrs in the family of the program's listener
    local: bytes


def _peer_key(host: str, port: int) -> tuple[bytes, int]:
    """A peer as `_handed` knows it: the address bytes as Destination.ip has them (an
    IPv4 address for a v4-mapped one), and the port."""
    ip = packed_ip(host)
    return (ip[12:] if ip.startswith(V4_MAPPED_PREFIX) else ip), port


def _in_family(family: int, addr: tuple[str, int]) -> bytes:
    """ip:port as a sockaddr of `family` (an IPv6 address stays IPv6: no AF_INET form)."""
    host, port = addr
    shown = _sockaddr_text(family, host, port)
    if shown is None:
        shown = build_sockaddr(socket.AF_INET6, packed_ip(host), port)
    return shown


class Delivery(Protocol):
    """What the handlers need from the proxy side (mirrord/features/incoming/delivery.py)."""

    async def subscribe(
        self, family: int, ip: bytes, local_port: int, port: int, handoff: bool = False
    ) -> None:
        """Subscribe to the target's port for `port` (the program's requested one) and
        deliver its connections to the program's listener at ip:local_port. `handoff`:
        this engine answers the program's accept, so a local agent may hand stolen
        connections over whole (take_handed). Raises OSError (errno for the program) when
        refused."""
        ...

    def delivered(self, proxy_port: int) -> tuple[tuple[str, int], tuple[str, int]] | None:
        """(real remote peer, original destination) of the delivered connection whose
        proxy-side socket has local port proxy_port."""
        ...

    def take_handed(
        self, doorbell_port: int
    ) -> tuple[int, tuple[str, int], tuple[str, int]] | None:
        """The connection the local agent handed over whole with the doorbell from this
        port (our fd of it, its real peer, its original destination), if any."""
        ...


def _sockaddr_text(family: int, host: str, port: int) -> bytes | None:
    ip = packed_ip(host)
    if family == socket.AF_INET and len(ip) != 4:
        return None
    return build_sockaddr(family, ip, port)


def _bind_raw(fd: int, raw: bytes) -> int:
    """bind(2) on our duplicate of the program's socket; 0 or an errno."""
    buf = ctypes.create_string_buffer(raw, len(raw))
    if _libc.bind(fd, buf, len(raw)) == 0:
        return 0
    return ctypes.get_errno() or errno.EIO


def _with_port(raw: bytes, port: int) -> bytes:
    return raw[:2] + struct.pack("!H", port) + raw[4:]


class IncomingHandlers:
    def __init__(self, policy: IncomingPolicy, delivery: Delivery) -> None:
        self.policy = policy
        self.delivery = delivery
        # local port -> the port the program asked for. Keyed by port, not fd: every
        # socket on that port (SO_REUSEPORT workers, dups, forks) gets the same answer.
        self.bound: dict[int, int] = {}
        # requested port -> {socket inode: local port}: the program's sockets that asked
        # for it, to tell its own second bind (EADDRINUSE) from a port busy elsewhere.
        self._claims: dict[int, dict[int, int]] = {}
        self.subscribed: set[int] = set()
        # Notify engine: connections accepted for an accept whose answer could not be
        # delivered (ended by a signal), by listener inode, for the restarted accept.
        self._stash: dict[int, collections.deque[tuple[int, bytes]]] = {}
        self._accept_lock = threading.Lock()
        # Connections handed over whole (_adopt), by their real peer (address bytes as
        # Destination.ip, port), and the agent listener ports they came to: their names
        # are answered in the program's family. Dead ones are swept as it grows.
        self._handed: dict[tuple[bytes, int], _Handed] = {}
        self._handed_ports: set[int] = set()
        self._sweep_at = SWEEP_HANDED

    # --- bind / listen ---------------------------------------------------------------

    def bind(self, sc: Syscall, mem: Memory) -> Action:
        fd, ptr, size = sc.args[0], sc.args[1], sc.args[2] & 0xFFFFFFFF
        if ptr == 0 or size < 2:
            return Allow()
        try:
            dest = parse_sockaddr(mem.read(ptr, min(size, 128)))
        except OSError:
            return Allow()
        if dest is None or not self.policy.applies(dest):
            return Allow()
        try:
            with borrowed_socket(sc.tid, fd) as sock:
                if sock is None or sock.type != socket.SOCK_STREAM or sock.family not in INET:
                    return Allow()
                mapped = self.policy.listen_ports.get(dest.port)
                err = _bind_raw(sock.fileno(), _with_port(dest.raw, mapped or dest.port))
                if err == errno.EADDRINUSE and mapped is None:
                    err = self._bind_elsewhere(sock, dest)
                if err:
                    return Fake(-err)
                local = int(sock.getsockname()[1])
                inode = os.fstat(sock.fileno()).st_ino
        except OSError:
            return Allow()  # not ours to judge: let the kernel answer
        self.bound[local] = dest.port
        self._claims.setdefault(dest.port, {})[inode] = local
        if local != dest.port:
            log.info("port %d is bound locally on %d", dest.port, local)
        return Fake(0)

    def _bind_elsewhere(self, sock: socket.socket, dest: Destination) -> int:
        """P is taken on this machine. By the program's own socket (bound to P or moved
        off it): the kernel's answer for P stands, made on that socket's local port (so
        SO_REUSEPORT workers share it, and a plain second bind gets EADDRINUSE); also when
        that socket got P without asking us (bound to port 0, the kernel chose P). By
        anything else: any free port, which the program will know as P. 0 or an errno."""
        claims = self._claims.get(dest.port, {})
        held = held_by_program({str(i) for i in claims}) if claims else set()
        for inode in [i for i in claims if str(i) not in held]:
            del claims[inode]  # closed since: its port is free, or someone else's
        if claims:
            for local in sorted(set(claims.values())):
                err = _bind_raw(sock.fileno(), _with_port(dest.raw, local))
                if err != errno.EADDRINUSE:
                    return err
            return errno.EADDRINUSE
        if program_holds_tcp_port(dest.port):
            return errno.EADDRINUSE  # a socket of its own not bound through us (port 0)
        return _bind_raw(sock.fileno(), _with_port(dest.raw, 0))

    def listen(self, sc: Syscall, mem: Memory) -> Action:
        fd, backlog = sc.args[0], ctypes.c_int32(sc.args[1] & 0xFFFFFFFF).value
        try:
            with borrowed_socket(sc.tid, fd) as sock:
                if sock is None or sock.type != socket.SOCK_STREAM or sock.family not in INET:
                    return Allow()  # only TCP listeners take the target's traffic
                name = sock.getsockname()
                local = int(name[1])
                if local not in self.bound:
                    return Allow()
                family = sock.family
                # Before the first delivery can arrive; with a deep queue (see
                # DELIVERY_BACKLOG). Again for a re-listen, which would shrink it.
                sock.listen(max(backlog, DELIVERY_BACKLOG))
        except OSError:
            return Allow()
        if local in self.subscribed:
            return Fake(0)
        ip = ipaddress.ip_address(str(name[0]).split("%")[0]).packed
        requested = self.bound[local]
        self.subscribed.add(local)

        def then(result: Any, _m: Memory) -> Action:
            if isinstance(result, OSError):
                self.subscribed.discard(local)
                return Fake(-(result.errno or errno.EIO))
            if isinstance(result, BaseException):
                log.error("incoming subscription failed: %r", result)
            return Fake(0)

        # Only the notify engine answers accept with a connection of its choice.
        handoff = sc.notified
        return Defer(lambda: self.delivery.subscribe(family, ip, local, requested, handoff), then)

    # --- the addresses of delivered connections --------------------------------------------

    def _remote_of(self, got: Destination) -> bytes | None:
        if not got.is_loopback:
            return None
        found = self.delivery.delivered(got.port)
        if found is None:
            return None
        host, port = found[0]
        return _sockaddr_text(got.family, host, port)

    def accept(self, sc: Syscall, mem: Memory) -> Action:
        """accept and accept4 (same first three arguments)."""
        if sc.notified:
            return self._accept_notified(sc, mem)
        if not self.subscribed:
            return Allow()
        return rewrite_at_exit(mem, sc.args[1], sc.args[2], self._remote_of)

    def _accept_notified(self, sc: Syscall, mem: Memory) -> Action:
        if not self.subscribed:
            return Allow()
        fd, ptr, lenptr = sc.args[0], sc.args[1], sc.args[2]
        flags = sc.args[3] & 0xFFFFFFFF if sc.nr == NR["accept4"] else 0
        try:
            # A plain fd: a socket object (three more syscalls) only if the call waits.
            dup = borrow_fd(sc.tid, fd)
        except OSError:
            return Allow()
        try:
            name = parse_sockaddr(raw_name(dup, False))
            ours = name is not None and name.port in self.subscribed
            cap = struct.unpack("<I", mem.read(lenptr, 4))[0] if ptr and lenptr else 0
        except OSError:
            ours = False  # not a listener of ours, or a bad pointer: the kernel answers
        if not ours:
            os.close(dup)
            return Allow()
        return self._take(dup, flags, ptr, lenptr, cap, mem)

    def _take(
        self, listener: int, flags: int, ptr: int, lenptr: int, cap: int, mem: Memory
    ) -> Action:
        """Accept now, or wait for a connection as the program's accept would. Takes
        `listener` (our copy, a plain fd: a socket object only while it waits)."""
        try:
            inode = os.fstat(listener).st_ino
            got = self._accept_now(listener, inode)
        except OSError as exc:
            os.close(listener)
            return Fake(-(exc.errno or errno.EIO))
        if got is not None:
            os.close(listener)
            return self._deliver(got, inode, flags, ptr, lenptr, cap, mem)
        if rawmsg.nonblocking(listener):
            os.close(listener)
            return Fake(-errno.EAGAIN)
        sock = socket.socket(fileno=listener)
        return retry_when_ready(
            sock,
            lambda m: self._take(sock.detach(), flags, ptr, lenptr, cap, m),
            write=False,
            timeout=rawmsg.rcvtimeo(sock),
        )

    def _accept_now(self, fd: int, inode: int) -> tuple[int, bytes] | None:
        """A stashed connection, or one from the queue; None if the queue is empty.
        Poll first: on a blocking listener accept would wait."""
        with self._accept_lock:
            stash = self._stash.get(inode)
            if stash:
                return stash.popleft()
            poller = select.poll()
            poller.register(fd, select.POLLIN)
            if not poller.poll(0):
                return None
            try:
                return rawmsg.accept(fd)
            except BlockingIOError:
                return None

    def _stash_back(self, inode: int, conn: tuple[int, bytes]) -> None:
        with self._accept_lock:
            self._stash.setdefault(inode, collections.deque()).appendleft(conn)

    def _deliver(
        self,
        conn: tuple[int, bytes],
        inode: int,
        flags: int,
        ptr: int,
        lenptr: int,
        cap: int,
        mem: Memory,
    ) -> Action:
        """The accepted connection becomes the program's fd, its real peer in the
        program's address buffer."""
        fd, peer = conn
        got = parse_sockaddr(peer)
        if got is not None and got.is_loopback:
            handed = self.delivery.take_handed(got.port)
            if handed is not None:  # a doorbell: the program gets the connection itself
                os.close(fd)
                if handed[0] < 0:  # it never reached us: aborted, as the kernel says
                    return Fake(-errno.ECONNABORTED)
                fd, peer = self._adopt(handed, got.family)
                conn = (fd, peer)
                got = None
        if ptr and lenptr:
            shown = (self._remote_of(got) if got is not None else None) or peer
            try:
                write_name(mem, ptr, lenptr, cap, shown)
            except OSError:
                self._stash_back(inode, conn)
                return Fake(-errno.EFAULT)
        if flags & socket.SOCK_NONBLOCK:
            rawmsg.set_nonblocking(fd)
        elif got is None:  # handed over: the agent's file may have been non-blocking
            rawmsg.set_nonblocking(fd, False)
        return InstallFd(
            fd,
            cloexec=bool(flags & socket.SOCK_CLOEXEC),
            on_lost=lambda lost: self._stash_back(inode, (lost, peer)),
        )

    def _adopt(
        self, handed: tuple[int, tuple[str, int], tuple[str, int]], family: int
    ) -> tuple[int, bytes]:
        """A handed-over connection about to be the program's (its fd; its peer as the
        program's accept shows it). The agent's listener is dual-stack, so an IPv4 peer's
        socket is AF_INET6 (v4-mapped) whatever the program's listener is: getpeername and
        getsockname of it answer in the listener's family (`_handed`)."""
        fd, remote, original = handed
        try:
            local = parse_sockaddr(raw_name(fd, False))
            local_port = local.port if local is not None else 0
            inode = os.fstat(fd).st_ino
        except OSError:
            local_port, inode = 0, 0  # gone already: the program finds out itself
        peer = _in_family(family, remote)
        key = _peer_key(*remote)
        if len(self._handed) >= self._sweep_at:
            held = held_by_program({str(h.inode) for h in self._handed.values()})
            self._handed = {k: h for k, h in self._handed.items() if str(h.inode) in held}
            self._sweep_at = max(SWEEP_HANDED, 2 * len(self._handed))
        self._handed[key] = _Handed(inode, peer, _in_family(family, original))
        self._handed_ports.add(local_port)
        return fd, peer

    def _handed_of(self, dup: int, key: tuple[bytes, int] | None = None) -> _Handed | None:
        """The handed-over connection the program's socket (`dup`, our copy of it) is, if
        it is one: found by its peer (`key`, else read from the socket) and checked
        against the socket's inode."""
        if key is not None and key not in self._handed:
            return None
        try:
            if key is None:
                peer = parse_sockaddr(raw_name(dup, True))
                if peer is None:
                    return None
                key = (peer.ip, peer.port)
            inode = os.fstat(dup).st_ino
        except OSError:
            return None
        found = self._handed.get(key)
        return found if found is not None and found.inode == inode else None

    def peer_hook(self, dup: int, got: Destination) -> bytes | None:
        """getpeername: the real remote peer of a delivered connection."""
        if self._handed and not got.is_loopback:
            handed = self._handed_of(dup, (got.ip, got.port))
            if handed is not None:
                return handed.peer
        return self._remote_of(got) if self.subscribed else None

    def local_hook(self, dup: int, got: Destination) -> bytes | None:
        """getsockname: P for a listener bound elsewhere, the original destination for a
        delivered connection."""
        if got.port in self._handed_ports and not got.is_loopback:
            handed = self._handed_of(dup)
            if handed is not None:
                return handed.local
        requested = self.bound.get(got.port)
        if requested is None:
            return None
        try:
            peer = parse_sockaddr(raw_name(dup, True))
        except OSError:
            peer = None  # not connected: the listener itself
        if peer is not None:
            found = self.delivery.delivered(peer.port)
            if found is not None:
                return _sockaddr_text(got.family, *found[1])
        if requested == got.port:
            return None
        return build_sockaddr(got.family, got.ip, requested)
