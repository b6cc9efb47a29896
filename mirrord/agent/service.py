"""The Agent gRPC service: the Session control stream and the unary calls."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any, NoReturn, TypeAlias

import grpc
import grpc.aio

import mirrord
from mirrord.agent.namespaces import NamespaceError, NamespaceWorker
from mirrord.agent.session import AgentSession, SessionRegistry
from mirrord.agent.target import ProcessWatch, TargetError, read_environ, resolve_target
from mirrord.v1 import agent_pb2, agent_pb2_grpc
from mirrord.wire.loopback import loopback_id
from mirrord.wire.protocol import PROTOCOL_MAJOR, PROTOCOL_MINOR, SESSION_HEADER, version_string

log = logging.getLogger(__name__)


if TYPE_CHECKING:
    Context: TypeAlias = grpc.aio.ServicerContext[Any, Any]


async def abort(
    context: Context, code: grpc.StatusCode, message: str, *, log_as: logging.Logger | None = None
) -> NoReturn:
    """Refuse the call with `code` (every service's refusals go through here, logged)."""
    (log_as or log).warning("refusing call: %s: %s", code.name, message)
    await context.abort(code, message)
    raise AssertionError("context.abort returned")  # abort always raises


class AgentService(agent_pb2_grpc.AgentServicer):
    def __init__(
        self,
        registry: SessionRegistry,
        default_ping_timeout: float,
        on_session_closed: Callable[[AgentSession], None] | None = None,
        one_session: bool = False,
    ) -> None:
        self.registry = registry
        # A one-session agent belongs to the mirrord that started it: a second Hello (any
        # token holder) must not become a session whose end would stop the agent.
        self.one_session = one_session
        self._admitted = 0
        self.default_ping_timeout = default_ping_timeout
        self._on_session_closed = on_session_closed
        # Hooks for features that set things up per session (each may call session.on_close).
        self.on_session_open: list[Callable[[AgentSession], None]] = []

    async def Session(
        self,
        request_iterator: AsyncIterator[agent_pb2.ClientMessage],
        context: Context,
    ) -> AsyncIterator[agent_pb2.AgentMessage]:
        requests = aiter(request_iterator)
        try:
            first = await asyncio.wait_for(anext(requests), self.default_ping_timeout)
        except TimeoutError:
            await abort(
                context,
                grpc.StatusCode.DEADLINE_EXCEEDED,
                f"no Hello within {self.default_ping_timeout:g}s of opening the session",
            )
        except StopAsyncIteration:
            return
        if first.WhichOneof("msg") != "hello":
            await abort(
                context, grpc.StatusCode.INVALID_ARGUMENT, "the first session message must be Hello"
            )
        hello = first.hello
        ours = version_string(PROTOCOL_MAJOR, PROTOCOL_MINOR)
        theirs = version_string(hello.protocol.major, hello.protocol.minor)
        if hello.protocol.major != PROTOCOL_MAJOR:
            await abort(
                context,
                grpc.StatusCode.FAILED_PRECONDITION,
                f"protocol mismatch: the client (mirrord {hello.client_version or '?'}) speaks "
                f"agent protocol {theirs}, this agent (mirrord {mirrord.__version__}) speaks "
                f"{ours}; use the same major version on both sides",
            )

        if self.one_session and self._admitted:
            await abort(
                context,
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                "this agent serves a single session (--one-session), and it has one",
            )
        self._admitted += 1  # before any await: two Hellos at once cannot both pass
        session: AgentSession | None = None
        watch: ProcessWatch | None = None
        try:
            pid = resolve_target(hello.target)
            watch = ProcessWatch(pid) if pid is not None else None
            ping_timeout = (
                hello.ping_timeout_ms / 1000 if hello.ping_timeout_ms else self.default_ping_timeout
            )
            worker = NamespaceWorker(pid, name=str(pid or "self"))
            entered = await worker.start()
            session = AgentSession(pid, worker, ping_timeout)
        except BaseException as e:
            # No session came of it (its slot is free again); e.g. the client cancelled
            # while we entered the namespaces.
            self._admitted -= 1
            if watch is not None:
                watch.close()
            if isinstance(e, TargetError):
                await abort(context, grpc.StatusCode.NOT_FOUND, str(e))
            if isinstance(e, NamespaceError):
                await abort(context, grpc.StatusCode.INTERNAL, f"cannot enter the target: {e}")
            raise

        self.registry.add(session)
        session.on_close(lambda: self.registry.remove(session), "unregister")
        if watch is not None:
            session.on_close(watch.close, "target watch")
            watch.start(lambda: session.end(f"the target process {pid} exited", tell_client=True))
        log.info(
            "session %s: target pid %s, hostname %r, netns %d, client protocol %s",
            session.id,
            pid or "(targetless)",
            entered.hostname,
            entered.net_ns_inode,
            theirs,
        )
        reader = asyncio.create_task(self._read_client(session, requests))
        try:
            for hook in self.on_session_open:
                hook(session)
            yield agent_pb2.AgentMessage(
                hello=agent_pb2.HelloReply(
                    protocol=agent_pb2.ProtocolVersion(major=PROTOCOL_MAJOR, minor=PROTOCOL_MINOR),
                    agent_version=mirrord.__version__,
                    session_id=session.id,
                    target_pid=pid or 0,
                    hostname=entered.hostname,
                    net_ns_inode=entered.net_ns_inode,
                    loopback_id=loopback_id(),  # this loop thread's: where it listens
                )
            )
            while True:
                msg = await session.next_outgoing()
                if msg is None:
                    break
                yield msg
        except (asyncio.CancelledError, GeneratorExit):
            # grpc cancels the handler when the client disappears or cancels the call.
            session.end("the client went away (stream cancelled)")
            raise
        finally:
            reader.cancel()
            # Shielded: cleanup must finish even if this task is cancelled again meanwhile.
            await asyncio.shield(self._close(session))

    async def _close(self, session: AgentSession) -> None:
        await session.close()
        if self._on_session_closed is not None:
            self._on_session_closed(session)

    async def _read_client(
        self, session: AgentSession, requests: AsyncIterator[agent_pb2.ClientMessage]
    ) -> None:
        """Answers pings and ends the session on Bye, end of stream, or ping timeout."""
        try:
            while True:
                try:
                    msg = await asyncio.wait_for(anext(requests), session.ping_timeout)
                except TimeoutError:
                    session.end(
                        f"no message from the client for {session.ping_timeout:g}s (ping timeout)",
                        tell_client=True,
                    )
                    return
                except StopAsyncIteration:
                    session.end("the client closed the stream")
                    return
                kind = msg.WhichOneof("msg")
                if kind == "ping":
                    session.send(agent_pb2.AgentMessage(pong=agent_pb2.Pong(seq=msg.ping.seq)))
                elif kind == "bye":
                    session.end(f"the client said bye: {msg.bye.reason or 'no reason given'}")
                    return
                else:
                    session.end(f"unexpected {kind} message after Hello", tell_client=True)
                    return
        except asyncio.CancelledError:
            raise
        except Exception as e:  # a broken stream surfaces here as an RPC error
            session.end(f"the session stream failed: {e}")

    async def GetEnv(
        self, request: agent_pb2.GetEnvRequest, context: Context
    ) -> agent_pb2.GetEnvReply:
        session = await self._session_of(context)
        try:
            pairs = read_environ(session.pid)
        except TargetError as e:
            await abort(context, grpc.StatusCode.NOT_FOUND, str(e))
        except PermissionError as e:
            await abort(context, grpc.StatusCode.PERMISSION_DENIED, e.strerror or str(e))
        return agent_pb2.GetEnvReply(
            vars=[agent_pb2.EnvVar(name=name, value=value) for name, value in pairs]
        )

    async def _session_of(self, context: Context) -> AgentSession:
        return await session_of(self.registry, context)


async def session_of(registry: SessionRegistry, context: Context) -> AgentSession:
    """The live session named by the call's mirrord-session metadata."""
    session_id = None
    for key, value in context.invocation_metadata() or ():
        if key == SESSION_HEADER:
            session_id = value.decode() if isinstance(value, bytes) else value
    if not session_id:
        await abort(
            context,
            grpc.StatusCode.INVALID_ARGUMENT,
            f"missing '{SESSION_HEADER}' metadata naming the session (from HelloReply)",
        )
    session = registry.get(session_id)
    if session is None or session.ended.is_set():
        await abort(
            context,
            grpc.StatusCode.NOT_FOUND,
            f"no live session {session_id!r} on this agent (it ended, or never existed)",
        )
    return session
