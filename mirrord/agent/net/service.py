"""The Net gRPC service: TCP and UDP relays and name resolution, per session."""

from __future__ import annotations

import resource
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, TypeAlias

import grpc
import grpc.aio

from mirrord.agent.net.resolve import resolve
from mirrord.agent.net.sockets import NetSessionState
from mirrord.agent.net.tcp import relay_tcp
from mirrord.agent.net.udp import relay_udp
from mirrord.agent.service import session_of
from mirrord.agent.session import AgentSession, SessionRegistry
from mirrord.v1 import net_pb2, net_pb2_grpc

if TYPE_CHECKING:
    Context: TypeAlias = grpc.aio.ServicerContext[Any, Any]


class NetService(net_pb2_grpc.NetServicer):
    def __init__(self, registry: SessionRegistry) -> None:
        self.registry = registry
        self._states: dict[str, NetSessionState] = {}

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

    async def Tcp(
        self, request_iterator: AsyncIterator[net_pb2.TcpClientMessage], context: Context
    ) -> AsyncIterator[net_pb2.TcpServerMessage]:
        session = await session_of(self.registry, context)
        self._state(session)
        async for msg in relay_tcp(session, aiter(request_iterator)):
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


def register(server: grpc.aio.Server, registry: SessionRegistry) -> None:
    # One pod socket per relayed connection: lift the soft fd limit to the hard one.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    net_pb2_grpc.add_NetServicer_to_server(NetService(registry), server)
