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
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, TypeAlias

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
    ) -> None:
        self.id = event.connection_id
        self.remote = (event.remote.ip, event.remote.port)
        self.original_destination = (
            event.original_destination.ip,
            event.original_destination.port,
        )
        self.mode: Mode = "steal" if event.mode == pb.INCOMING_MODE_STEAL else "mirror"
        self.http_filtered = event.http_filtered
        self.reader = asyncio.StreamReader()
        self._call = call
        self._lock = asyncio.Lock()
        self._closed = False
        loop = asyncio.get_running_loop()
        # The open goes out in the background: starting the stream costs about a
        # millisecond, which the caller spends connecting to the program's listener
        # instead of waiting. Every later write waits for it (the agent wants it first).
        open_msg = pb.IncomingConnectionClientMessage(
            open=pb.IncomingConnectionOpen(connection_id=self.id)
        )
        self._opened = loop.create_task(self._call.write(open_msg))
        self._pump = loop.create_task(self._read())

    async def _read(self) -> None:
        try:
            while True:
                msg = await self._call.read()
                if msg is EOF:
                    break
                assert isinstance(msg, pb.IncomingConnectionAgentMessage)
                if msg.WhichOneof("msg") == "data":
                    self.reader.feed_data(msg.data)
                elif msg.WhichOneof("msg") == "eof":
                    break
        except grpc.aio.AioRpcError as e:
            if not self._closed:
                log.debug("incoming connection %s: %s", self.id, e.details())
        finally:
            self.reader.feed_eof()

    async def write(self, data: bytes) -> None:
        if data:
            async with self._lock:
                await self._opened
                await self._call.write(pb.IncomingConnectionClientMessage(data=data))

    async def write_eof(self) -> None:
        async with self._lock:
            await self._opened
            await self._call.write(pb.IncomingConnectionClientMessage(eof=True))
            await self._call.done_writing()

    async def close(self) -> None:
        """End the connection (the peer sees the stolen connection close)."""
        if self._closed:
            return
        self._closed = True
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
    ) -> None:
        self.port = port
        self.mode = mode
        self.backend = backend
        self._incoming = incoming
        self._call = call

    async def accept(self) -> IncomingConnection:
        """The next connection; raises IncomingError when the subscription ended."""
        try:
            event = await self._call.read()
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
        self._call.cancel()


class IncomingClient:
    def __init__(self, agent: AgentClient) -> None:
        self._agent = agent
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
        return Subscription(self, call, port, mode, first.subscribed.backend)

    async def _open(self, event: incoming_pb2.IncomingNewConnection) -> IncomingConnection:
        call: ConnCall = self._stub.Connection(metadata=self._agent.metadata())  # type: ignore[call-arg]
        return IncomingConnection(call, event)
