"""IncomingClient: subscribe to a target's port and receive its connections (stolen or
mirrored) as byte streams. This is what the supervisor's listen/accept integration calls.

```python
incoming = IncomingClient(agent_client)
sub = await incoming.subscribe(8080, "steal", HttpFilterSpec(header_filter="x-user: me"))
async for conn in sub:                      # IncomingConnection, one per delivered connection
    request = await conn.reader.read(65536) # asyncio.StreamReader: the peer's bytes
    await conn.write(b"HTTP/1.1 200 OK\r\n...")   # steal: to the peer; mirror: dropped
    await conn.close()
await sub.close()                           # rules removed; also when the session ends
```
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

import grpc
import grpc.aio
from grpc.aio import EOF  # type: ignore[attr-defined]  # missing from grpc-stubs

from mirrord.client.agent_client import AgentClient
from mirrord.client.errors import AgentError, AgentLost
from mirrord.client.probes import ProbeSpec
from mirrord.say import say
from mirrord.v1 import incoming_pb2, incoming_pb2_grpc

if TYPE_CHECKING:
    EventCall: TypeAlias = grpc.aio.UnaryStreamCall[
        incoming_pb2.IncomingSubscribeRequest, incoming_pb2.IncomingSubscribeEvent
    ]
    ConnCall: TypeAlias = grpc.aio.StreamStreamCall[
        incoming_pb2.IncomingConnectionClientMessage, incoming_pb2.IncomingConnectionAgentMessage
    ]

log = logging.getLogger(__name__)

pb = incoming_pb2
Mode = Literal["steal", "mirror"]
_MODES = {"steal": pb.INCOMING_MODE_STEAL, "mirror": pb.INCOMING_MODE_MIRROR}
_BACKENDS = {
    None: pb.IPTABLES_BACKEND_AUTO,
    False: pb.IPTABLES_BACKEND_LEGACY,
    True: pb.IPTABLES_BACKEND_NFT,
}
Condition = tuple[Literal["header", "path", "method"], str]
# Connection streams kept open ahead of time per subscription (when the agent takes them):
# a connection then reaches us in its stream's first message, without the announce hop and
# the ~1 ms of opening a stream. Replenished as they are used; a burst beyond this many
# falls back to announce + open.
IDLE_STREAMS = 4


class IncomingError(AgentError):
    """A subscription was refused or broke."""


class PortTaken(IncomingError):
    """Another session (of this agent or another one) already redirects the port."""


class IncomingUnavailable(IncomingError):
    """The agent cannot redirect traffic here (targetless session, no usable iptables)."""


@dataclass(frozen=True)
class HttpFilterSpec:
    """Upstream's `http_filter` (steal only): exactly one of the five kinds."""

    header_filter: str | None = None
    path_filter: str | None = None
    method_filter: str | None = None
    all_of: Sequence[Condition] | None = None
    any_of: Sequence[Condition] | None = None
    ports: Sequence[int] = ()

    def to_proto(self) -> incoming_pb2.HttpFilter:
        f = pb.HttpFilter(ports=list(self.ports))
        if self.header_filter is not None:
            f.header_filter = self.header_filter
        if self.path_filter is not None:
            f.path_filter = self.path_filter
        if self.method_filter is not None:
            f.method_filter = self.method_filter
        for name in ("all_of", "any_of"):
            conditions = getattr(self, name)
            if conditions is not None:
                target = getattr(f, name)
                target.SetInParent()
                for kind, value in conditions:
                    target.matches.append(pb.HttpMatch(**{kind: value}))
        return f


def _error(port: int, e: grpc.aio.AioRpcError) -> AgentError:
    code, details = e.code(), e.details() or ""
    if code == grpc.StatusCode.ALREADY_EXISTS:
        return PortTaken(details)
    if code == grpc.StatusCode.FAILED_PRECONDITION:
        return IncomingUnavailable(f"cannot subscribe to port {port}: {details}")
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED):
        return AgentLost(f"incoming traffic on port {port}: the agent is unreachable: {details}")
    return IncomingError(f"port {port}: {code.name}: {details}")


class IncomingConnection:
    """One delivered connection. `reader` gets the peer's bytes (EOF when the peer shut down
    its sending side); `write`/`write_eof`/`close` answer it (in mirror mode the agent drops
    answers: the pod's server answers the peer)."""

    def __init__(
        self,
        call: ConnCall,
        event: incoming_pb2.IncomingNewConnection,
        assigned: incoming_pb2.IncomingConnectionAssigned | None = None,
        *,
        reusable: bool = False,
        park: Callable[[], incoming_pb2.IncomingConnectionIdle | None] = lambda: None,
    ) -> None:
        self.id = event.connection_id
        self.remote = (event.remote.ip, event.remote.port)
        self.original_destination = (
            event.original_destination.ip,
            event.original_destination.port,
        )
        self.mode: Mode = "steal" if event.mode == pb.INCOMING_MODE_STEAL else "mirror"
        self.http_filtered = event.http_filtered
        # True: it came on a stream opened ahead of time (no announce, no stream to open).
        self.preopened = assigned is not None
        self._call = call
        self._lock = asyncio.Lock()
        self._closed = False
        # The peer's bytes are read either by recv() (straight from the stream: no task
        # between the stream and the caller) or, once `reader` is used, by a pump task.
        self._first = assigned.data if assigned is not None else b""
        self._ended = assigned is not None and assigned.eof
        self._reader: asyncio.StreamReader | None = None
        self._pump: asyncio.Task[None] | None = None
        self._receiving = False
        # Reusable (an idle stream asked for reuse): the stream outlives the connection;
        # `released` resolves once it is over: True when the agent said `done` (the
        # stream may carry another connection), False when the stream is gone.
        self._reusable = reusable
        # (reuse) The idle message that parks the stream again, if it is to be parked
        # and the agent is known to reuse streams: sent instead of eof (it implies eof).
        self._park = park
        self.parked = False
        self._eof_sent = False
        self.released: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        loop = asyncio.get_running_loop()
        self._opened: asyncio.Future[None]
        if assigned is not None:
            # An idle stream the agent handed this connection to: already open, and its
            # first message (read by the subscription) carried the peer's first bytes.
            self._opened = loop.create_future()
            self._opened.set_result(None)
        else:
            # The open goes out in the background: starting the stream costs about a
            # millisecond, which the caller spends connecting to the program's listener
            # instead of waiting. Every later write waits for it (the agent wants it first).
            open_msg = pb.IncomingConnectionClientMessage(
                open=pb.IncomingConnectionOpen(connection_id=self.id)
            )
            self._opened = loop.create_task(self._call.write(open_msg))

    @property
    def reader(self) -> asyncio.StreamReader:
        """The peer's bytes as a stream (EOF when the peer shut down its sending side)."""
        if self._reader is None:
            self._reader = asyncio.StreamReader()
            self._pump = asyncio.get_running_loop().create_task(self._read())
        return self._reader

    async def recv(self) -> bytes:
        """The peer's next bytes, b"" at EOF. Not to be mixed with `reader`."""
        assert self._reader is None, "recv() after reader"
        return await self._next()

    async def _next(self) -> bytes:
        if self._first:
            data, self._first = self._first, b""
            return data
        while not self._ended:
            msg = await self._read_message()
            if msg is None:
                break
            kind = msg.WhichOneof("msg")
            if kind == "data" and msg.data:
                return msg.data
            if kind == "eof":
                break
            if kind == "done":  # the agent's side is over (eof implied)
                self._release(True)
                break
        self._ended = True
        return b""

    async def _read_message(self) -> incoming_pb2.IncomingConnectionAgentMessage | None:
        """The stream's next message; None when it ended (then it is not reusable)."""
        self._receiving = True
        try:
            msg = await self._call.read()
        except grpc.aio.AioRpcError as e:
            if not self._closed:
                log.debug("incoming connection %s: %s", self.id, e.details())
            msg = EOF
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise
            msg = EOF  # the call was cancelled (its subscription closed), not this task
        finally:
            self._receiving = False
        if msg is EOF:
            self._release(False)
            return None
        assert isinstance(msg, pb.IncomingConnectionAgentMessage)
        return msg

    def _release(self, reusable: bool) -> None:
        if not self.released.done():
            self.released.set_result(reusable and self._reusable)

    async def _read(self) -> None:
        assert self._reader is not None
        try:
            while data := await self._next():
                if not self._reader.at_eof():
                    self._reader.feed_data(data)
        finally:
            self._reader.feed_eof()

    async def write(self, data: bytes) -> None:
        # Mirror: the agent drops answers, so none are sent; a short mirrored connection's
        # stream may be over already (an idle stream gets all of it in its first messages).
        if data and self.mode == "steal":
            async with self._lock:
                await self._opened
                await self._call.write(pb.IncomingConnectionClientMessage(data=data))

    async def write_eof(self) -> None:
        if self.mode != "steal" and not self._reusable:
            return
        await self._send_eof()

    async def _send_eof(self) -> None:
        async with self._lock:
            if self._eof_sent:
                return
            self._eof_sent = True
            await self._opened
            idle = self._park() if self._reusable else None
            if idle is not None:
                self.parked = True
                await self._call.write(pb.IncomingConnectionClientMessage(idle=idle))
            else:
                await self._call.write(pb.IncomingConnectionClientMessage(eof=True))
            if not self._reusable:
                await self._call.done_writing()

    async def close(self) -> None:
        """End the connection (the peer sees the stolen connection close)."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError):
            if self._reusable:
                await self._send_eof()  # the stream stays: only this connection ends
            else:
                async with self._lock:
                    await self._opened
                    await self._call.done_writing()
        # Let the agent flush and end the connection (reusable: until its `done`, read
        # here unless a recv() is still waiting for it); then release or drop the stream.
        if self._pump is None and not self._receiving:
            self._pump = asyncio.get_running_loop().create_task(self._discard())
        with contextlib.suppress(asyncio.TimeoutError):
            if self._pump is not None:
                await asyncio.wait_for(asyncio.shield(self._pump), 2.0)
                if self._reusable and not self.released.done():
                    await asyncio.wait_for(self._until_done(), 2.0)
        if self._pump is not None:
            self._pump.cancel()
        if not self.released.done() or not self.released.result():
            self._release(False)
            self._call.cancel()
        self._opened.cancel()

    async def _discard(self) -> None:
        while not self._ended and await self._next():
            pass

    async def _until_done(self) -> None:
        """After eof: the messages left before the agent's `done` (none, normally)."""
        while not self.released.done():
            msg = await self._read_message()
            if msg is not None and msg.WhichOneof("msg") == "done":
                self._release(True)


class Subscription:
    """Redirected traffic of one port. Iterate (or `accept()`) for connections; `close()`
    ends it and the agent removes its rules."""

    def __init__(
        self,
        incoming: IncomingClient,
        call: EventCall,
        port: int,
        mode: Mode,
        backend: str,
        subscription_id: str = "",
    ) -> None:
        self.port = port
        self.mode = mode
        self.backend = backend
        # The agent delivers to the program's listener itself (IncomingSubscribed.direct):
        # no connection comes through here.
        self.direct = False
        self._incoming = incoming
        self._call = call
        self._id = subscription_id
        # Connections that came on idle streams, not yet accepted.
        self._ready: asyncio.Queue[IncomingConnection] = asyncio.Queue()
        # The pending read of the Subscribe stream, kept across accept() calls: a read of a
        # gRPC stream is not cancelled just because a connection came the other way first.
        self._event: asyncio.Future[object] | None = None
        self._idle: set[asyncio.Task[None]] = set()
        self._parked = 0  # idle streams waiting for a connection
        self._agent_reuses = False  # a stream came back from the agent (`done`) once
        self._closed = False
        # An empty id: the agent predates idle streams; every connection is announced.
        if subscription_id:
            for _ in range(incoming.idle_streams):
                self._add_idle_stream()

    def _add_idle_stream(self) -> None:
        if self._closed:
            return
        task = asyncio.get_running_loop().create_task(self._idle_stream())
        self._idle.add(task)
        task.add_done_callback(self._idle.discard)

    async def _idle_stream(self) -> None:
        """One idle stream: parked until the agent assigns it a connection; then, when
        that connection is over and the agent freed the stream (`done`), parked again
        while the pool is short of idle streams (opening a stream costs both ends more
        CPU than relaying a short connection)."""
        call = self._incoming._connection_call()
        conn: IncomingConnection | None = None
        try:
            conn = await self._park(call)
            while True:
                if conn is None or self._closed:
                    call.cancel()
                    return
                self._ready.put_nowait(conn)
                # Opening a stream costs this loop (and the agent's) CPU just when this
                # connection's first bytes should reach the program (measured: ~0.3 ms
                # on the way to the program): while the pool still holds half its
                # streams, this one comes back when its connection is over. A burst
                # that drains the pool further replenishes at once.
                if self._parked < self._incoming.idle_streams // 2:
                    self._add_idle_stream()
                # Shielded: cancelling this task must not cancel the connection's future.
                if not await asyncio.shield(conn.released):
                    self._add_idle_stream()  # gone with its connection (an older agent)
                    return
                self._agent_reuses = True
                if self._closed:
                    call.cancel()
                    return
                if conn.parked:  # parked again already, with its eof
                    conn = await self._park(call, send=False)
                    continue
                if self._parked >= self._incoming.idle_streams:
                    call.cancel()  # enough idle streams already
                    return
                conn = await self._park(call)
        except BaseException:
            # A connection still on the stream keeps it until it is over.
            if conn is None or conn.released.done():
                call.cancel()
            else:
                conn.released.add_done_callback(lambda _: call.cancel())
            raise

    def _idle_message(self) -> incoming_pb2.IncomingConnectionIdle:
        return pb.IncomingConnectionIdle(subscription_id=self._id, reuse=True)

    def _park_with_eof(self) -> incoming_pb2.IncomingConnectionIdle | None:
        """At a reusable connection's eof: park its stream in the same message, when the
        agent reuses streams and the pool is short of idle ones."""
        if self._agent_reuses and not self._closed and self._parked < self._incoming.idle_streams:
            return self._idle_message()
        return None

    async def _park(self, call: ConnCall, *, send: bool = True) -> IncomingConnection | None:
        """Offer the stream to the agent (send: False when the connection's eof did); the
        connection it assigns (None: refused, the subscription ended, the agent is gone)."""
        self._parked += 1
        try:
            if send:
                await call.write(pb.IncomingConnectionClientMessage(idle=self._idle_message()))
            msg = await call.read()
        except grpc.aio.AioRpcError as e:
            # Not replaced: the agent refused or is gone; announced connections still come.
            if not self._closed:
                log.debug("port %d: idle stream ended: %s", self.port, e.details())
            return None
        finally:
            self._parked -= 1
        if msg is EOF:  # the subscription ended
            return None
        assert isinstance(msg, pb.IncomingConnectionAgentMessage)
        if msg.WhichOneof("msg") != "assigned":
            return None
        return IncomingConnection(
            call, msg.assigned.connection, msg.assigned, reusable=True, park=self._park_with_eof
        )

    async def accept(self) -> IncomingConnection:
        """The next connection; raises IncomingError when the subscription ended."""
        if not self._ready.empty():
            return self._ready.get_nowait()
        if self._event is None:
            self._event = asyncio.ensure_future(self._call.read())
        ready = asyncio.ensure_future(self._ready.get())
        try:
            waiting: set[asyncio.Future[Any]] = {ready, self._event}
            await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not ready.done():
                ready.cancel()
        if ready.done() and not ready.cancelled():
            return ready.result()
        reading, self._event = self._event, None
        try:
            event = reading.result()
        except grpc.aio.AioRpcError as e:
            raise _error(self.port, e) from None
        if event is EOF:
            raise IncomingError(f"the subscription to port {self.port} ended (session over?)")
        assert isinstance(event, pb.IncomingSubscribeEvent)
        return await self._incoming._open(event.connection)

    def __aiter__(self) -> AsyncIterator[IncomingConnection]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[IncomingConnection]:
        while True:
            try:
                conn = await self.accept()
            except IncomingError:
                return
            yield conn

    async def close(self) -> None:
        self._closed = True
        for task in list(self._idle):
            task.cancel()
        while not self._ready.empty():
            await self._ready.get_nowait().close()
        if self._event is not None:
            self._event.cancel()
        self._call.cancel()


class IncomingClient:
    def __init__(self, agent: AgentClient, *, idle_streams: int = IDLE_STREAMS) -> None:
        self._agent = agent
        self._mesh_said: set[str] = set()
        # 0: announce + open every connection (what clients before idle streams did).
        self.idle_streams = idle_streams
        self._stub = incoming_pb2_grpc.IncomingStub(agent.channel)

    async def subscribe(
        self,
        port: int,
        mode: Mode = "mirror",
        http_filter: HttpFilterSpec | None = None,
        *,
        include_node_traffic: bool = False,
        probes: Sequence[ProbeSpec] = (),
        ignore_localhost: bool = False,
        nftables: bool | None = None,
        direct: incoming_pb2.IncomingDirect | None = None,
        timeout: float = 30.0,
    ) -> Subscription:
        """Redirect `port` of the target. Returns once the agent's rules are in place.

        include_node_traffic: also take traffic from the node; false (the default before
        protocol 1.3) leaves all of it to the pod.
        probes: the target's probes on this port: with include_node_traffic, a steal
        leaves their own requests from the node to the pod.
        nftables: prefer iptables-nft (True) or -legacy (False) when the target's netns has
        no rules telling which one it uses (None: the agent host's default).
        direct: the agent shares our loopback: it may deliver connections to the
        program's listener itself (`Subscription.direct` says whether it does)."""
        if (lost := self._agent.lost_error()) is not None:
            raise lost
        request = pb.IncomingSubscribeRequest(
            port=port,
            mode=_MODES[mode],
            backend=_BACKENDS[nftables],
            include_node_traffic=include_node_traffic,
            ignore_localhost=ignore_localhost,
            probes=[p.to_proto() for p in probes],
        )
        if http_filter is not None:
            request.http_filter.CopyFrom(http_filter.to_proto())
        if direct is not None:
            request.direct.CopyFrom(direct)
        call: EventCall = self._stub.Subscribe(request, metadata=self._agent.metadata())
        try:
            first = await asyncio.wait_for(call.read(), timeout)
        except grpc.aio.AioRpcError as e:
            raise _error(port, e) from None
        except BaseException:
            call.cancel()
            raise
        if first is EOF:
            raise IncomingError(f"the agent ended the subscription to port {port} at once")
        assert isinstance(first, pb.IncomingSubscribeEvent)
        sub = Subscription(
            self, call, port, mode, first.subscribed.backend, first.subscribed.subscription_id
        )
        sub.direct = first.subscribed.direct
        mesh = first.subscribed.mesh
        if mesh and mesh not in self._mesh_said:  # once per port and mesh
            self._mesh_said.add(mesh)
            say(f"service mesh in the target: {mesh}")
        return sub

    def _connection_call(self) -> ConnCall:
        call: ConnCall = self._stub.Connection(metadata=self._agent.metadata())  # type: ignore[call-arg]
        return call

    async def _open(self, event: incoming_pb2.IncomingNewConnection) -> IncomingConnection:
        return IncomingConnection(self._connection_call(), event)
