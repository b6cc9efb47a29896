"""UDP calls with addresses, performed by the supervisor (notify engine).

A notified call cannot be pointed at another address, and its result cannot be fixed
after the kernel ran it, so when the program's datagram must go through the pod, the
supervisor sends it itself, on its duplicate of the program's socket (same open file,
same local port), to the interceptor; and for a socket that talks to interceptors it
receives for the program, giving it the remote's address instead of the interceptor's:
- sendto/sendmsg/sendmmsg to a REMOTE address: the program's bytes and control data are
  read from its memory and sent to the interceptor; the socket's inode is noted.
- recvfrom/recvmsg/recvmmsg with an address buffer, on a noted socket: received with our
  buffers of the program's sizes (MSG_TRUNC and control data as the kernel gives them),
  copied into the program's buffers, the source rewritten. Other sockets: the kernel's.
Blocking sockets wait for readiness on the loop (waits.py); a call ended by a signal
takes nothing, and a datagram taken for an answer that could not be delivered goes back
to the front of the socket's stash, for the restarted call.
Known difference: recvmmsg returns what is queued once one datagram came (as with
MSG_WAITFORONE), where a blocking one without that flag would wait for `vlen`.
"""

from __future__ import annotations

import collections
import errno
import logging
import os
import socket
import struct
import threading
from collections.abc import Callable, Sequence
from typing import Any

from mirrord.features.sockets import rawmsg
from mirrord.features.sockets.rawmsg import Datagram
from mirrord.features.sockets.sockaddr import Destination, parse_sockaddr, write_name
from mirrord.features.sockets.sockinfo import SocketInfo, info_of, try_borrow
from mirrord.features.sockets.waits import retry_when_ready
from mirrord.supervisor.actions import Action, Allow, Defer, Fake, Memory, Syscall

log = logging.getLogger("mirrord.features.outgoing")

MSGHDR = struct.Struct("<QI4xQQQQi4x")  # name, namelen, iov, iovlen, control, controllen, flags
MMSGHDR_SIZE = MSGHDR.size + 8
IOV = struct.Struct("<QQ")
MAX_IOV = 1024  # UIO_MAXIOV
MAX_DATAGRAM = 1 << 20  # more than any UDP datagram (GSO included): EMSGSIZE
MAX_CONTROL = 1 << 16
MAX_MMSG = 1024
MAX_NOTED = 65536

Route = Callable[[SocketInfo, Destination], str | None]
Interceptor = Callable[[Destination, int], bytes]
PeerOf = Callable[[Destination], bytes | None]


class _Noted:
    """Inodes of sockets that talk to interceptors (bounded; a stale inode only costs a
    performed receive that the kernel would have done the same)."""

    def __init__(self) -> None:
        self._inodes: dict[int, None] = {}
        self._lock = threading.Lock()

    def add(self, inode: int) -> None:
        with self._lock:
            self._inodes[inode] = None
            if len(self._inodes) > MAX_NOTED:
                for old in list(self._inodes)[: MAX_NOTED // 4]:
                    del self._inodes[old]

    def __contains__(self, inode: int) -> bool:
        return inode in self._inodes


def _iovecs(mem: Memory, addr: int, count: int) -> list[tuple[int, int]]:
    count = min(count, MAX_IOV)
    raw = mem.read(addr, count * IOV.size) if count else b""
    return [IOV.unpack_from(raw, i * IOV.size) for i in range(count)]


def _scatter(mem: Memory, iovs: Sequence[tuple[int, int]], data: bytes) -> None:
    off = 0
    for base, length in iovs:
        if off >= len(data):
            break
        chunk = data[off : off + length]
        if chunk:
            mem.write(base, chunk)
        off += len(chunk)


def _gather(mem: Memory, iovs: Sequence[tuple[int, int]]) -> bytes:
    total = sum(length for _base, length in iovs)
    if total > MAX_DATAGRAM:
        raise OSError(errno.EMSGSIZE, "message too long")
    return b"".join(mem.read(base, length) for base, length in iovs if length)


class UdpCalls:
    def __init__(
        self,
        route: Route,
        interceptor: Interceptor,
        udp_port: Callable[[Destination], int | None],
        open_udp: Callable[[Destination], Any],
        peer_of: PeerOf,
    ) -> None:
        self._route = route
        self._interceptor = interceptor
        self._udp_port = udp_port
        self._open_udp = open_udp
        self._peer_of = peer_of
        self.noted = _Noted()
        self._stash: dict[int, collections.deque[Datagram]] = {}
        self._lock = threading.Lock()

    def note(self, sock: socket.socket) -> None:
        self.noted.add(os.fstat(sock.fileno()).st_ino)

    # --- sends ------------------------------------------------------------------------

    def _remote_dests(
        self, sock: socket.socket, dests: Sequence[Destination | None]
    ) -> list[Destination | None] | None:
        """The destinations that go through the pod; None if none does (the kernel's)."""
        info = info_of(sock)
        if info.relayed != "udp" or info.family not in (socket.AF_INET, socket.AF_INET6):
            return None  # TCP ignores the address; raw/unix/UDP-Lite sockets are not ours
        wanted = [d if d is not None and self._route(info, d) == "udp" else None for d in dests]
        return wanted if any(wanted) else None

    def _sending(
        self, sc: Syscall, dests: Sequence[Destination | None]
    ) -> tuple[socket.socket, list[Destination | None]] | None:
        """(our duplicate, the destinations that go through the pod) for a send; None
        when the kernel's own call will do (not a UDP socket, nothing remote)."""
        sock = try_borrow(sc.tid, sc.args[0])
        if sock is None:
            return None
        wanted = self._remote_dests(sock, dests)
        if wanted is None:
            sock.close()
            return None
        return sock, wanted

    def _with_ports(
        self,
        sock: socket.socket,
        wanted: list[Destination | None],
        use: Callable[[list[bytes | None]], Action],
    ) -> Action:
        """Interceptor addresses for the remote destinations (made first if need be)."""
        ports = [self._udp_port(d) if d else None for d in wanted]

        def finish(found: Sequence[int | None]) -> Action:
            addrs = [
                self._interceptor(d, p) if d is not None and p is not None else None
                for d, p in zip(wanted, found, strict=True)
            ]
            return use(addrs)

        if all(p is not None for d, p in zip(wanted, ports, strict=True) if d is not None):
            return finish(ports)

        async def work() -> list[int | None]:
            return [await self._open_udp(d) if d else None for d in wanted]

        def then(result: Any, _m: Memory) -> Action:
            if isinstance(result, BaseException):
                sock.close()
                return Fake(-_errno_of(result))
            return finish(result)

        return Defer(work, then)

    def _send_all(
        self,
        sock: socket.socket,
        msgs: list[tuple[bytes, bytes | None, bytes]],
        flags: int,
        done: Callable[[list[int]], Action],
    ) -> Action:
        """Send (data, name, control) messages in order; `done(sent lengths)`. A blocking
        socket whose buffer is full waits (the first message), as the kernel would."""
        sent: list[int] = []
        for data, name, control in msgs:
            try:
                sent.append(rawmsg.sendmsg(sock.fileno(), data, name, control, flags))
            except BlockingIOError:
                if sent:
                    break  # what went, went (sendmmsg's partial count)
                if flags & socket.MSG_DONTWAIT or rawmsg.nonblocking(sock.fileno()):
                    sock.close()
                    return Fake(-errno.EAGAIN)
                return self._send_later(sock, msgs, flags, done)
            except OSError as exc:
                if not sent:
                    sock.close()
                    return Fake(-(exc.errno or errno.EIO))
                break
        self.note(sock)
        sock.close()
        return done(sent)

    def _send_later(
        self,
        sock: socket.socket,
        msgs: list[tuple[bytes, bytes | None, bytes]],
        flags: int,
        done: Callable[[list[int]], Action],
    ) -> Action:
        """The send buffer of a blocking socket is full: wait until it is writable."""
        return retry_when_ready(
            sock,
            lambda _m: self._send_all(sock, msgs, flags, done),
            write=True,
            timeout=rawmsg.sndtimeo(sock),
        )

    def sendto(self, sc: Syscall, mem: Memory, dest: Destination) -> Action:
        buf, size, flags = sc.args[1], sc.args[2] & 0xFFFFFFFF, sc.args[3]
        found = self._sending(sc, [dest])
        if found is None:
            return Allow()
        sock, wanted = found

        def use(addrs: list[bytes | None]) -> Action:
            if size > MAX_DATAGRAM:
                sock.close()
                return Fake(-errno.EMSGSIZE)
            try:
                data = mem.read(buf, size) if size else b""
            except OSError:
                sock.close()
                return Fake(-errno.EFAULT)
            msgs = [(data, addrs[0], b"")]
            return self._send_all(sock, msgs, flags & 0xFFFFFFFF, lambda n: Fake(n[0]))

        return self._with_ports(sock, wanted, use)

    def _read_msg(self, mem: Memory, hdr: bytes) -> tuple[bytes, Destination | None, bytes]:
        """(data, destination, control) of a msghdr the program gave."""
        name, namelen, iov, iovlen, control, controllen, _flags = MSGHDR.unpack(hdr)
        dest = None
        if name and namelen >= 2:
            dest = parse_sockaddr(mem.read(name, min(namelen, 128)))
        data = _gather(mem, _iovecs(mem, iov, iovlen))
        ctrl = mem.read(control, min(controllen, MAX_CONTROL)) if control and controllen else b""
        return data, dest, ctrl

    def sendmsg(self, sc: Syscall, mem: Memory) -> Action:
        hdr_addr, flags = sc.args[1], sc.args[2] & 0xFFFFFFFF
        try:
            hdr = mem.read(hdr_addr, MSGHDR.size)
            name, namelen = MSGHDR.unpack(hdr)[:2]
            dest = parse_sockaddr(mem.read(name, min(namelen, 128))) if name else None
        except OSError:
            return Allow()  # EFAULT from the kernel
        if dest is None:
            return Allow()
        found = self._sending(sc, [dest])
        if found is None:
            return Allow()
        sock, wanted = found

        def use(addrs: list[bytes | None]) -> Action:
            try:
                data, _dest, ctrl = self._read_msg(mem, hdr)
            except OSError as exc:
                sock.close()
                return Fake(-(exc.errno or errno.EFAULT))
            return self._send_all(sock, [(data, addrs[0], ctrl)], flags, lambda n: Fake(n[0]))

        return self._with_ports(sock, wanted, use)

    def sendmmsg(self, sc: Syscall, mem: Memory) -> Action:
        vec, vlen, flags = (
            sc.args[1],
            min(sc.args[2] & 0xFFFFFFFF, MAX_MMSG),
            sc.args[3],
        )
        try:
            raw = mem.read(vec, vlen * MMSGHDR_SIZE)
            hdrs = [raw[i * MMSGHDR_SIZE : i * MMSGHDR_SIZE + MSGHDR.size] for i in range(vlen)]
            dests = []
            for h in hdrs:
                name, namelen = MSGHDR.unpack(h)[:2]
                dests.append(parse_sockaddr(mem.read(name, min(namelen, 128))) if name else None)
        except OSError:
            return Allow()
        if not any(dests):
            return Allow()
        found = self._sending(sc, dests)
        if found is None:
            return Allow()
        sock, wanted = found

        def use(addrs: list[bytes | None]) -> Action:
            msgs = []
            try:
                for h, d, a in zip(hdrs, dests, addrs, strict=True):
                    data, _dest, ctrl = self._read_msg(mem, h)
                    # Local destinations keep the program's own address.
                    original = d.raw if d is not None else None
                    msgs.append((data, a if a is not None else original, ctrl))
            except OSError as exc:
                sock.close()
                return Fake(-(exc.errno or errno.EFAULT))

            def done(sent: list[int]) -> Action:
                for i, n in enumerate(sent):
                    mem.write(vec + i * MMSGHDR_SIZE + MSGHDR.size, struct.pack("<I", n))
                return Fake(len(sent))

            return self._send_all(sock, msgs, flags & 0xFFFFFFFF, done)

        return self._with_ports(sock, wanted, use)

    # --- receives -------------------------------------------------------------------------

    def _noted_socket(self, tid: int, fd: int) -> tuple[socket.socket, int] | None:
        sock = try_borrow(tid, fd)
        if sock is None:
            return None
        inode = os.fstat(sock.fileno()).st_ino
        if inode not in self.noted:
            sock.close()
            return None
        return sock, inode

    def _take(
        self, sock: socket.socket, inode: int, size: int, csize: int, flags: int
    ) -> Datagram | None:
        """The next datagram: a stashed one first; None if nothing is queued."""
        with self._lock:
            stash = self._stash.get(inode)
            if stash:
                return stash[0] if flags & socket.MSG_PEEK else stash.popleft()
        try:
            return rawmsg.recvmsg(sock.fileno(), size, csize, flags & ~socket.MSG_DONTWAIT)
        except BlockingIOError:
            return None

    def _give_back(self, inode: int, dgram: Datagram) -> None:
        with self._lock:
            self._stash.setdefault(inode, collections.deque()).appendleft(dgram)

    def _name_for(self, dgram: Datagram) -> bytes:
        got = parse_sockaddr(dgram.name)
        new = self._peer_of(got) if got is not None else None
        return new if new is not None else dgram.name

    def _receive(
        self,
        sock: socket.socket,
        inode: int,
        size: int,
        csize: int,
        flags: int,
        deliver: Callable[[Datagram], Action],
    ) -> Action:
        """Take a datagram and deliver it, or wait for one as the program's call would."""
        try:
            dgram = self._take(sock, inode, size, csize, flags)
        except OSError as exc:
            sock.close()
            return Fake(-(exc.errno or errno.EIO))
        if dgram is not None:
            sock.close()
            try:
                action = deliver(dgram)
            except OSError:
                action = Fake(-errno.EFAULT)
            if isinstance(action, Fake) and action.ret >= 0 and not flags & socket.MSG_PEEK:
                inner = action.on_lost

                def lost() -> None:
                    if inner is not None:
                        inner()  # the later ones of a recvmmsg, first
                    self._give_back(inode, dgram)

                return Fake(action.ret, on_lost=lost)
            return action
        if flags & socket.MSG_DONTWAIT or rawmsg.nonblocking(sock.fileno()):
            sock.close()
            return Fake(-errno.EAGAIN)
        return retry_when_ready(
            sock,
            lambda _m: self._receive(sock, inode, size, csize, flags, deliver),
            write=False,
            timeout=rawmsg.rcvtimeo(sock),
        )

    def recvfrom(self, sc: Syscall, mem: Memory) -> Action:
        fd, buf, size, flags = sc.args[0], sc.args[1], sc.args[2] & 0xFFFFFFFF, sc.args[3]
        ptr, lenptr = sc.args[4], sc.args[5]
        if not ptr or not lenptr:
            return Allow()
        found = self._noted_socket(sc.tid, fd)
        if found is None:
            return Allow()
        try:
            (cap,) = struct.unpack("<I", mem.read(lenptr, 4))
        except OSError:
            found[0].close()
            return Allow()  # EFAULT from the kernel

        def deliver(d: Datagram) -> Action:
            if d.data:
                mem.write(buf, d.data[:size])
            write_name(mem, ptr, lenptr, cap, self._name_for(d))
            return Fake(d.ret)

        return self._receive(
            found[0], found[1], min(size, MAX_DATAGRAM), 0, flags & 0xFFFFFFFF, deliver
        )

    def _deliver_msg(self, mem: Memory, hdr_addr: int, hdr: bytes, d: Datagram) -> None:
        name_ptr, cap, iov, iovlen, control, controllen, _flags = MSGHDR.unpack(hdr)
        _scatter(mem, _iovecs(mem, iov, iovlen), d.data)
        name = self._name_for(d)
        if name_ptr and cap:
            mem.write(name_ptr, name[:cap])
        ctrl = d.control[:controllen] if control else b""
        if ctrl:
            mem.write(control, ctrl)
        out = list(MSGHDR.unpack(hdr))
        out[1] = len(name) if name_ptr else 0
        out[5] = len(ctrl)
        out[6] = d.flags
        mem.write(hdr_addr, MSGHDR.pack(*out))

    def recvmsg(self, sc: Syscall, mem: Memory) -> Action:
        fd, hdr_addr, flags = sc.args[0], sc.args[1], sc.args[2] & 0xFFFFFFFF
        try:
            hdr = mem.read(hdr_addr, MSGHDR.size)
        except OSError:
            return Allow()
        name, _cap, iov, iovlen, _control, controllen, _flags = MSGHDR.unpack(hdr)
        if not name or flags & socket.MSG_ERRQUEUE:
            return Allow()
        found = self._noted_socket(sc.tid, fd)
        if found is None:
            return Allow()
        try:
            size = min(sum(length for _b, length in _iovecs(mem, iov, iovlen)), MAX_DATAGRAM)
        except OSError:
            found[0].close()
            return Allow()

        def deliver(d: Datagram) -> Action:
            self._deliver_msg(mem, hdr_addr, hdr, d)
            return Fake(d.ret)

        csize = min(controllen, MAX_CONTROL)
        return self._receive(found[0], found[1], size, csize, flags, deliver)

    def recvmmsg(self, sc: Syscall, mem: Memory) -> Action:
        fd, vec, vlen, flags = (
            sc.args[0],
            sc.args[1],
            min(sc.args[2] & 0xFFFFFFFF, MAX_MMSG),
            sc.args[3],
        )
        flags &= 0xFFFFFFFF
        try:
            raw = mem.read(vec, vlen * MMSGHDR_SIZE)
        except OSError:
            return Allow()
        hdrs = [raw[i * MMSGHDR_SIZE : i * MMSGHDR_SIZE + MSGHDR.size] for i in range(vlen)]
        if not hdrs or not any(MSGHDR.unpack(h)[0] for h in hdrs) or flags & socket.MSG_ERRQUEUE:
            return Allow()
        found = self._noted_socket(sc.tid, fd)
        if found is None:
            return Allow()
        sock, inode = found

        def sizes(h: bytes) -> tuple[int, int]:
            _n, _c, iov, iovlen, _ctl, controllen, _f = MSGHDR.unpack(h)
            total = sum(length for _b, length in _iovecs(mem, iov, iovlen))
            return min(total, MAX_DATAGRAM), min(controllen, MAX_CONTROL)

        def deliver(first: Datagram) -> Action:
            got = [first]
            dup = try_borrow(sc.tid, fd)
            try:
                while dup is not None and len(got) < vlen:
                    size, csize = sizes(hdrs[len(got)])
                    nxt = self._take(dup, inode, size, csize, flags | socket.MSG_DONTWAIT)
                    if nxt is None:
                        break
                    got.append(nxt)
            except OSError:
                pass
            finally:
                if dup is not None:
                    dup.close()
            for i, d in enumerate(got):
                addr = vec + i * MMSGHDR_SIZE
                self._deliver_msg(mem, addr, hdrs[i], d)
                mem.write(addr + MSGHDR.size, struct.pack("<I", d.ret))

            def lost() -> None:
                for d in reversed(got[1:]):
                    self._give_back(inode, d)

            return Fake(len(got), on_lost=lost)

        size, csize = sizes(hdrs[0])
        return self._receive(sock, inode, size, csize, flags, deliver)


def _errno_of(result: BaseException) -> int:
    if isinstance(result, OSError) and result.errno:
        return result.errno
    log.error("network redirect failed: %r", result)
    return errno.EIO
