"""Incoming traffic, proxy side: subscriptions and delivery to the program's listener.

Implements the supervisor's `Delivery` (supervisor/net/incoming.py). Per listening socket
of the program, one agent `Subscription`; per connection the agent delivers, a loopback
connection from here to the program's real local listener, relayed over the agent's
stream (steal: both ways; mirror: the program's answers are read and dropped here, the
pod's server answers the peer). The proxy socket's local port names the delivered
connection, so accept/getpeername can show the real remote peer without any per-fd state.

With a local agent (`direct`), the agent connects to the program's listener itself and
pumps the bytes (agent/incoming/direct.py); its delivering socket's port is told on a
datagram socket of ours before it connects, and read here (`delivered`).
"""

from __future__ import annotations

import array
import asyncio
import collections
import contextlib
import errno
import logging
import os
import secrets
import socket
import struct
import threading
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mirrord.client.errors import AgentError, AgentLost
from mirrord.client.probes import ProbeSpec
from mirrord.config.models import HTTP_FILTER_KINDS
from mirrord.features.incoming.client import (
    HttpFilterSpec,
    IncomingClient,
    IncomingConnection,
    IncomingUnavailable,
    Mode,
    PortTaken,
    Subscription,
)
from mirrord.features.sockets.fdlimit import raise_fd_limit
from mirrord.features.sockets.reset import reset_fd
from mirrord.say import say as _say
from mirrord.v1.incoming_pb2 import IncomingDirect
from mirrord.wire.direct import (
    NOTE_GONE,
    NOTE_HANDOFF,
    NOTE_NEW,
    NOTE_SIZE,
    DirectWireError,
    Note,
    decode_note,
)
from mirrord.wire.source_ports import CONNECT_TRIES, SourcePorts, another_port

if TYPE_CHECKING:
    from mirrord.explain import Explainer

log = logging.getLogger("mirrord.features.incoming.delivery")

CHUNK = 256 * 1024
# Our deliveries' source ports (each names its delivery in `_delivered`).
source_ports = SourcePorts()
# Set (to anything): stolen connections are relayed by the local agent even where the
# program's accept could take them whole (tests of that path, diagnosis).
NO_HANDOFF_ENV = "MIRRORD_NO_HANDOFF"
ANY4, ANY6 = b"\0" * 4, b"\0" * 16


@dataclass(frozen=True)
class IncomingSettings:
    """feature.network.incoming as the proxy applies it (built by mirrord/incoming_config)."""

    mode: Mode = "mirror"
    http_filter: HttpFilterSpec | None = None
    port_mapping: dict[int, int] = field(default_factory=dict)  # local P -> remote port
    ignore_localhost: bool = False
    on_concurrent_steal: str = "abort"
    nftables: bool | None = None
    # The target's kubelet probes (Kubernetes targets): a steal leaves their requests from
    # the node to the pod, unless steal_probes (`mirrord exec --steal-probes`).
    probes: tuple[ProbeSpec, ...] = ()
    steal_probes: bool = False


def _target(family: int, ip: bytes, port: int) -> tuple[int, tuple[str, int]]:
    """Where to connect to reach the program's listener bound at ip:port."""
    if ip == ANY4:
        return socket.AF_INET, ("127.0.0.1", port)
    if ip == ANY6:
        with contextlib.suppress(OSError), socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
            return socket.AF_INET6, ("::1", port)
        return socket.AF_INET, ("127.0.0.1", port)  # dual-stack listener, no IPv6 loopback
    fam = socket.AF_INET if len(ip) == 4 else socket.AF_INET6
    return fam, (socket.inet_ntop(fam, ip), port)


_UCRED = struct.Struct("iII")  # pid, uid, gid
# A note's credentials and at most one fd (a handed-over connection); room for a few
# more, so a sender that attaches extra fds cannot make us lose them unclosed.
_ANCILLARY_SPACE = socket.CMSG_SPACE(_UCRED.size) + socket.CMSG_SPACE(4 * 8)
# Handed-over connections kept for accepts that have not come yet; past this, the oldest
# is reset (the program stopped accepting: its listener's queue holds no more anyway).
MAX_HANDED = 4096
LOST = -1  # a handoff whose fd did not reach us (take_handed gives it as the fd)
# The loop reads the notes no accept took within this long (_notes_waiting): at 5 ms,
# the socket's queue (~250 notes with fds) holds 50,000 new connections a second.
NOTES_READ_DELAY_S = 0.005


@dataclass(frozen=True)
class Handoff:
    """A connection the agent handed over, waiting for the accept its doorbell wakes."""

    number: int  # its place among all handoffs, oldest first
    fd: int  # ours, or LOST
    peer: tuple[str, int]
    original: tuple[str, int]


def _fds(ancillary: list[tuple[int, int, bytes]]) -> list[int]:
    """The fds a datagram carried (SCM_RIGHTS): ours now, to use or close."""
    fds = array.array("i")
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
    return list(fds)


def _sender_uid(ancillary: list[tuple[int, int, bytes]]) -> int | None:
    """The uid that sent a note (SO_PASSCRED); None if the kernel gave none."""
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
            _, uid, _ = _UCRED.unpack(data[: _UCRED.size])
            return int(uid)
    return None


def _text(addr: tuple[bytes, int]) -> tuple[str, int]:
    ip, port = addr
    return socket.inet_ntop(socket.AF_INET if len(ip) == 4 else socket.AF_INET6, ip), port


class IncomingProxy:
    def __init__(
        self,
        client: IncomingClient,
        settings: IncomingSettings,
        direct: bool = False,
        explain: Explainer | None = None,
    ) -> None:
        self.client = client
        self.settings = settings
        # The agent shares our loopback: it is asked to deliver to the program's listener
        # itself and tells each delivery on a datagram socket of ours (the notes, read on
        # the loop and, for an accept that comes first, on the tracer thread: one lock).
        self.direct = direct
        self._notes: socket.socket | None = None
        self._notes_name = ""
        self._notes_timer: asyncio.TimerHandle | None = None
        self._notes_lock = threading.Lock()
        # proxy-side local port -> (remote peer, original destination); read by the
        # supervisor's handlers on the tracer thread (single dict operations are atomic).
        self._delivered: dict[int, tuple[tuple[str, int], tuple[str, int]]] = {}
        # Connections handed over whole (NOTE_HANDOFF), by their doorbell's port, until
        # the program's accept takes them (`take_handed`). A doorbell is reset at once,
        # so its port may serve the next one before the first is accepted: per port, in
        # the order of the notes, which is the order of the doorbells in the accept queue.
        self._handed: dict[int, collections.deque[Handoff]] = {}
        self._handed_count = 0
        self._handoffs = 0  # numbers them, oldest first
        self._subs: list[Subscription] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._unavailable_said = False
        # Per remote port: connections the agent delivered, and those whose delivery to
        # the program failed (refused, reset...); said at the end when some were lost.
        self._delivered_count: dict[int, int] = {}
        self._failed: dict[int, tuple[int, str]] = {}
        self._forged = 0  # notes from other users, ignored
        # Deliveries the program has not answered yet (their remote port, by connection).
        self._unanswered: dict[IncomingConnection, int] = {}
        # --explain (None: off): subscriptions and delivered connections.
        self.explain = explain
        self._rules: dict[int, tuple[str, str | None, str]] = {}  # remote -> (mode, filter, rule)

    def _say_probes(self, port: int, probes: list[ProbeSpec], filtered: bool) -> None:
        described = "; ".join(p.describe() for p in probes)
        if not self.settings.steal_probes:
            whole = any(p.kind == "tcp" for p in probes)
            what = "connections" if whole else "requests"
            _say(f"left to the pod: its {described}: the node's probe {what} are not stolen")
        elif not filtered:
            # Upstream's warning: the pod's probes fail while the program does not answer
            # them as the pod would, and kubelet restarts it or takes it out of service.
            _say(
                f"warning: --steal-probes: the steal of port {port} takes the pod's "
                f"{described} too; if the program does not answer them as the pod does, "
                "kubelet may restart the pod or take it out of its Services"
            )

    def _explain_connection(self, remote_port: int) -> None:
        assert self.explain is not None
        mode, text, rule = self._rules.get(remote_port, (self.settings.mode, None, ""))
        event = "request-matched" if text is not None else "connection"
        self.explain.record(
            "incoming", port=remote_port, event=event, decision=mode, rule=rule, filter=text
        )

    def delivered(self, proxy_port: int) -> tuple[tuple[str, int], tuple[str, int]] | None:
        if self._notes is not None:
            # The agent's note for this connection was sent before it connected: read
            # whatever is queued, so it is known even when the loop has not run yet.
            self._read_notes()
        return self._delivered.get(proxy_port)

    def _open_notes(self) -> str:
        """The datagram socket the agent's notes come to (made once); its name. Abstract
        (a leading NUL): nothing is left in the file system even if mirrord is killed, and
        the agent shares our network namespace (loopback_id), where such names live.
        Anyone there could send to it, so each note's sender must be root (the agent) or
        us (SO_PASSCRED)."""
        if self._notes is None:
            name = f"\0mirrord-notes-{secrets.token_hex(12)}"
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
                sock.bind(name)
                sock.setblocking(False)
            except OSError:
                sock.close()
                raise
            self._notes = sock
            self._notes_name = name
            asyncio.get_running_loop().add_reader(sock.fileno(), self._notes_waiting)
        return self._notes_name

    def _notes_waiting(self) -> None:
        """Notes came: read them a moment later. The program's accept reads its own note
        first (take_handed) on the tracer thread; this loop reading each one as it came
        woke us once per connection and made the two threads take turns at the GIL on
        every accept. Still read here: notes no accept asks for yet (a program that is
        slow to accept, failures, counts) must not fill the socket's queue."""
        loop = asyncio.get_running_loop()
        if self._notes is not None:
            loop.remove_reader(self._notes.fileno())
        self._notes_timer = loop.call_later(NOTES_READ_DELAY_S, self._read_waiting)

    def _read_waiting(self) -> None:
        self._notes_timer = None
        if self._notes is not None:
            self._read_notes()
            asyncio.get_running_loop().add_reader(self._notes.fileno(), self._notes_waiting)

    def take_handed(
        self, doorbell_port: int
    ) -> tuple[int, tuple[str, int], tuple[str, int]] | None:
        """The connection handed over with the doorbell from this port (our fd, to
        install in the program or close; LOST when it never reached us), its real peer
        and original destination."""
        if self._notes is None:
            return None
        if doorbell_port not in self._handed:
            self._read_notes(until=doorbell_port)  # sent before the doorbell rang
        with self._notes_lock:
            waiting = self._handed.get(doorbell_port)
            if not waiting:
                return None  # a delivery to relay, or a connection of someone else's
            handoff = waiting.popleft()
            if not waiting:
                del self._handed[doorbell_port]
            self._handed_count -= 1
        return handoff.fd, handoff.peer, handoff.original

    def _read_notes(self, until: int | None = None) -> None:
        """Read the queued notes; `until`: only up to the handoff for that doorbell port
        (an accept waits on it; the rest can wait for the loop)."""
        with self._notes_lock:
            sock = self._notes
            while sock is not None:
                try:
                    data, ancillary, _, _ = sock.recvmsg(
                        NOTE_SIZE + 1, _ANCILLARY_SPACE, socket.MSG_CMSG_CLOEXEC
                    )
                except (BlockingIOError, InterruptedError):
                    return
                except OSError as e:
                    log.debug("incoming notes: %s", e)
                    return
                fds = _fds(ancillary)
                uid = _sender_uid(ancillary)
                if uid not in (0, os.getuid()):  # only the agent (root) or we send notes
                    for fd in fds:
                        os.close(fd)
                    self._forged += 1
                    if self._forged == 1:  # once: a flood must not flood the terminal
                        log.warning(
                            "incoming notes: ignoring datagrams from another user (uid %s);"
                            " their count is reported at the end",
                            uid,
                        )
                    continue
                try:
                    note = decode_note(data)
                except DirectWireError as e:
                    log.debug("incoming notes: %s", e)
                    note = None
                if note is None or note.kind != NOTE_HANDOFF or len(fds) != 1:
                    for fd in fds:
                        os.close(fd)
                    if note is None:
                        continue
                    if note.kind == NOTE_HANDOFF:
                        # Its fd did not come (our fd table was full: MSG_CTRUNC): the
                        # connection is gone, and its doorbell must not reach the program.
                        self._hold(note, LOST)
                else:
                    self._hold(note, fds[0])
                if note.kind in (NOTE_NEW, NOTE_HANDOFF):
                    if note.kind == NOTE_NEW:
                        self._delivered[note.port] = (_text(note.peer), _text(note.original))
                    if self.explain is not None:
                        self._explain_connection(note.sub_port)
                    count = self._delivered_count.get(note.sub_port, 0)
                    self._delivered_count[note.sub_port] = count + 1
                elif note.kind == NOTE_GONE:
                    self._delivered.pop(note.port, None)
                else:
                    self._delivered.pop(note.port, None)
                    waiting = self._handed.get(note.port)
                    if waiting:  # the newest's doorbell did not ring: nobody accepts it
                        reset_fd(waiting.pop().fd)
                        self._handed_count -= 1
                        if not waiting:
                            del self._handed[note.port]
                    failed, _ = self._failed.get(note.sub_port, (0, ""))
                    self._failed[note.sub_port] = (failed + 1, os.strerror(note.errno))
                if note.kind == NOTE_HANDOFF and note.port == until:
                    return

    def _hold(self, note: Note, fd: int) -> None:
        """Keep a handed-over connection (or LOST) for the accept its doorbell wakes
        (notes lock); past MAX_HANDED waiting, the oldest is reset."""
        self._handoffs += 1
        handoff = Handoff(self._handoffs, fd, _text(note.peer), _text(note.original))
        self._handed.setdefault(note.port, collections.deque()).append(handoff)
        self._handed_count += 1
        while self._handed_count > MAX_HANDED:
            port = min(self._handed, key=lambda p: self._handed[p][0].number)
            waiting = self._handed[port]
            reset_fd(waiting.popleft().fd)
            self._handed_count -= 1
            if not waiting:
                del self._handed[port]

    async def subscribe(
        self, family: int, ip: bytes, local_port: int, port: int, handoff: bool = False
    ) -> None:
        remote = self.settings.port_mapping.get(port, port)
        mode = self.settings.mode
        flt = self.settings.http_filter if mode == "steal" else None
        direct = None
        if self.direct:
            _, (host, target_port) = _target(family, ip, local_port)
            handoff = handoff and not os.environ.get(NO_HANDOFF_ENV)
            if handoff:
                raise_fd_limit()  # handed connections wait here for the program's accept
            direct = IncomingDirect(
                host=host, port=target_port, notify_path=self._open_notes(), handoff=handoff
            )
        probes = [p for p in self.settings.probes if p.port == remote]
        if mode == "steal" and probes:
            self._say_probes(remote, probes, flt is not None)
        try:
            sub = await self.client.subscribe(
                remote,
                mode,
                flt,
                include_node_traffic=True,
                probes=probes if mode == "steal" and not self.settings.steal_probes else (),
                ignore_localhost=self.settings.ignore_localhost,
                nftables=self.settings.nftables,
                direct=direct,
            )
        except PortTaken as e:
            # on_concurrent_steal is about stealing: a mirror that cannot have the port
            # (another session holds it) degrades to a local listener, as upstream's
            # mirror never makes the program's listen fail.
            if mode == "steal" and self.settings.on_concurrent_steal == "abort":
                _say(f"port {remote} of the target is already taken ({e}); listen fails")
                raise OSError(errno.EADDRINUSE, str(e)) from None
            _say(f"port {remote} of the target is already taken ({e}); listening locally only")
            return
        except IncomingUnavailable as e:
            if not self._unavailable_said:
                self._unavailable_said = True
                _say(f"incoming traffic is not available ({e}); listening locally only")
            return
        self._subs.append(sub)
        if self.explain is not None:
            rule = f"feature.network.incoming.mode {mode}"
            if remote != port:
                rule += f", port_mapping {port}:{remote}"
            text = (
                _filter_text(flt)
                if flt is not None and (not flt.ports or remote in flt.ports)
                else None
            )
            self._rules[remote] = (mode, text, rule)
            self.explain.record(
                "incoming", port=port, remote_port=remote, event="subscribed", decision=mode,
                rule=rule, filter=text,
            )  # fmt: skip
        if local_port != port or remote != port:
            _say(f"{mode} of the target's port {remote} → local port {local_port}")
        self._spawn(self._serve(sub, _target(family, ip, local_port)))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, sub: Subscription, target: tuple[int, tuple[str, int]]) -> None:
        try:
            async for conn in sub:
                self._delivered_count[sub.port] = self._delivered_count.get(sub.port, 0) + 1
                if self.explain is not None:
                    self._explain_connection(sub.port)
                self._unanswered[conn] = sub.port
                self._spawn(self._deliver(conn, target, sub.port))
        except AgentLost as e:
            log.debug("%s", e)  # the run reports the lost agent and stops the program
        except AgentError as e:
            log.error("%s", e)

    async def _deliver(
        self, conn: IncomingConnection, target: tuple[int, tuple[str, int]], remote_port: int
    ) -> None:
        family, address = target
        port = 0
        sock: socket.socket | None = None
        writer: asyncio.StreamWriter | None = None
        try:
            sock, port = await self._connect(conn, family, address)
            # Streams, not sock_recv: the transport keeps the socket registered with the
            # loop instead of adding and removing it (two epoll_ctl calls) per read.
            reader, writer = await asyncio.open_connection(sock=sock, limit=CHUNK)
            await asyncio.gather(deliver_down(conn, writer), self._up(conn, reader))
        except OSError as e:
            log.debug("delivery of %s to %s failed: %s", conn.remote, address, e)
            failed, _ = self._failed.get(remote_port, (0, ""))
            self._failed[remote_port] = (failed + 1, str(e))
        finally:
            self._unanswered.pop(conn, None)
            if port:
                self._delivered.pop(port, None)
                source_ports.release(port)
            if writer is not None:
                writer.close()
            elif sock is not None:
                sock.close()
            with contextlib.suppress(Exception):
                await conn.close()

    async def _connect(
        self, conn: IncomingConnection, family: int, address: tuple[str, int]
    ) -> tuple[socket.socket, int]:
        """A socket connected to the program's listener, from a port that names the
        delivery (wire/source_ports.py); OSError when the program cannot be reached."""
        loop = asyncio.get_running_loop()
        for attempt in range(CONNECT_TRIES):
            # Bound (and named) before connecting: the program may accept the connection
            # before this task runs again after the handshake.
            sock, port = source_ports.bound(family, address[0])
            self._delivered[port] = (conn.remote, conn.original_destination)
            try:
                await loop.sock_connect(sock, address)
            except BaseException as e:
                sock.close()
                self._delivered.pop(port, None)
                source_ports.release(port)
                if not isinstance(e, OSError) or not another_port(e, attempt):
                    raise
                continue
            return sock, port
        raise AssertionError("not reached: the last attempt returns or raises")

    async def _up(self, conn: IncomingConnection, reader: asyncio.StreamReader) -> None:
        """The program's answers (`deliver_up`); its first answer ends the wait for one."""
        await deliver_up(conn, reader, lambda: self._unanswered.pop(conn, None))

    async def close(self) -> None:
        """End every subscription (the agent removes their rules) and delivery."""
        if self._notes is not None:
            self._read_notes()  # the last failures, for the report
        self._say_losses()
        if self._forged:
            log.warning("incoming notes: %d datagrams from other users were ignored", self._forged)
        for sub in self._subs:
            with contextlib.suppress(Exception):
                await sub.close()
        tasks = list(self._tasks)
        for t in tasks:
            t.cancel()
        if tasks:
            with contextlib.suppress(Exception):
                await asyncio.wait(tasks, timeout=2.0)
        if self._notes_timer is not None:
            self._notes_timer.cancel()
            self._notes_timer = None
        if self._notes is not None:
            asyncio.get_running_loop().remove_reader(self._notes.fileno())
            with self._notes_lock:
                self._notes.close()
                self._notes = None
                for waiting in self._handed.values():  # never accepted: refused
                    for handoff in waiting:
                        reset_fd(handoff.fd)
                self._handed.clear()
                self._handed_count = 0

    def _say_losses(self) -> None:
        """Connections the program may not have got: their delivery failed (the program
        refused or reset it), or it had not answered them yet at the end (mirror: copies
        the program was behind on, e.g. still in its accept queue; they are cut off).
        Mirror only: a stolen connection's peer sees for itself what became of it."""
        if self.settings.mode != "mirror":
            return
        unfinished: dict[int, int] = {}
        for port in self._unanswered.values():
            unfinished[port] = unfinished.get(port, 0) + 1
        for port in sorted(self._failed.keys() | unfinished.keys()):
            failed, last = self._failed.get(port, (0, ""))
            parts = [f"{failed} failed (last: {last})"] if failed else []
            if n := unfinished.get(port, 0):
                parts.append(f"{n} not answered by the program yet at the end")
            total = self._delivered_count.get(port, 0)
            _say(f"port {port}: of {total} connections delivered, " + ", ".join(parts))


def _filter_text(flt: HttpFilterSpec) -> str:
    for kind in HTTP_FILTER_KINDS:
        value = getattr(flt, kind)
        if value is not None:
            return f"http_filter.{kind} {value!r}"
    return "http_filter"


async def deliver_down(conn: IncomingConnection, writer: asyncio.StreamWriter) -> None:
    """The peer's bytes (stolen, or mirrored copies) to the local listener, as they come
    off the agent's stream (recv: no task in between), then its EOF."""
    while data := await conn.recv():
        writer.write(data)
        await writer.drain()
    if writer.can_write_eof():
        with contextlib.suppress(OSError):
            writer.write_eof()


async def deliver_up(
    conn: IncomingConnection,
    reader: asyncio.StreamReader,
    on_first_read: Callable[[], object] | None = None,
) -> None:
    """The local listener's answers: to the peer when stolen; read and dropped when
    mirrored (the target's own server answers; the agent would drop them anyway, and not
    sending saves the stream)."""
    steal = conn.mode == "steal"
    data = await reader.read(CHUNK)
    if on_first_read is not None:
        on_first_read()
    while data:
        if steal:
            await conn.write(data)
        data = await reader.read(CHUNK)
    if steal:
        with contextlib.suppress(Exception):
            await conn.write_eof()
