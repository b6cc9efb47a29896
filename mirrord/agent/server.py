"""The agent's gRPC server: binding, serving, and ending every session on shutdown."""

import asyncio
import ipaddress
import logging

import grpc.aio

from mirrord.agent.auth import TokenAuthInterceptor
from mirrord.agent.service import AgentService
from mirrord.agent.services import FEATURE_SERVICES
from mirrord.agent.session import AgentSession, SessionRegistry
from mirrord.v1 import agent_pb2_grpc

log = logging.getLogger(__name__)


class ListenAddressError(ValueError):
    pass


def parse_listen_address(text: str) -> tuple[str, int]:
    """`HOST:PORT` or `[V6]:PORT` into (host, port); host without brackets."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not host:
        raise ListenAddressError(f"listen address {text!r} is not HOST:PORT")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        port = int(port_text)
    except ValueError:
        raise ListenAddressError(f"port {port_text!r} in {text!r} is not a number") from None
    if not 0 <= port <= 65535:
        raise ListenAddressError(f"port {port} in {text!r} is out of range")
    return host, port


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name we cannot vouch for


def format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class AgentServer:
    """Serve the Agent service until stop(); with one_session, stop after the first session."""

    def __init__(
        self,
        token: str,
        *,
        listen: str = "127.0.0.1:0",
        ping_timeout: float = 10.0,
        one_session: bool = False,
        allow_non_loopback: bool = False,
    ) -> None:
        self.host, self._port = parse_listen_address(listen)
        if not allow_non_loopback and not is_loopback(self.host):
            raise ListenAddressError(
                f"refusing to listen on {self.host}: not a loopback address (the agent is meant "
                "to be reached through a port-forward); pass --allow-non-loopback to override"
            )
        self.registry = SessionRegistry()
        self.one_session = one_session
        self.service = AgentService(
            self.registry, ping_timeout, self._session_closed, one_session=one_session
        )
        self._server = grpc.aio.server(interceptors=[TokenAuthInterceptor(token)])
        agent_pb2_grpc.add_AgentServicer_to_server(self.service, self._server)
        for register in FEATURE_SERVICES:
            register(self._server, self.registry)
        self._stopped = asyncio.Event()
        self._stopping = False
        self._stop_task: asyncio.Task[None] | None = None
        self.port = 0

    @property
    def address(self) -> str:
        return format_address(self.host, self.port)

    async def start(self) -> str:
        """Bind and start serving; returns HOST:PORT with the real port."""
        try:
            self.port = self._server.add_insecure_port(format_address(self.host, self._port))
        except RuntimeError as e:
            raise ListenAddressError(f"cannot listen on {self.host}:{self._port}: {e}") from e
        if self.port == 0:
            raise ListenAddressError(f"cannot listen on {self.host}:{self._port}")
        await self._server.start()
        log.info("listening on %s", self.address)
        return self.address

    def _session_closed(self, session: AgentSession) -> None:
        if self.one_session and not self._stopping:
            log.info("one-session agent: session %s ended, exiting", session.id)
            self._stop_task = asyncio.get_running_loop().create_task(
                self.stop("the agent's only session ended")
            )

    async def stop(self, reason: str = "the agent is shutting down", grace: float = 2.0) -> None:
        """Tell every client why, wait (bounded) for their cleanups, then stop serving."""
        if self._stopping:
            await self._stopped.wait()
            return
        self._stopping = True
        sessions = self.registry.all()
        for session in sessions:
            session.end(reason, tell_client=True)
        if sessions:
            closed = [asyncio.create_task(s.closed.wait()) for s in sessions]
            _, pending = await asyncio.wait(closed, timeout=grace)
            for task in pending:
                task.cancel()
            # Streams that did not finish in time: run their cleanups here rather than never.
            for session in sessions:
                if not session.closed.is_set():
                    await session.close()
        await self._server.stop(grace)
        self._stopped.set()

    async def wait_stopped(self) -> None:
        await self._stopped.wait()
