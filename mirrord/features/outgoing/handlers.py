"""Socket syscall handlers: redirect what must leave from the pod to loopback
interceptors, and make the program see the addresses it asked for.

- connect(TCP, IPv4/IPv6/v4-mapped) to a REMOTE destination: the thread waits (Defer)
  while the proxy has the agent connect from the pod; then the program's socket is
  connected to the interceptor through our pidfd_getfd duplicate of it, and the syscall
  is skipped with that connect's result (or fails with the pod's errno): the kernel's own
  loopback connect gives blocking/non-blocking semantics (0 or EINPROGRESS, then
  writable), with no argument rewrite and so no exit stop. When the agent shares our
  loopback (a local agent), the socket is instead connected to the agent's own listener
  and the agent connects and relays (proxy/direct.py). UDP connects and unix-stream
  connects (unix_streams) are made the same way, to the UDP interceptor / the proxy's
  unix listener. Data then flows natively: no stop per read/write.
- getpeername/getsockname: answered from our duplicate of the socket, the interceptor's
  loopback address becomes the original destination / the pod-side socket's address
  (looked up by port, so every dup and forked copy of the fd gets the same answer;
  direct connections, which share the agent's port, by the program socket's own port).
connect, getpeername and getsockname never change registers or need the kernel's result,
so they are seccomp user notifications (notify.py), not ptrace stops.
- sendto/sendmsg/sendmmsg with an address (unconnected UDP): the address is swapped for
  the interceptor's; recvfrom/recvmsg/recvmmsg: the interceptor source becomes the remote.
  Notify engine: the supervisor performs them (udp_calls.py); ptrace engine: a rewritten
  copy of the address below SP, the source rewritten at the exit stop.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
import struct
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from mirrord.features.outgoing.filters import OutgoingRules, Route
from mirrord.features.outgoing.redirect import Redirector
from mirrord.features.outgoing.udp_calls import UdpCalls
from mirrord.features.sockets.listeners import program_listens_on
from mirrord.features.sockets.sockaddr import (
    Destination,
    build_sockaddr,
    loopback_kind,
    parse_sockaddr,
    rewrite_at_exit,
    rewrite_sockaddr,
    write_name,
)
from mirrord.features.sockets.sockinfo import (
    SocketInfo,
    borrow,
    borrow_fd,
    info_of,
    raw_name,
    socket_info,
    try_borrow,
)
from mirrord.supervisor.actions import Action, Allow, Defer, Fake, Memory, Syscall

if TYPE_CHECKING:
    from mirrord.explain import Explainer

log = logging.getLogger("mirrord.features.outgoing")

MSGHDR = struct.Struct("<QI4xQQQQi4x")  # name, namelen, iov, iovlen, control, controllen, flags
MMSGHDR_SIZE = MSGHDR.size + 8  # + unsigned msg_len, padded
MAX_MMSG = 64  # sendmmsg entries rewritten per call; the program sees a partial send
SOCKADDR_SLOT = 32
# A signal during a pod connect interrupts it only after this long: a pod connect takes
# milliseconds, and natively an interrupted connect completes in the background (CPython
# then waits for it), which a socket we have not connected yet cannot show.
CONNECT_GRACE_S = 0.25
# (our copy of the program's socket fd, what the kernel answered) -> the sockaddr to show
AddressHook = Callable[[int, Destination], bytes | None]


def _errno_of(result: BaseException) -> int:
    if isinstance(result, OSError) and result.errno:
        return result.errno
    log.error("network redirect failed: %r", result)
    return errno.EIO


def _fake_result(result: Any, _m: Memory) -> Action:
    """`then` of a Defer whose work returns the syscall's result (0 or -errno)."""
    if isinstance(result, BaseException):
        return Fake(-_errno_of(result))
    return Fake(int(result))


class NetHandlers:
    def __init__(
        self,
        rules: OutgoingRules,
        redirector: Redirector,
        program_listens: Callable[[int], bool] = program_listens_on,
        *,
        incoming_peer: AddressHook | None = None,
        incoming_local: AddressHook | None = None,
        explain: Explainer | None = None,
    ) -> None:
        """incoming_peer/incoming_local: incoming traffic's lookups (features/incoming/
        handlers.py), tried first. explain: each decision recorded (None: off, one
        attribute test per route)."""
        self.rules = rules
        self.redirector = redirector
        self.program_listens = program_listens
        self.explain = explain
        self._udp_explained: set[tuple[bytes, int]] = set()
        self.incoming_peer = incoming_peer
        self.incoming_local = incoming_local
        # Notify engine: UDP calls with addresses, performed for the program.
        self.udp = UdpCalls(
            route=self._route,
            interceptor=self._interceptor,
            udp_port=redirector.udp_port,
            open_udp=redirector.open_udp,
            peer_of=self._peer_of,
        )

    # --- decisions -------------------------------------------------------------------

    def _udp_remote(self, tid: int, fd: int, dest: Destination) -> bool:
        """This UDP socket's datagrams to dest go through the pod. Any other socket is
        answered before routing: a sendto with an address on a connected TCP socket must
        cost nothing (routing may read /proc for the localhost rule)."""
        try:
            info = socket_info(tid, fd)
        except OSError:
            return False
        if info is None or info.relayed != "udp":
            return False
        return self._route(info, dest) == "udp"

    def _route(self, info: SocketInfo | None, dest: Destination) -> str | None:
        if info is None or info.family != dest.family:
            return None
        protocol = info.relayed
        if protocol is None:
            return None
        route = self.rules.route(
            protocol, dest.ip, dest.port, lambda: self.program_listens(dest.port)
        )
        if self.explain is not None:
            self._explain_route(protocol, dest, route)
        return protocol if route is Route.REMOTE else None

    def _explain_route(self, protocol: str, dest: Destination, route: Route) -> None:
        if protocol == "tcp" and route is Route.REMOTE:
            return  # recorded with its result by _connect_tcp
        if protocol == "udp":  # per datagram: each destination once
            if (dest.ip, dest.port) in self._udp_explained:
                return
            if len(self._udp_explained) >= 4096:
                self._udp_explained.clear()
            self._udp_explained.add((dest.ip, dest.port))
        self._record_connect(protocol, dest, route is Route.REMOTE)

    def _record_connect(
        self, protocol: str, dest: Destination, remote: bool, result: str | None = None
    ) -> None:
        assert self.explain is not None
        rule = self.rules.rule_for(
            protocol, dest.ip, dest.port, lambda: self.program_listens(dest.port)
        )
        host = dest.ip_text if len(dest.ip) == 4 else f"[{dest.ip_text}]"
        self.explain.record(
            "connect",
            protocol=protocol,
            destination=f"{host}:{dest.port}",
            decision="remote" if remote else "local",
            rule=rule,
            result=result,
        )

    def _interceptor(self, dest: Destination, port: int) -> bytes:
        return build_sockaddr(dest.family, self.redirector.interceptor_ip(dest.family), port)

    def _kind(self, dest: Destination) -> str:
        return "v4" if len(self.redirector.interceptor_ip(dest.family)) == 4 else "v6"

    # --- connect ---------------------------------------------------------------------

    def connect(self, sc: Syscall, mem: Memory) -> Action:
        fd, ptr, size = sc.args[0], sc.args[1], sc.args[2] & 0xFFFFFFFF
        if ptr == 0 or size < 2:
            return Allow()
        try:
            raw = mem.read(ptr, min(size, 128))
        except OSError:
            return Allow()
        if self.rules.unix_streams and struct.unpack_from("<H", raw)[0] == socket.AF_UNIX:
            return self._connect_unix(sc, raw)
        dest = parse_sockaddr(raw)
        if dest is None:
            return Allow()
        sock = try_borrow(sc.tid, fd)
        if sock is None:
            return Allow()
        try:
            protocol = self._route(info_of(sock), dest)
        except OSError:
            protocol = None
        except BaseException:
            sock.close()
            raise
        if protocol == "tcp":
            # The program's socket is connected to the interceptor through our duplicate
            # of it, and the syscall is skipped with that connect's result: no argument
            # rewrite, so no exit stop either (a stop costs ~60 µs across CPUs). The pod's
            # connect may take long (SYN retries): a signal ends the program's wait as it
            # would natively (after CONNECT_GRACE_S: natively the connection would go on
            # and complete, which an unconnected socket cannot show); the connection goes
            # on and a restarted connect joins it.
            return Defer(
                lambda: self._connect_tcp(sock, dest),
                _fake_result,
                interruptible=True,
                grace=CONNECT_GRACE_S,
            )
        if protocol is None:
            sock.close()
            return Allow()
        return self._connect_udp(sock, dest)

    async def _connect_tcp(self, sock: socket.socket, dest: Destination) -> int:
        """Runs on the proxy's loop: the redirector makes the whole connect (the pod's,
        then the program's socket on loopback); -errno or 0, as connect(2) returns it."""
        try:
            try:
                done = await self.redirector.connect_tcp(sock, dest)
            except OSError as e:
                if self.explain is not None:
                    name = errno.errorcode.get(e.errno or errno.EIO, str(e.errno))
                    self._record_connect("tcp", dest, True, name)
                raise
            if self.explain is not None:
                pod = errno.errorcode.get(done.pod_errno, "") if done.pod_errno else "connected"
                self._record_connect("tcp", dest, True, pod)
            return done.result
        finally:
            sock.close()  # our duplicate only

    def _connect_dup(self, sock: socket.socket, dest: Destination, port: int, note: bool) -> int:
        """Connect the program's socket (our duplicate) to the interceptor's port; note
        which interceptor its local port talks to (getpeername/recvfrom look it up).
        -errno or 0, as connect(2) returns it."""
        ip = socket.inet_ntop(sock.family, self.redirector.interceptor_ip(dest.family))
        err = sock.connect_ex((ip, port))
        if note and err in (0, errno.EINPROGRESS):
            name = sock.getsockname()
            if isinstance(name, tuple):
                self.redirector.note_local(self._kind(dest), int(name[1]), port)
        return -err

    def _connect_udp(self, sock: socket.socket, dest: Destination) -> Action:
        """Connect the program's UDP socket (our duplicate `sock`, closed here) to the
        interceptor for dest; a UDP connect never blocks."""

        def finish(port: int) -> Action:
            try:
                ret = self._connect_dup(sock, dest, port, note=True)
                if ret == 0:
                    self.udp.note(sock)  # its receives may come from the interceptor
                return Fake(ret)
            finally:
                sock.close()

        cached = self.redirector.udp_port(dest)
        if cached is not None:
            return finish(cached)

        def then(result: Any, _m: Memory) -> Action:
            if isinstance(result, BaseException):
                sock.close()
                return Fake(-_errno_of(result))
            return finish(int(result))

        return Defer(lambda: self.redirector.open_udp(dest), then)

    def _connect_unix(self, sc: Syscall, raw: bytes) -> Action:
        """A unix stream socket connect to a path matching outgoing.unix_streams: the agent
        connects to the target's socket, the program's socket to a local unix listener of
        the proxy that relays to it (rewritten sockaddr_un below SP)."""
        sun_path = raw[2:]
        if sun_path[:1] == b"\0":
            name = sun_path  # abstract: the length is the name's, NULs included
        else:
            name = sun_path.split(b"\0", 1)[0]
            if not name.startswith(b"/"):
                return Allow()  # relative to the program's own cwd: a local path
        try:
            path = name.decode()
        except UnicodeDecodeError:
            return Allow()
        if not self.rules.unix_remote(path):
            return Allow()
        try:
            sock = borrow(sc.tid, sc.args[0])
        except OSError:
            return Allow()
        if sock is None:
            return Allow()
        info = info_of(sock)
        if info.family != socket.AF_UNIX or info.kind != socket.SOCK_STREAM:
            sock.close()
            return Allow()

        def then(result: Any, _m: Memory) -> Action:
            # The program's socket, through our duplicate, to the proxy's unix listener
            # (it accepts at once: the connect does not wait).
            try:
                if isinstance(result, BaseException):
                    return Fake(-_errno_of(result))
                local: bytes = result
                return Fake(-sock.connect_ex(local))
            finally:
                sock.close()

        return Defer(lambda: self.redirector.open_unix(path), then)

    # --- addresses the program reads back ----------------------------------------------

    def _peer_of(self, got: Destination, local: Destination | None = None) -> bytes | None:
        kind = loopback_kind(got)
        if kind is None:
            return None
        raw = self.redirector.original(kind, got.port, local.port if local else None)
        if raw is None:
            return None
        orig = parse_sockaddr(raw)
        if orig is None or orig.family == got.family:
            return raw
        return build_sockaddr(got.family, orig.ip, orig.port)

    def _local_of(self, got: Destination, peer: Destination | None = None) -> bytes | None:
        kind = loopback_kind(got)
        if kind is None:
            return None
        local = self.redirector.pod_local(kind, got.port, peer.port if peer else None)
        if local is None:
            return None
        ip, port = local
        if got.family == socket.AF_INET and len(ip) != 4:
            return None
        return build_sockaddr(got.family, ip, port)

    def _name_call(
        self,
        sc: Syscall,
        mem: Memory,
        look: Callable[[Destination, Destination | None], bytes | None],
        hook: AddressHook | None,
        peer: bool,
    ) -> Action:
        """getpeername/getsockname: the kernel's answer, or what `hook` (incoming
        traffic's, tried first, on the same copy of the socket) or `look` shows instead."""
        ptr, lenptr = sc.args[1], sc.args[2]
        if not ptr or not lenptr:
            return Allow()
        try:
            (cap,) = struct.unpack("<I", mem.read(lenptr, 4))
            dup = borrow_fd(sc.tid, sc.args[0])
        except OSError:
            return Allow()  # a bad pointer or fd: the kernel's own error
        # A plain fd, no socket object: making one asks the kernel three more questions,
        # and this is on every accepted connection's path (its getsockname).
        try:
            if cap > 0x7FFFFFFF:
                return Allow()  # a negative length: the kernel's EINVAL
            try:
                raw = raw_name(dup, peer)  # what the kernel would answer
            except OSError as e:
                if e.errno == errno.ENOTSOCK:
                    return Allow()  # the kernel's ENOTSOCK
                return Fake(-(e.errno or errno.EIO))  # ENOTCONN…
            got = parse_sockaddr(raw)
            new = hook(dup, got) if hook is not None and got is not None else None
            if new is None and got is not None:
                # The other end too, for a loopback one: direct connections all have the
                # same peer and are told apart by their own port.
                other = None
                if loopback_kind(got) is not None:
                    with contextlib.suppress(OSError):
                        other = parse_sockaddr(raw_name(dup, not peer))
                new = look(got, other)
        finally:
            os.close(dup)
        try:
            write_name(mem, ptr, lenptr, cap, raw if new is None else new)
        except OSError:
            return Fake(-errno.EFAULT)
        return Fake(0)

    def getpeername(self, sc: Syscall, mem: Memory) -> Action:
        return self._name_call(sc, mem, self._peer_of, self.incoming_peer, peer=True)

    def getsockname(self, sc: Syscall, mem: Memory) -> Action:
        return self._name_call(sc, mem, self._local_of, self.incoming_local, peer=False)

    def recvfrom(self, sc: Syscall, mem: Memory) -> Action:
        if sc.notified:
            return self.udp.recvfrom(sc, mem)
        return rewrite_at_exit(mem, sc.args[4], sc.args[5], self._peer_of)

    def _fix_msghdr(self, m: Memory, hdr_addr: int, cap: int) -> None:
        name, _namelen, *_ = MSGHDR.unpack(m.read(hdr_addr, MSGHDR.size))
        if name and cap:
            rewrite_sockaddr(m, name, hdr_addr + 8, cap, self._peer_of)

    def recvmsg(self, sc: Syscall, mem: Memory) -> Action:
        if sc.notified:
            return self.udp.recvmsg(sc, mem)
        hdr = sc.args[1]
        try:
            name, cap, *_ = MSGHDR.unpack(mem.read(hdr, MSGHDR.size))
        except OSError:
            return Allow()
        if not name:
            return Allow()

        def on_exit(ret: int, m: Memory) -> int | None:
            if ret >= 0:
                self._fix_msghdr(m, hdr, cap)
            return None

        return Allow(on_exit=on_exit)

    def recvmmsg(self, sc: Syscall, mem: Memory) -> Action:
        if sc.notified:
            return self.udp.recvmmsg(sc, mem)
        vec, vlen = sc.args[1], min(sc.args[2] & 0xFFFFFFFF, 1024)
        try:
            raw = mem.read(vec, vlen * MMSGHDR_SIZE)
        except OSError:
            return Allow()
        caps = [MSGHDR.unpack_from(raw, i * MMSGHDR_SIZE)[1] for i in range(vlen)]

        def on_exit(ret: int, m: Memory) -> int | None:
            for i in range(max(ret, 0)):
                self._fix_msghdr(m, vec + i * MMSGHDR_SIZE, caps[i])
            return None

        return Allow(on_exit=on_exit)

    # --- sends with an address (unconnected UDP) ----------------------------------------

    def _udp_ports(
        self,
        sc: Syscall,
        dests: Sequence[Destination | None],
        use: Callable[[list[int | None]], Action],
    ) -> Action:
        """Interceptor ports for the REMOTE destinations (None: leave that one alone),
        found at once when they exist, else after a Defer that makes them."""
        wanted: list[Destination | None] = [
            d if d is not None and self._udp_remote(sc.tid, sc.args[0], d) else None for d in dests
        ]
        if not any(wanted):
            return Allow()
        ports = [self.redirector.udp_port(d) if d else None for d in wanted]
        missing = [d for d, p in zip(wanted, ports, strict=True) if d is not None and p is None]
        if not missing:
            return use(ports)

        async def work() -> list[int | None]:
            return [await self.redirector.open_udp(d) if d else None for d in wanted]

        def then(result: Any, _m: Memory) -> Action:
            if isinstance(result, BaseException):
                return Fake(-_errno_of(result))
            return use(list(result))

        return Defer(work, then)

    def sendto(self, sc: Syscall, mem: Memory) -> Action:
        ptr, size = sc.args[4], sc.args[5] & 0xFFFFFFFF
        if not ptr:
            return Allow()
        try:
            dest = parse_sockaddr(mem.read(ptr, min(size, 128)))
        except OSError:
            return Allow()
        if dest is None:
            return Allow()
        if sc.notified:
            return self.udp.sendto(sc, mem, dest)
        scratch = sc.scratch(SOCKADDR_SLOT)

        def use(ports: list[int | None]) -> Action:
            assert dest is not None and ports[0] is not None
            addr = self._interceptor(dest, ports[0])
            mem.write(scratch, addr)  # the same thread's memory, before or after a Defer
            return Allow(set_args={4: scratch, 5: len(addr)})

        return self._udp_ports(sc, [dest], use)

    def _read_msg_dest(self, mem: Memory, hdr: bytes) -> Destination | None:
        name, namelen, *_ = MSGHDR.unpack(hdr)
        if not name or namelen < 2:
            return None
        try:
            return parse_sockaddr(mem.read(name, min(namelen, 128)))
        except OSError:
            return None

    def sendmsg(self, sc: Syscall, mem: Memory) -> Action:
        if sc.notified:
            return self.udp.sendmsg(sc, mem)
        try:
            hdr = mem.read(sc.args[1], MSGHDR.size)
        except OSError:
            return Allow()
        dest = self._read_msg_dest(mem, hdr)
        if dest is None:
            return Allow()
        area = sc.scratch(SOCKADDR_SLOT + MSGHDR.size)

        def use(ports: list[int | None]) -> Action:
            assert dest is not None and ports[0] is not None
            addr = self._interceptor(dest, ports[0])
            fields = list(MSGHDR.unpack(hdr))
            fields[0], fields[1] = area, len(addr)
            mem.write(area, addr.ljust(SOCKADDR_SLOT, b"\0") + MSGHDR.pack(*fields))
            return Allow(set_args={1: area + SOCKADDR_SLOT})

        return self._udp_ports(sc, [dest], use)

    def sendmmsg(self, sc: Syscall, mem: Memory) -> Action:
        if sc.notified:
            return self.udp.sendmmsg(sc, mem)
        vec, vlen = sc.args[1], min(sc.args[2] & 0xFFFFFFFF, MAX_MMSG)
        try:
            raw = mem.read(vec, vlen * MMSGHDR_SIZE)
        except OSError:
            return Allow()
        hdrs = [raw[i * MMSGHDR_SIZE : i * MMSGHDR_SIZE + MSGHDR.size] for i in range(vlen)]
        dests = [self._read_msg_dest(mem, h) for h in hdrs]
        slot = SOCKADDR_SLOT + MMSGHDR_SIZE
        area = sc.scratch(slot * vlen)

        def use(ports: list[int | None]) -> Action:
            out = bytearray()
            names = bytearray()
            for i, (h, d, p) in enumerate(zip(hdrs, dests, ports, strict=True)):
                fields = list(MSGHDR.unpack(h))
                if d is not None and p is not None:
                    addr = self._interceptor(d, p)
                    fields[0], fields[1] = area + vlen * MMSGHDR_SIZE + i * SOCKADDR_SLOT, len(addr)
                    names += addr.ljust(SOCKADDR_SLOT, b"\0")
                else:
                    names += b"\0" * SOCKADDR_SLOT
                out += MSGHDR.pack(*fields) + b"\0" * 8
            mem.write(area, bytes(out + names))

            def on_exit(ret: int, m: Memory) -> int | None:
                # The kernel wrote msg_len into our copy; the program reads its own array.
                for i in range(max(ret, 0)):
                    off = i * MMSGHDR_SIZE + MSGHDR.size
                    m.write(vec + off, m.read(area + off, 4))
                return None

            return Allow(set_args={1: area, 2: vlen}, on_exit=on_exit)

        return self._udp_ports(sc, dests, use)
