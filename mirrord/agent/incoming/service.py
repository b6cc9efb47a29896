"""The Incoming gRPC service: Subscribe (rules + listener per port) and Connection (the
bytes of one delivered connection). Per-session state is created at the first Subscribe
and undone by the session's cleanup stack."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NoReturn, TypeAlias

import grpc
import grpc.aio

from mirrord.agent.incoming import iptables
from mirrord.agent.incoming.delivery import Delivery, DeliveryTable
from mirrord.agent.incoming.direct import DirectTarget
from mirrord.agent.incoming.http_filter import HttpFilter, HttpFilterError, build_filter
from mirrord.agent.incoming.mesh import Mesh, detect_mesh
from mirrord.agent.incoming.node import node_addresses
from mirrord.agent.incoming.probes import Probe, ProbeSet, probe_set
from mirrord.agent.incoming.rules import (
    PortRules,
    SessionChains,
    add_port_script,
    create_chains_script,
    remove_port_script,
)
from mirrord.agent.incoming.share import PortShare
from mirrord.agent.incoming.sniff import make_sniffer
from mirrord.agent.incoming.sockets import make_listener
from mirrord.agent.incoming.subscription import Announcement, Subscription
from mirrord.agent.incoming.watchdog import RuleWatchdog
from mirrord.agent.service import abort, session_of
from mirrord.agent.session import AgentSession, SessionRegistry
from mirrord.v1 import incoming_pb2, incoming_pb2_grpc

if TYPE_CHECKING:
    Context: TypeAlias = grpc.aio.ServicerContext[Any, Any]

log = logging.getLogger(__name__)
# Set (to anything) in the agent's environment: mirrors redirect and relay, as they do in
# a meshed pod, instead of reading copies of the packets (tests of that path, diagnosis).
MIRROR_REDIRECT_ENV = "MIRRORD_MIRROR_REDIRECT"

pb = incoming_pb2
MODES = {pb.INCOMING_MODE_STEAL: "steal", pb.INCOMING_MODE_MIRROR: "mirror"}
PREFERENCES = {pb.IPTABLES_BACKEND_LEGACY: "legacy", pb.IPTABLES_BACKEND_NFT: "nft"}
# Event-loop turns an idle stream gives the relay to read the peer's first bytes.
FIRST_BYTES_TURNS = 3
# How long a finished connection's stream waits for the client's eof before it ends
# instead of being reused.
REUSE_WAIT = 2.0


async def _abort_on_iptables(e: BaseException, context: Context) -> None:
    """An iptables failure is the client's FAILED_PRECONDITION (anything else: the caller
    re-raises)."""
    if isinstance(e, iptables.IptablesError):
        await _abort(context, grpc.StatusCode.FAILED_PRECONDITION, str(e))


async def _mangle(tables: iptables.NetnsIptables) -> str:
    """The mangle table's rules (only Istio ambient's detection reads them): empty where
    the table cannot be read, which must not stop a steal."""
    try:
        return await tables.dump("mangle")
    except iptables.IptablesError as e:
        log.debug("no mangle table in the netns of %d: %s", tables.pid, e)
        return ""


async def _abort(context: Context, code: grpc.StatusCode, message: str) -> NoReturn:
    await abort(context, code, message, log_as=log)


@dataclass
class SessionIncoming:
    """What incoming traffic set up for one session."""

    session: AgentSession
    pid: int
    tables: iptables.NetnsIptables
    chains: SessionChains
    lock: asyncio.Lock
    mesh: Mesh | None = None
    deliveries: DeliveryTable = field(default_factory=DeliveryTable)
    subscriptions: dict[int, Subscription] = field(default_factory=dict)
    # The session's chain pair is made with its first redirect (a mirror that reads
    # packets needs none: a mirror-only session leaves the pod's rules untouched).
    chains_made: bool = False
    # The shares its subscriptions joined: the last member out removes a share's rules,
    # which the session's end waits for.
    shares: set[PortShare] = field(default_factory=set)

    async def make_chains(self) -> None:
        """The session's chains and their jumps, once (the caller holds the lock)."""
        if not self.chains_made:
            await self.tables.restore(create_chains_script(self.chains, iptables.this_agent()))
            self.chains_made = True

    async def close(self) -> None:
        for sub in list(self.subscriptions.values()):
            await sub.close()
        self.subscriptions.clear()
        self.deliveries.close_all()
        # A share whose last member left in its Subscribe call: its removal may still run.
        await asyncio.gather(*(share.closing() for share in self.shares), return_exceptions=True)
        if self.chains_made:
            async with self.lock:
                names = set(self.chains.__dict__.values())
                await self.tables.remove_chains(lambda c: c.name in names)
            log.info("session %s: incoming rules removed", self.session.id)


_PROBE_KINDS = {
    incoming_pb2.INCOMING_PROBE_KIND_TCP: "tcp",
    incoming_pb2.INCOMING_PROBE_KIND_HTTP: "http",
    incoming_pb2.INCOMING_PROBE_KIND_GRPC: "grpc",
}


def _probes_of(request: incoming_pb2.IncomingSubscribeRequest) -> ProbeSet:
    """ValueError: a kind this agent does not know, or a bad path."""
    return probe_set(
        Probe(_PROBE_KINDS.get(p.kind, f"kind {p.kind}"), p.path, p.name) for p in request.probes
    )


def _filter_of(request: incoming_pb2.IncomingSubscribeRequest) -> HttpFilter | None:
    if not request.HasField("http_filter"):
        return None
    f = request.http_filter
    kind = f.WhichOneof("kind")

    def conditions(lst: incoming_pb2.HttpMatchList) -> list[tuple[Any, str]]:
        out: list[tuple[Any, str]] = []
        for m in lst.matches:
            which = m.WhichOneof("condition")
            if which is None:
                raise HttpFilterError(f"an {kind} entry has no condition")
            out.append((which, getattr(m, which)))
        return out

    return build_filter(
        header_filter=f.header_filter if kind == "header_filter" else None,
        path_filter=f.path_filter if kind == "path_filter" else None,
        method_filter=f.method_filter if kind == "method_filter" else None,
        all_of=conditions(f.all_of) if kind == "all_of" else None,
        any_of=conditions(f.any_of) if kind == "any_of" else None,
        ports=f.ports,
    )


def _direct_target(request: incoming_pb2.IncomingSubscribeRequest) -> DirectTarget | None:
    """Where to deliver directly (IncomingSubscribeRequest.direct); None when not asked,
    or when the client's datagram socket cannot be reached (then streams carry them)."""
    if not request.HasField("direct") or not request.direct.port:
        return None
    d = request.direct
    try:
        return DirectTarget(d.host, d.port, d.notify_path, d.handoff)
    except (OSError, ValueError) as e:
        log.info("port %d: no direct delivery (%s): streams carry its connections", request.port, e)
        return None


def _address(ip_port: tuple[str, int]) -> incoming_pb2.IncomingAddress:
    return pb.IncomingAddress(ip=ip_port[0], port=ip_port[1])


def _new_connection(a: Announcement, sub: Subscription) -> incoming_pb2.IncomingNewConnection:
    return pb.IncomingNewConnection(
        connection_id=a.delivery.id,
        remote=_address(a.remote),
        original_destination=_address(a.original),
        mode=pb.INCOMING_MODE_STEAL if sub.rules.mode == "steal" else pb.INCOMING_MODE_MIRROR,
        http_filtered=a.http_filtered,
    )


class IncomingService(incoming_pb2_grpc.IncomingServicer):
    def __init__(
        self, registry: SessionRegistry, *, idle_streams: bool = True, reuse_streams: bool = True
    ) -> None:
        self.registry = registry
        # False: behave as an agent that predates idle Connection streams (no
        # subscription_id offered, so clients announce-and-open every connection).
        self.idle_streams = idle_streams
        # False: behave as an agent that predates stream reuse (ignores idle.reuse).
        self.reuse_streams = reuse_streams
        self._state: dict[str, SessionIncoming] = {}
        self._setup_locks: dict[str, asyncio.Lock] = {}
        # One lock per target netns: a port's check-then-add must not interleave with
        # another session's changes to the same netns (inside this agent).
        self._netns_locks: dict[int, asyncio.Lock] = {}
        self._watchdog = RuleWatchdog()
        # Ports several sessions take at once, and ports one session takes alone, by
        # (target netns inode, port).
        self._shares: dict[tuple[int, int], PortShare] = {}
        self._exclusive: dict[tuple[int, int], Subscription] = {}

    def _netns_lock(self, session: AgentSession) -> asyncio.Lock:
        return self._netns_locks.setdefault(session.worker.entered.net_ns_inode, asyncio.Lock())

    async def _session_state(
        self, session: AgentSession, preference: str | None, context: Context
    ) -> SessionIncoming:
        lock = self._setup_locks.setdefault(session.id, asyncio.Lock())
        async with lock:
            state = self._state.get(session.id)
            if state is not None:
                return state
            if session.pid is None:
                await _abort(
                    context,
                    grpc.StatusCode.FAILED_PRECONDITION,
                    "incoming traffic needs a target: this session is targetless",
                )
            pid = session.pid
            async with self._netns_lock(session):
                try:
                    counts = await iptables.available_rule_counts(pid)
                    backend = iptables.choose_backend(counts, preference)
                    # "At start" for this agent = the first subscription of a session: the
                    # first moment it acts on this target's netns.
                    await iptables.remove_leftovers(pid, list(counts))
                    tables = iptables.NetnsIptables(pid, backend, iptables.has_global_ipv6(pid))
                    mesh = detect_mesh(await tables.dump_nat(), await _mangle(tables))
                    chains = SessionChains.for_session(session.id)
                    await self._watchdog.watch(pid, backend)  # before anything can be left
                except iptables.IptablesError as e:
                    await _abort(context, grpc.StatusCode.FAILED_PRECONDITION, str(e))
            state = SessionIncoming(session, pid, tables, chains, self._netns_lock(session), mesh)
            self._state[session.id] = state

            async def cleanup() -> None:
                self._state.pop(session.id, None)
                self._setup_locks.pop(session.id, None)
                await state.close()
                self._watchdog.release()  # not if a removal failed: the watchdog sweeps then

            session.on_close(cleanup, "incoming traffic rules")
            log.info(
                "session %s: incoming traffic via %s%s%s",
                session.id,
                backend,
                " (and IPv6)" if tables.v6 else "",
                f"; mesh: {mesh}" if mesh is not None else "",
            )
            return state

    async def Subscribe(
        self, request: incoming_pb2.IncomingSubscribeRequest, context: Context
    ) -> AsyncIterator[incoming_pb2.IncomingSubscribeEvent]:
        session = await session_of(self.registry, context)
        port = request.port
        mode = MODES.get(request.mode)
        if not 0 < port < 65536:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, f"port {port} is out of range")
        if mode is None:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, "mode must be steal or mirror")
        try:
            http_filter = _filter_of(request)
        except HttpFilterError as e:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, f"bad HTTP filter: {e}")
        try:
            probes = _probes_of(request)
        except ValueError as e:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, f"bad probe: {e}")
        if http_filter is not None and mode != "steal":
            await _abort(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                "HTTP filters are implemented for steal mode only (mirror copies everything)",
            )
        state = await self._session_state(session, PREFERENCES.get(request.backend), context)
        events: asyncio.Queue[Announcement] = asyncio.Queue()
        sub = await self._add_subscription(
            state, request, mode, http_filter, probes, events, context
        )
        ended = asyncio.ensure_future(session.ended.wait())
        try:
            yield pb.IncomingSubscribeEvent(
                subscribed=pb.IncomingSubscribed(
                    port=port,
                    backend=state.tables.backend,
                    subscription_id=sub.id if self.idle_streams and not sub.direct else "",
                    direct=sub.direct is not None,
                    mesh=state.mesh.describe(port) if state.mesh is not None else "",
                )
            )
            while True:
                get = asyncio.ensure_future(events.get())
                done, _ = await asyncio.wait({get, ended}, return_when=asyncio.FIRST_COMPLETED)
                if get not in done:
                    get.cancel()
                    return
                yield pb.IncomingSubscribeEvent(connection=_new_connection(get.result(), sub))
        finally:
            ended.cancel()
            await asyncio.shield(self._remove_subscription(state, sub))

    async def _add_subscription(
        self,
        state: SessionIncoming,
        request: incoming_pb2.IncomingSubscribeRequest,
        mode: str,
        http_filter: HttpFilter | None,
        probes: ProbeSet,
        events: asyncio.Queue[Announcement],
        context: Context,
    ) -> Subscription:
        session, port = state.session, request.port
        key = (session.worker.entered.net_ns_inode, port)
        if http_filter is not None and not http_filter.applies_to(port):
            http_filter = None
        # Filtered steals and mirrors share a port (share.py); an unfiltered steal takes it
        # alone.
        shareable = mode == "mirror" or http_filter is not None
        async with state.lock:
            if port in state.subscriptions:
                await _abort(
                    context,
                    grpc.StatusCode.ALREADY_EXISTS,
                    f"port {port} is already subscribed in this session",
                )
            mesh = state.mesh
            sniffer = None
            if mode == "mirror" and mesh is None and not os.environ.get(MIRROR_REDIRECT_ENV):
                sniffer = await self._sniffer(session, port)
            if sniffer is None:  # a mirror that reads packets takes no traffic from anyone
                await self._refuse_conflicts(state, key, shareable, mode, context)
            node = tuple(node_addresses(state.pid)) + (mesh.probe_sources if mesh else ())
            # Before 1.3 clients left the node's traffic to the pod; now only the probes'.
            keep_node = not request.include_node_traffic or (mode == "steal" and probes.tcp)
            skip = node if keep_node else ()
            hop = mesh if mesh is not None and mesh.plaintext_hop(port) else None
            # What the port's rules would be; the listener's port is known once it is made.
            wanted = PortRules(
                port,
                0,
                mode,
                skip,
                not request.ignore_localhost,
                hop.proxy_uid if hop else None,
                hop.proxy_mark if hop else None,
            )
            share: PortShare | None = None
            listener: socket.socket | None = None
            if sniffer is not None:
                rules = wanted
            elif shareable:
                share = self._shares.get(key) or await self._open_share(state, key, wanted, context)
                # Its own mode, the share's port.
                rules = dataclasses.replace(share.rules, mode=mode)
            else:
                listener = await session.worker.run(make_listener)
                rules = dataclasses.replace(wanted, listener_port=listener.getsockname()[1])
            sub = Subscription(
                session.worker,
                rules,
                listener,
                http_filter,
                state.deliveries,
                events.put_nowait,
                _direct_target(request),
                probes,
                frozenset(node),
                session.id,
                share,
                sniffer,
            )
            try:
                await sub.start()
                if share is None and sniffer is None:
                    await state.make_chains()
                    await state.tables.restore(add_port_script(rules, state.chains))
            except BaseException as e:
                await sub.close()
                await _abort_on_iptables(e, context)
                raise
            if share is not None:
                share.join(sub)
                state.shares.add(share)
            elif sniffer is None:
                self._exclusive[key] = sub
            state.subscriptions[port] = sub
        log.info(
            "session %s: %s port %d -> agent listener %d (%s; node sources kept: %s; probes: %s)",
            session.id,
            mode,
            port,
            rules.listener_port,
            f"shared, {len(share.members)} members" if share is not None else "alone",
            ", ".join(skip) or "none",
            probes.describe() or "none",
        )
        return sub

    async def _sniffer(self, session: AgentSession, port: int) -> socket.socket | None:
        """A mirror's packet socket in the target's netns (sniff.py); None where it cannot
        be had (no CAP_NET_RAW): then the mirror redirects and relays, as with a mesh."""
        try:
            return await session.worker.run(make_sniffer, port)
        except OSError as e:
            log.info("port %d: no packet socket (%s): the mirror redirects instead", port, e)
            return None

    async def _open_share(
        self, state: SessionIncoming, key: tuple[int, int], wanted: PortRules, context: Context
    ) -> PortShare:
        """A share of the port, its listener and its redirect (chains owned by the agent)."""
        listener = await state.session.worker.run(make_listener)
        rules = dataclasses.replace(wanted, listener_port=listener.getsockname()[1])
        share = PortShare(key, listener, rules, self._share_remover(state.tables))
        try:
            await share.start()
            await state.tables.restore(
                create_chains_script(share.chains, iptables.this_agent())
                + add_port_script(rules, share.chains)
            )
        except BaseException as e:
            await share.close()
            await _abort_on_iptables(e, context)
            raise
        self._shares[key] = share
        return share

    async def _refuse_conflicts(
        self,
        state: SessionIncoming,
        key: tuple[int, int],
        shareable: bool,
        mode: str,
        context: Context,
    ) -> None:
        """ALREADY_EXISTS, naming the holder: an unfiltered steal of this port by another
        session; filtered steals or mirrors when this is an unfiltered steal; another
        agent's (or process's) claim."""
        port = key[1]
        alone = self._exclusive.get(key)
        if alone is not None and not alone.closed:
            await _abort(
                context,
                grpc.StatusCode.ALREADY_EXISTS,
                f"port {port} of the target is already taken: session {alone.session_id[:12]} "
                "steals it without an HTTP filter; sessions share a port only with HTTP "
                "filters (steal) or as mirrors",
            )
        share = self._shares.get(key)
        if share is not None and share.members and not shareable:
            await _abort(
                context,
                grpc.StatusCode.ALREADY_EXISTS,
                f"port {port} of the target is already taken: {share.describe()}; an "
                f"unfiltered {mode} would take their traffic: add an HTTP filter to share it",
            )
        ours = {share.chains.inbound, share.chains.outbound} if share is not None else set()
        for chain in await state.tables.chains():
            if chain.name in ours or chain.name in state.chains.__dict__.values():
                continue
            if not iptables.owner_alive(chain.owner) or chain.owner == iptables.this_agent():
                continue  # dead leftovers; or this agent's, known above
            for other_mode, other_port in chain.claims:
                if other_port == port:
                    await _abort(
                        context,
                        grpc.StatusCode.ALREADY_EXISTS,
                        f"port {port} of the target is already taken: another mirrord agent "
                        f"{other_mode}s it ({chain.name}); sessions share a port only "
                        "through one agent",
                    )

    def _share_remover(
        self, tables: iptables.NetnsIptables
    ) -> Callable[[PortShare], Awaitable[None]]:
        async def remove(share: PortShare) -> None:
            if self._shares.get(share.key) is share:
                del self._shares[share.key]
            names = {share.chains.inbound, share.chains.outbound}
            await tables.remove_chains(lambda c: c.name in names)

        return remove

    async def _remove_subscription(self, state: SessionIncoming, sub: Subscription) -> None:
        if state.subscriptions.get(sub.rules.port) is not sub:
            return  # the session's cleanup got there first
        del state.subscriptions[sub.rules.port]
        if sub.share is None and not sub.sniffing:
            key = (state.session.worker.entered.net_ns_inode, sub.rules.port)
            if self._exclusive.get(key) is sub:
                del self._exclusive[key]
            async with state.lock:
                with contextlib.suppress(iptables.IptablesError):
                    await state.tables.restore(remove_port_script(sub.rules, state.chains))
        await sub.close()  # a share's member leaves it (the last one removes its rules)

    async def Connection(
        self,
        request_iterator: AsyncIterator[incoming_pb2.IncomingConnectionClientMessage],
        context: Context,
    ) -> AsyncIterator[incoming_pb2.IncomingConnectionAgentMessage]:
        session = await session_of(self.registry, context)
        requests = aiter(request_iterator)
        first = await anext(requests, None)
        kind = first.WhichOneof("msg") if first is not None else None
        if first is None or kind not in ("open", "idle"):
            await _abort(
                context, grpc.StatusCode.INVALID_ARGUMENT, "the first message must be open"
            )
        state = self._state.get(session.id)
        if kind == "open":
            found = state.deliveries.attach(first.open.connection_id) if state else None
            if found is None:
                await _abort(
                    context,
                    grpc.StatusCode.NOT_FOUND,
                    f"no connection {first.open.connection_id!r} waiting in this session "
                    "(unknown, already taken, closed, or not opened within 10 s)",
                )
            async for msg in self._carry(state, found, None, requests):
                yield msg
            return
        reuse = first.idle.reuse and self.reuse_streams
        while True:
            idle = await self._wait_idle(state, first.idle.subscription_id, context)
            if idle is None:
                return  # the subscription ended before a connection came
            delivery, head = idle
            carried = _Carried()
            async for msg in self._carry(
                state, delivery, head, requests, carried if reuse else None
            ):
                yield msg
            ended = carried.ended
            if ended is None:
                return
            # A stream costs more to open (both ends) than a connection to relay: the
            # client parks it again for the next connection (its idle may have come
            # already, as its eof), or ends it.
            yield pb.IncomingConnectionAgentMessage(done=True)
            nxt: incoming_pb2.IncomingConnectionClientMessage | None = ended
            if ended.WhichOneof("msg") != "idle":
                nxt = await anext(requests, None)
            if nxt is None or nxt.WhichOneof("msg") != "idle":
                return
            first = nxt

    async def _carry(
        self,
        state: SessionIncoming | None,
        delivery: Delivery,
        head: incoming_pb2.IncomingConnectionAgentMessage | None,
        requests: AsyncIterator[incoming_pb2.IncomingConnectionClientMessage],
        carried: _Carried | None = None,
    ) -> AsyncIterator[incoming_pb2.IncomingConnectionAgentMessage]:
        """One connection on the stream. `carried` (reuse): `ended` is set to the client's
        last message (eof, or idle: eof and park again) when the connection ended cleanly
        both ways, so the stream can carry another one."""
        reader = asyncio.ensure_future(self._from_client(requests, delivery))
        # Reuse: an eof that would meet the client's own eof can go as the `done` that
        # follows at once (it implies eof): one message less per connection.
        sent = _Carried(eof=head is not None and head.assigned.eof)
        ended: incoming_pb2.IncomingConnectionClientMessage | None = None
        try:
            if head is not None:
                yield head
            async for msg in _to_client(delivery, sent, reader.done if carried else None):
                yield msg
            if carried is not None and sent.eof:
                # The connection is over here; the client's eof usually came already.
                with contextlib.suppress(TimeoutError):
                    ended = await asyncio.wait_for(asyncio.shield(reader), REUSE_WAIT)
        finally:
            reader.cancel()
            if state is not None:
                state.deliveries.discard(delivery)
            delivery.close()
        if carried is not None:
            carried.ended = ended

    async def _wait_idle(
        self, state: SessionIncoming | None, subscription_id: str, context: Context
    ) -> tuple[Delivery, incoming_pb2.IncomingConnectionAgentMessage] | None:
        """Park an idle stream until its subscription hands it a connection; that
        connection's first message (details and the bytes already read). None: the
        subscription ended first."""
        sub = next(
            (
                s
                for s in (state.subscriptions.values() if state and self.idle_streams else ())
                if s.id == subscription_id
            ),
            None,
        )
        waiter = sub.wait_assigned() if sub is not None else None
        if sub is None or state is None or waiter is None:
            await _abort(
                context,
                grpc.StatusCode.NOT_FOUND,
                f"no subscription {subscription_id!r} taking idle streams in this session",
            )
        while True:
            try:
                announcement = await waiter
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if waiter.cancelled() and not (task and task.cancelling()):
                    return None  # the subscription ended, not this stream
                # The stream went away: a connection handed to it meanwhile is announced
                # instead, so it is never lost with the stream.
                if not waiter.cancelled():
                    sub.announce(waiter.result())
                raise
            delivery = state.deliveries.attach(announcement.delivery.id)
            if delivery is not None:
                break
            # Over before it reached the client (and nothing queued): wait for the next.
            next_waiter = sub.wait_assigned()
            if next_waiter is None:
                return None
            waiter = next_waiter
        # The peer's first bytes usually arrive with its handshake: a few loop turns let the
        # relay read them, so they travel in this first message rather than in the next one.
        # Turns, not time: a peer that waits for the server to speak first costs no delay.
        try:
            for _ in range(FIRST_BYTES_TURNS):
                if not delivery.to_client.empty():
                    break
                await asyncio.sleep(0)
        except BaseException:
            # The stream went away after taking the connection: end it, as a stream that
            # ends while carrying its connection does.
            state.deliveries.discard(delivery)
            delivery.close()
            raise
        data: list[bytes] = []
        eof = False
        while not delivery.to_client.empty():
            item = delivery.to_client.get_nowait()
            if item is None:
                eof = True
                break
            data.append(item)
        head = pb.IncomingConnectionAgentMessage(
            assigned=pb.IncomingConnectionAssigned(
                connection=_new_connection(announcement, sub), data=b"".join(data), eof=eof
            )
        )
        return delivery, head

    @staticmethod
    async def _from_client(
        requests: AsyncIterator[incoming_pb2.IncomingConnectionClientMessage], delivery: Delivery
    ) -> incoming_pb2.IncomingConnectionClientMessage | None:
        """The client's bytes to the delivery. Its message that ended them while the
        stream stays open (eof, or idle: eof and park the stream again); None when the
        stream ended or failed."""
        put = delivery.sink or delivery.from_client.put
        try:
            while (msg := await anext(requests, None)) is not None:
                kind = msg.WhichOneof("msg")
                if kind == "data":
                    if not delivery.closed.is_set():  # else nobody takes them any more
                        await put(msg.data)
                elif kind in ("eof", "idle"):
                    if not delivery.closed.is_set():
                        await put(None)
                    return msg
        except grpc.aio.AioRpcError:
            delivery.close()
            return None
        except OSError:  # the sink's socket failed: the connection is over
            delivery.close()
            return None
        await put(None)
        return None


@dataclass
class _Carried:
    eof: bool = False  # the eof went (or goes as the `done` that follows)
    ended: incoming_pb2.IncomingConnectionClientMessage | None = None


async def _to_client(
    delivery: Delivery, sent: _Carried, client_ended: Callable[[], bool] | None = None
) -> AsyncIterator[incoming_pb2.IncomingConnectionAgentMessage]:
    """Queued bytes, then eof, until the connection is over (what is queued still goes).

    A plain get() per message (no helper futures: this runs per chunk): whoever closes the
    delivery puts None into an empty queue (Delivery.close, the subscription's end), which
    wakes this up; a queue that still holds chunks is drained first, then found closed.
    sent.eof: the eof went (already in an idle stream's first message, or here).
    client_ended (reuse): true when the client's bytes ended already; the peer's eof is
    then left to the `done` that follows."""
    queue = delivery.to_client
    while True:
        if queue.empty() and delivery.closed.is_set():
            return
        item = await queue.get()
        if item is None:
            if not sent.eof:
                sent.eof = True
                if client_ended is None or not client_ended():
                    yield pb.IncomingConnectionAgentMessage(eof=True)
        else:
            yield pb.IncomingConnectionAgentMessage(data=item)


def register(server: grpc.aio.Server, registry: SessionRegistry) -> None:
    incoming_pb2_grpc.add_IncomingServicer_to_server(IncomingService(registry), server)
