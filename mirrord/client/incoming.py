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
        self.reader = asyncio.StreamReader()
        self._call = call
        self._lock = asyncio.Lock()
        self._closed = False
        loop = asyncio.get_running_loop()
        self._opened: asyncio.Future[None]
        if assigned is not None:
            # An idle stream the agent handed this connection to: already open, and its
            # first message (read by the subscription) carried the peer's first bytes.
            self._opened = loop.create_future()
            self._opened.set_result(None)
            if assigned.data:
                self.reader.feed_data(assigned.data)
            if assigned.eof:
                self.reader.feed_eof()
        else:
            # The open goes out in the background: starting the stream costs about a
            # millisecond, which the caller spends connecting to the program's listener
            # instead of waiting. Every later write waits for it (the agent wants it first).
            open_msg = pb.IncomingConnectionClientMessage(
                open=pb.IncomingConnectionOpen(connection_id=self.id)
            )
            self._opened = loop.create_task(self._call.write(open_msg))
        self._pump = loop.create_task(self._read())
        # Called once, when the answer is complete (write_eof or close): the subscription
        # then opens this stream's replacement, off the path of the answer's first bytes.
        self._answered: Callable[[], None] | None = None

    async def _read(self) -> None:
        try:
            while True:
                msg = await self._call.read()
                if msg is EOF:
                    break
                assert isinstance(msg, pb.IncomingConnectionAgentMessage)
                if msg.WhichOneof("msg") == "data" and not self.reader.at_eof():
                    self.reader.feed_data(msg.data)
                elif msg.WhichOneof("msg") == "eof":
                    break
        except grpc.aio.AioRpcError as e:
            if not self._closed:
                log.debug("incoming connection %s: %s", self.id, e.details())
        finally:
            self.reader.feed_eof()

    def _done_answering(self) -> None:
        if self._answered is not None:
            answered, self._answered = self._answered, None
            answered()

    async def write(self, data: bytes) -> None:
        # Mirror: the agent drops answers, so none are sent; a short mirrored connection's
        # stream may be over already (an idle stream gets all of it in its first messages).
        if data and self.mode == "steal":
            async with self._lock:
                await self._opened
                await self._call.write(pb.IncomingConnectionClientMessage(data=data))

    async def write_eof(self) -> None:
        if self.mode != "steal":
            self._done_answering()
            return
        async with self._lock:
            await self._opened
            await self._call.write(pb.IncomingConnectionClientMessage(eof=True))
            await self._call.done_writing()
        self._done_answering()

    async def close(self) -> None:
        """End the connection (the peer sees the stolen connection close)."""
        if self._closed:
            return
        self._closed = True
        self._done_answering()
        with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError):
            async with self._lock:
                await self._opened
                await self._call.done_writing()
        # Let the agent flush and end the stream; then drop it.
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._pump), 2.0)
        self._call.cancel()
        self._pump.cancel()
        self._opened.cancel()


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
        self._incoming = incoming
        self._call = call
        self._id = subscription_id
        # Connections that came on idle streams, not yet accepted.
        self._ready: asyncio.Queue[IncomingConnection] = asyncio.Queue()
        # The pending read of the Subscribe stream, kept across accept() calls: a read of a
        # gRPC stream is not cancelled just because a connection came the other way first.
        self._event: asyncio.Future[object] | None = None
        self._idle: set[asyncio.Task[None]] = set()
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
        call = self._incoming._connection_call()
        try:
            await call.write(
                pb.IncomingConnectionClientMessage(
                    idle=pb.IncomingConnectionIdle(subscription_id=self._id)
                )
            )
            msg = await call.read()
        except grpc.aio.AioRpcError as e:
            # Not replaced: the agent refused or is gone; announced connections still come.
            if not self._closed:
                log.debug("port %d: idle stream ended: %s", self.port, e.details())
            call.cancel()
            return
        except BaseException:
            call.cancel()
            raise
        if msg is EOF:  # the subscription ended
            call.cancel()
            return
        assert isinstance(msg, pb.IncomingConnectionAgentMessage)
        if msg.WhichOneof("msg") != "assigned":
            call.cancel()
            return
        conn = IncomingConnection(call, msg.assigned.connection, msg.assigned)
        if self._closed:
            call.cancel()
            return
        self._ready.put_nowait(conn)
        # Opening the replacement stream costs this loop (and the agent's) CPU just when
        # this connection's first bytes should reach the program (measured: ~0.3 ms on the
        # way to the program): while the pool still holds half its streams, it waits until
        # this connection is answered. A burst that drains the pool further replenishes at
        # once.
        if len(self._idle) - 1 < self._incoming.idle_streams // 2:
            self._add_idle_stream()
        else:
            conn._answered = self._add_idle_stream

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
        ignore_localhost: bool = False,
        nftables: bool | None = None,
        timeout: float = 30.0,
    ) -> Subscription:
        """Redirect `port` of the target. Returns once the agent's rules are in place.

        include_node_traffic: also take traffic from the node (health probes).
        nftables: prefer iptables-nft (True) or -legacy (False) when the target's netns has
        no rules telling which one it uses (None: the agent host's default)."""
        if (lost := self._agent.lost_error()) is not None:
            raise lost
        request = pb.IncomingSubscribeRequest(
            port=port,
            mode=_MODES[mode],
            backend=_BACKENDS[nftables],
            include_node_traffic=include_node_traffic,
            ignore_localhost=ignore_localhost,
        )
        if http_filter is not None:
            request.http_filter.CopyFrom(http_filter.to_proto())
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
        return Subscription(
            self, call, port, mode, first.subscribed.backend, first.subscribed.subscription_id
        )

    def _connection_call(self) -> ConnCall:
        call: ConnCall = self._stub.Connection(metadata=self._agent.metadata())  # type: ignore[call-arg]
        return call

    async def _open(self, event: incoming_pb2.IncomingNewConnection) -> IncomingConnection:
        return IncomingConnection(self._connection_call(), event)
