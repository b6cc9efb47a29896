"""The Net gRPC service: TCP and UDP relays and name resolution, per session."""

from __future__ import annotations

import resource
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, TypeAlias

import grpc
import grpc.aio

from mirrord.agent.net.direct import DirectListeners
from mirrord.agent.net.resolve import resolve
from mirrord.agent.net.sockets import NetSessionState
from mirrord.agent.net.tcp import Reply, Request, relay_tcp
from mirrord.agent.net.udp import relay_udp
from mirrord.agent.service import session_of
from mirrord.agent.session import AgentSession, SessionRegistry
from mirrord.v1 import net_pb2, net_pb2_grpc
from mirrord.wire.net import deserialize_client, serialize_server

if TYPE_CHECKING:
    Context: TypeAlias = grpc.aio.ServicerContext[Any, Any]


class NetService(net_pb2_grpc.NetServicer):
    def __init__(self, registry: SessionRegistry) -> None:
        self.registry = registry
        self._states: dict[str, NetSessionState] = {}
        self.direct = DirectListeners()

    def _state(self, session: AgentSession) -> NetSessionState:
        state = self._states.get(session.id)
        if state is None:
            state = self._states[session.id] = NetSessionState()

            async def close() -> None:
                self._states.pop(session.id, None)
                await state.close()

            session.on_close(close, "network relays")
        state.adopt()
        return state

    async def Tcp(  # type: ignore[override]  # data as views/bytes: mirrord/wire/net.py
        self, request_iterator: AsyncIterator[Request], context: Context
    ) -> AsyncIterator[Reply]:
        session = await session_of(self.registry, context)
        state = self._state(session)
        async for msg in relay_tcp(session, aiter(request_iterator), state):
            yield msg

    async def Udp(
        self, request_iterator: AsyncIterator[net_pb2.UdpClientMessage], context: Context
    ) -> AsyncIterator[net_pb2.UdpServerMessage]:
        session = await session_of(self.registry, context)
        self._state(session)
        async for msg in relay_udp(session, aiter(request_iterator)):
            yield msg

    async def Resolve(
        self, request: net_pb2.ResolveRequest, context: Context
    ) -> net_pb2.ResolveReply:
        session = await session_of(self.registry, context)
        return net_pb2.ResolveReply(addresses=await resolve(session, request.name))

    async def Direct(self, request: net_pb2.DirectRequest, context: Context) -> net_pb2.DirectReply:
        session = await session_of(self.registry, context)
        v4, v6, secret = self.direct.open(session, self._state(session))
        return net_pb2.DirectReply(v4_port=v4, v6_port=v6, secret=secret)


def register(server: grpc.aio.Server, registry: SessionRegistry) -> None:
    # One pod socket per relayed connection: lift the soft fd limit to the hard one.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    # As net_pb2_grpc.add_NetServicer_to_server, with Tcp's `data` messages taking the fast
    # path of mirrord/wire/net.py (same bytes on the wire).
    servicer = NetService(registry)
    handlers = {
        "Tcp": grpc.stream_stream_rpc_method_handler(
            servicer.Tcp,
            request_deserializer=deserialize_client,
            response_serializer=serialize_server,
        ),
        "Udp": grpc.stream_stream_rpc_method_handler(
            servicer.Udp,
            request_deserializer=net_pb2.UdpClientMessage.FromString,
            response_serializer=net_pb2.UdpServerMessage.SerializeToString,
        ),
        "Resolve": grpc.unary_unary_rpc_method_handler(
            servicer.Resolve,
            request_deserializer=net_pb2.ResolveRequest.FromString,
            response_serializer=net_pb2.ResolveReply.SerializeToString,
        ),
        "Direct": grpc.unary_unary_rpc_method_handler(
            servicer.Direct,
            request_deserializer=net_pb2.DirectRequest.FromString,
            response_serializer=net_pb2.DirectReply.SerializeToString,
        ),
    }
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("mirrord.v1.Net", handlers),)
    )
    server.add_registered_method_handlers("mirrord.v1.Net", handlers)  # type: ignore[attr-defined]  # missing from grpc-stubs
