"""One subscribed port: the agent's listener in the pod's netns, the redirect rules that
feed it, and what each accepted connection becomes (stolen, mirrored, filtered)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import socket
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mirrord.agent.incoming import hooked, relay
from mirrord.agent.incoming.delivery import Delivery, DeliveryTable
from mirrord.agent.incoming.direct import DirectTarget
from mirrord.agent.incoming.http1 import FilteredConnection
from mirrord.agent.incoming.http_filter import LOCAL, HttpFilter, OneFilter, RequestFilter
from mirrord.agent.incoming.probes import NO_PROBES, NodeRequests, ProbeSet
from mirrord.agent.incoming.rules import PortRules
from mirrord.agent.incoming.sniff import Sniffer
from mirrord.agent.incoming.tcpflow import Address, Event

if TYPE_CHECKING:
    from mirrord.agent.incoming.share import PortShare
from mirrord.agent.incoming.sockets import (
    make_marked_socket,
    make_marked_sockets,
    original_destination,
    relayed,
)
from mirrord.agent.namespaces import NamespaceWorker

log = logging.getLogger(__name__)

# Marked sockets kept ready per subscription (mirror, filtered); refilled in one batch
# once half are used.
SPARE_SOCKETS = 8
# Idle Connection streams one subscription keeps at most: the client asks for a few; more
# would only hold agent resources for connections that may never come.
MAX_IDLE_STREAMS = 32
# A mirrored copy whose client is this far behind is dropped (the pod is never slowed).
MAX_COPY_BEHIND = 64 << 20
# Connections handed over per wake-up of the listener before other work gets a turn.
HANDOFF_BATCH = 64
ACCEPT_RETRY_S = 1.0  # after an accept that failed for want of fds or memory


@dataclass(frozen=True)
class Announcement:
    """A connection for the client: sent as IncomingNewConnection."""

    delivery: Delivery
    remote: tuple[str, int]
    original: tuple[str, int]
    http_filtered: bool


class Subscription:
    def __init__(
        self,
        worker: NamespaceWorker,
        rules: PortRules,
        listener: socket.socket | None,
        http_filter: HttpFilter | None,
        deliveries: DeliveryTable,
        announce: Callable[[Announcement], None],
        direct: DirectTarget | None = None,
        probes: ProbeSet = NO_PROBES,
        node: frozenset[str] = frozenset(),
        session_id: str = "",
        share: PortShare | None = None,
        sniffer: socket.socket | None = None,
    ) -> None:
        """listener None: a member of `share`, which accepts for it (share.py), or a
        mirror that reads copies of the packets from `sniffer` (sniff.py)."""
        self.worker = worker
        self.session_id = session_id
        self.share = share
        self.rules = rules
        self.listener = listener
        self.filter = http_filter if http_filter and http_filter.applies_to(rules.port) else None
        self.deliveries = deliveries
        self.announce = announce
        # Set: connections go straight to the program's listener (agent/incoming/direct.py).
        self.direct = direct
        # A steal's HTTP/gRPC probes: connections from these (the node's) addresses are
        # read request by request, and the probes' requests go to the pod (probes.py).
        self.node_filter: RequestFilter | None = None
        self.node = node
        if rules.mode == "steal" and probes.requests and node:
            self.node_filter = NodeRequests(probes, self.filter)
        # Names the subscription in IncomingConnectionIdle: a port alone could name a later
        # subscription of the same port.
        self.id = secrets.token_hex(12)
        # Idle Connection streams of the client, oldest first: each waits on its future for
        # the Announcement of the connection it will carry.
        self._idle: deque[asyncio.Future[Announcement]] = deque()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._mine: set[Delivery] = set()
        # Marked sockets made ahead of time on the namespace worker: a connection to the
        # pod's server (mirror, filtered pass-through) then costs no hop to that thread,
        # which may be busy with the session's other jobs.
        self._spares: list[socket.socket] = []
        self._refill: asyncio.Task[None] | None = None
        self._handing = False  # accepting for direct.hand_off on the listener's fd
        self._sniffer = (
            Sniffer(sniffer, self._sniffed, skip_loopback=not rules.include_localhost)
            if sniffer is not None
            else None
        )
        # Sniffed connections being copied (by peer and original destination).
        self._copies: dict[tuple[Address, Address], _Copy] = {}
        self._closed = False
        # Said when the subscription ends: mirror may drop copies, but not silently.
        self.connections = 0
        self.copies_dropped = 0

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def sniffing(self) -> bool:
        """A mirror that reads copies of the packets: no listener, no rules."""
        return self._sniffer is not None

    async def start(self) -> None:
        reads_requests = self.filter is not None or self.node_filter is not None
        if self._sniffer is not None:
            self._sniffer.start()
            return
        if self.listener is None:  # a share's member: it accepts
            pass
        elif self.direct is not None and self.rules.mode == "steal" and not reads_requests:
            loop = asyncio.get_running_loop()
            if self.direct.handoff:
                # Whole connections handed to the client (direct.py hand_off): no relay.
                self._handing = True
                loop.add_reader(self.listener.fileno(), self._hand_off_ready)
            else:
                # Whole connections to a local program: transports joined (direct.py steal).
                server = await loop.create_server(lambda: _StolenPeer(self), sock=self.listener)
                self._server = server
        else:
            self._server = await hooked.start_server(self.accepted, sock=self.listener)
        if self.rules.mode == "mirror" or reads_requests:
            self._top_up()

    def _top_up(self) -> None:
        if self._refill is None or self._refill.done():
            self._refill = asyncio.ensure_future(self._make_spares())

    async def _make_spares(self) -> None:
        # All at once: one hop to the worker thread per batch, not per connection.
        missing = SPARE_SOCKETS - len(self._spares)
        try:
            socks = await self.worker.run(make_marked_sockets, missing)
        except Exception as e:  # the worker is gone: connections make their own
            log.debug("port %d: no spare sockets: %s", self.rules.port, e)
            return
        if self._closed:
            for sock in socks:
                sock.close()
            return
        self._spares.extend(socks)

    async def _marked_socket(self) -> socket.socket:
        if self._spares:
            sock = self._spares.pop()
            if len(self._spares) <= SPARE_SOCKETS // 2:
                self._top_up()
            return sock
        self._top_up()
        return await self.worker.run(make_marked_socket)

    def wait_assigned(self) -> asyncio.Future[Announcement] | None:
        """An idle stream's turn: resolves with the connection it carries, is cancelled when
        the subscription ends. None: too many idle streams (or closed already)."""
        while self._idle and self._idle[0].done():
            self._idle.popleft()
        if self._closed or len(self._idle) >= MAX_IDLE_STREAMS:
            return None
        waiter: asyncio.Future[Announcement] = asyncio.get_running_loop().create_future()
        self._idle.append(waiter)
        return waiter

    def _hand_over(self, announcement: Announcement) -> None:
        """To an idle stream if the client keeps one (no announce hop, no stream to open),
        else announced on the Subscribe stream."""
        while self._idle:
            waiter = self._idle.popleft()
            if not waiter.done():  # a cancelled one is a stream that went away
                waiter.set_result(announcement)
                return
        self.announce(announcement)

    async def close(self) -> None:
        if not self._closed:
            level = logging.WARNING if self.copies_dropped else logging.INFO
            dropped = f", {self.copies_dropped} copies dropped (client too slow)"
            log.log(
                level,
                "port %d (%s): %d connections%s",
                self.rules.port,
                self.rules.mode,
                self.connections,
                dropped if self.rules.mode == "mirror" else "",
            )
        self._closed = True
        for waiter in self._idle:
            waiter.cancel()
        self._idle.clear()
        if self._refill is not None:
            # Not cancelled at once: a socket being made on the worker would be lost
            # unclosed; the refill sees _closed and closes it.
            await asyncio.wait({self._refill}, timeout=1.0)
            self._refill.cancel()
        for spare in self._spares:
            spare.close()
        self._spares.clear()
        if self._sniffer is not None:
            self._sniffer.close()
            for copy in self._copies.values():
                copy.delivery.close()
            self._copies.clear()
        if self._handing and self.listener is not None:
            asyncio.get_running_loop().remove_reader(self.listener.fileno())
            self._handing = False
        if self._server is not None:
            self._server.close()
            self._server = None
        elif self.listener is not None:
            self.listener.close()
        for delivery in list(self._mine):
            delivery.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.direct is not None:
            self.direct.close()
        if self.share is not None:
            await self.share.leave(self)

    async def _open_pod(self, address: tuple[str, int]) -> relay.Streams:
        if ":" in address[0]:  # an IPv6 pod address: the spares are IPv4
            sock = await self.worker.run(make_marked_socket, socket.AF_INET6)
        else:
            sock = await self._marked_socket()
        try:
            await asyncio.get_running_loop().sock_connect(sock, address)
        except BaseException:
            sock.close()
            raise
        return await hooked.open_connection(sock)  # a lane may read it (http1_lane.py)

    def _new_delivery(
        self,
        remote: tuple[str, int],
        original: tuple[str, int],
        *,
        now: bool = True,
        filtered: bool = False,
    ) -> tuple[Delivery, Callable[[], None]]:
        """A delivery and what hands it to the client (done here already when `now`)."""
        delivery = Delivery()
        self.deliveries.add(delivery)
        self._mine.add(delivery)
        announcement = Announcement(delivery, remote, original, filtered)

        def hand_over() -> None:
            if self._closed:
                return
            if self.direct is not None:
                self._spawn(self._deliver_direct(self.direct, announcement))
            else:
                self._hand_over(announcement)

        if now:
            hand_over()
        return delivery, hand_over

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _deliver_direct(self, direct: DirectTarget, a: Announcement) -> None:
        try:
            await direct.deliver(
                a.delivery, self.rules.port, a.remote, a.original, self.rules.mode == "steal"
            )
        except OSError as e:
            log.info("port %d: direct delivery failed: %s", self.rules.port, e)
        finally:
            self.deliveries.discard(a.delivery)

    def steal_direct(self, peer: asyncio.Transport, first: _StolenPeer) -> None:
        """A redirected connection (reading paused) for the local program, whole."""
        assert self.direct is not None
        self.connections += 1
        sock = peer.get_extra_info("socket")
        try:
            relayed(sock)
            original = original_destination(sock)
            host, port = peer.get_extra_info("peername")[:2]
        except (OSError, TypeError) as e:  # gone already
            log.info("port %d: connection ended: %s", self.rules.port, e)
            peer.abort()
            return
        remote = (unmapped(str(host)), int(port))
        log.debug("port %d: connection from %s to %s", self.rules.port, remote, original)
        self._spawn(self._steal_direct(self.direct, peer, first, remote, original))

    def _sniffed(self, event: Event) -> None:
        """A sniffed connection's start, bytes or end (tcpflow.py): its copy's delivery."""
        assert self._sniffer is not None
        key = event.key
        if event.kind == "new":
            remote, original = key
            if self._closed or remote[0] in self.rules.skip_sources:
                self._sniffer.flows.forget(key)
                return
            self.connections += 1
            delivery, hand_over = self._new_delivery(remote, original, now=False)
            delivery.sink = _dropped  # the program's answers: the pod's server answers
            self._copies[key] = _Copy(delivery, hand_over)
            return
        copy = self._copies.get(key)
        if copy is None:
            return
        if event.kind in ("abort", "lost"):
            if event.kind == "lost":
                self.copies_dropped += 1
                log.debug("mirrored connection %s: packets lost, copy dropped", copy.delivery.id)
            self._end_copy(key, copy)
            copy.delivery.close()
            return
        if copy.hand_over is not None:  # at its first byte or its end, not its SYN
            copy.hand_over()
            copy.hand_over = None
        if event.kind == "end":  # every byte came
            copy.ended = True
            if copy.flusher is None:
                self._end_copy(key, copy)
            return
        if copy.flusher is None and not copy.behind:
            try:
                copy.delivery.to_client.put_nowait(event.data)
                return
            except asyncio.QueueFull:
                pass
        # Segments come many more than a relay's reads: while the client catches up
        # they are joined, so its queue holds a few large chunks.
        copy.behind += event.data
        if len(copy.behind) > MAX_COPY_BEHIND:
            log.warning("mirrored connection %s: client too slow, copy dropped", copy.delivery.id)
            self.copies_dropped += 1
            self._sniffer.flows.forget(key)
            self._end_copy(key, copy)
            copy.delivery.close()
        elif copy.flusher is None:
            # One of the subscription's tasks: its end cancels a flusher that still waits.
            copy.flusher = asyncio.get_running_loop().create_task(self._catch_up(key, copy))
            self._tasks.add(copy.flusher)
            copy.flusher.add_done_callback(self._tasks.discard)

    async def _catch_up(self, key: tuple[Address, Address], copy: _Copy) -> None:
        try:
            while copy.behind:
                chunk = bytes(copy.behind)
                copy.behind.clear()
                await copy.delivery.to_client.put(chunk)
        finally:
            copy.flusher = None
        if copy.ended:
            self._end_copy(key, copy)

    def _end_copy(self, key: tuple[Address, Address], copy: _Copy) -> None:
        """The copy is over: whole (ended: its EOF follows what is queued), or not."""
        if self._copies.get(key) is copy:
            del self._copies[key]
        if copy.flusher is not None:
            copy.flusher.cancel()
        self._mine.discard(copy.delivery)
        if copy.ended and not copy.behind:
            with contextlib.suppress(asyncio.QueueFull):
                copy.delivery.to_client.put_nowait(None)
            copy.delivery.closed.set()  # its stream still sends what is queued, then ends

    def _hand_off_ready(self) -> None:
        """The listener has connections: each goes to the client whole (direct.py)."""
        assert self.listener is not None and self.direct is not None
        for _ in range(HANDOFF_BATCH):  # then the loop's other work gets a turn
            try:
                conn, addr = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue  # reset in the queue: the next one
            except OSError as e:  # EMFILE, ENOBUFS...: as asyncio's servers, wait a second
                log.warning("port %d: accept failed: %s; again in 1 s", self.rules.port, e)
                loop = asyncio.get_running_loop()
                loop.remove_reader(self.listener.fileno())
                loop.call_later(ACCEPT_RETRY_S, self._resume_hand_off)
                return
            self.connections += 1
            try:
                original = original_destination(conn)
            except OSError as e:  # gone already
                log.info("port %d: connection ended: %s", self.rules.port, e)
                conn.close()
                continue
            remote = (unmapped(str(addr[0])), int(addr[1]))
            self.direct.hand_off(conn, self.rules.port, remote, original)

    def _resume_hand_off(self) -> None:
        if self._handing and not self._closed and self.listener is not None:
            asyncio.get_running_loop().add_reader(self.listener.fileno(), self._hand_off_ready)

    async def _steal_direct(
        self,
        direct: DirectTarget,
        peer: asyncio.Transport,
        first: _StolenPeer,
        remote: tuple[str, int],
        original: tuple[str, int],
    ) -> None:
        try:
            await direct.steal(peer, first, self.rules.port, remote, original)
        except OSError as e:
            log.info("port %d: direct delivery failed: %s", self.rules.port, e)

    # --- for a share (share.py) --------------------------------------------------------

    def new_delivery(
        self, remote: tuple[str, int], original: tuple[str, int], *, filtered: bool
    ) -> Delivery:
        """A delivery of a shared connection, handed to this member's client now."""
        return self._new_delivery(remote, original, filtered=filtered)[0]

    def forget(self, delivery: Delivery) -> None:
        self._mine.discard(delivery)

    async def open_pod(self, address: tuple[str, int]) -> relay.Streams:
        return await self._open_pod(address)

    async def accepted(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """A redirected connection: from our listener, or one the share gives us alone."""
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.connections += 1
        deliveries: list[Delivery] = []
        try:
            sock = writer.get_extra_info("socket")
            relayed(sock)
            original = original_destination(sock)
            host, port = writer.get_extra_info("peername")[:2]
            remote = (unmapped(str(host)), int(port))
            flt: RequestFilter | None = self.filter
            if self.node_filter is not None and unmapped(remote[0]) in self.node:
                flt = self.node_filter

            def new_delivery(_key: str = LOCAL) -> Delivery:
                delivery = self._new_delivery(remote, original, filtered=flt is not None)[0]
                deliveries.append(delivery)
                return delivery

            async def open_pod() -> relay.Streams:
                return await self._open_pod(original)

            log.debug("port %d: connection from %s to %s", self.rules.port, remote, original)
            if flt is not None:
                await FilteredConnection(
                    (reader, writer), OneFilter(flt), open_pod, new_delivery
                ).run()
            elif self.rules.mode == "steal":
                await relay.steal((reader, writer), new_delivery())
            else:
                pod = await open_pod()
                delivery, hand_over = self._new_delivery(remote, original, now=False)
                deliveries.append(delivery)
                if not await relay.mirror(
                    (reader, writer), delivery, pod, hand_over, self.direct is None
                ):
                    self.copies_dropped += 1
        except (OSError, ConnectionError, EOFError) as e:
            log.info("port %d: connection ended: %s", self.rules.port, e)
        except asyncio.CancelledError:
            pass
        except Exception:
            log.exception("port %d: connection failed", self.rules.port)
        finally:
            for delivery in deliveries:
                with contextlib.suppress(asyncio.QueueFull):
                    delivery.to_client.put_nowait(None)
                # The client's stream still sends what is queued, then ends.
                delivery.closed.set()
                self._mine.discard(delivery)
            writer.close()
            self._tasks.discard(task)


class _Copy:
    """A sniffed connection's copy: its delivery, what hands it to the client (None once
    done), the bytes waiting for room in its queue, and their flusher."""

    __slots__ = ("behind", "delivery", "ended", "flusher", "hand_over")

    def __init__(self, delivery: Delivery, hand_over: Callable[[], None]) -> None:
        self.delivery = delivery
        self.hand_over: Callable[[], None] | None = hand_over
        self.behind = bytearray()
        self.flusher: asyncio.Task[None] | None = None
        self.ended = False


async def _dropped(_data: bytes | None) -> None:
    """What a sniffed copy's client answers goes nowhere (Delivery.sink)."""


def unmapped(ip: str) -> str:
    """10.0.0.1 for ::ffff:10.0.0.1 (a dual-stack listener's view of an IPv4 peer)."""
    return ip[7:] if ip.startswith("::ffff:") and "." in ip else ip


class _StolenPeer(asyncio.Protocol):
    """A stolen connection's first protocol, until the program's side is connected and a
    bridge takes the transport: reading paused, so the peer's bytes wait in the kernel,
    and what came before the pause took effect is kept (`early`, `eof`)."""

    def __init__(self, sub: Subscription) -> None:
        self.sub = sub
        self.early: list[bytes] = []
        self.eof = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        # Not at once: the transport starts reading in a callback queued after this one.
        asyncio.get_running_loop().call_soon(transport.pause_reading)
        self.sub.steal_direct(transport, self)

    def data_received(self, data: bytes) -> None:
        self.early.append(data)

    def eof_received(self) -> bool:
        self.eof = True
        return True
