"""AgentClient: one session with an agent (handshake, pings, unary calls, loss detection)."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any, TypeAlias

import grpc
import grpc.aio
from grpc.aio import EOF  # type: ignore[attr-defined]  # missing from grpc-stubs

import mirrord
from mirrord.client.errors import (
    AgentAuthFailed,
    AgentError,
    AgentLost,
    AgentUnreachable,
    ProtocolMismatch,
    TargetNotFound,
)
from mirrord.client.probes import ProbeSpec
from mirrord.v1 import agent_pb2, agent_pb2_grpc
from mirrord.wire.protocol import (
    AUTH_HEADER,
    PROTOCOL_MAJOR,
    PROTOCOL_MINOR,
    SESSION_HEADER,
    bearer,
)

if TYPE_CHECKING:
    SessionCall: TypeAlias = grpc.aio.StreamStreamCall[
        agent_pb2.ClientMessage, agent_pb2.AgentMessage
    ]

log = logging.getLogger(__name__)

_RETRY_DELAY = 0.2


class _Refused(Exception):
    """The handshake's call ended with this status."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details


# What grpc says when a call ended on our side before the server's status came.
CORE_RACE = "Internal error from Core"
CORE_RACE_RETRIES = 3


def _lost_race(code: grpc.StatusCode, details: str, races: int) -> bool:
    """Whether a refused handshake is worth asking again because our Hello's write lost a
    race with the agent's refusal (a wrong token): the call then ended on our side with
    grpc's own INTERNAL, not the agent's status (seen under load in the test suite)."""
    return code == grpc.StatusCode.INTERNAL and details == CORE_RACE and races < CORE_RACE_RETRIES


def _map_handshake_error(code: grpc.StatusCode, details: str) -> AgentError | None:
    """The error for a refused handshake; None for UNAVAILABLE (worth retrying)."""
    if code == grpc.StatusCode.UNAVAILABLE:
        return None
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return AgentAuthFailed(details)
    if code == grpc.StatusCode.FAILED_PRECONDITION:
        return ProtocolMismatch(details)
    if code == grpc.StatusCode.NOT_FOUND:
        return TargetNotFound(details)
    return AgentError(f"the agent refused the session: {code.name}: {details}")


class AgentClient:
    """Use `await AgentClient.connect(...)`. Watch `lost` (its result is a message for the
    user) while the program runs; `close()` ends the session, and is never reported as lost."""

    def __init__(
        self,
        address: str,
        token: str,
        channel: grpc.aio.Channel,
        call: SessionCall,
        hello: agent_pb2.HelloReply,
        ping_interval: float,
        pong_timeout: float,
        target_probes: tuple[ProbeSpec, ...] = (),
    ) -> None:
        self.address = address
        self.hello = hello
        # The target's kubelet probes (Kubernetes targets: from whoever resolved it).
        self.target_probes = target_probes
        self._token = token
        self._channel = channel
        self._call = call
        self._stub = agent_pb2_grpc.AgentStub(channel)
        self._ping_interval = ping_interval
        self._pong_timeout = pong_timeout
        loop = asyncio.get_running_loop()
        self.lost: asyncio.Future[str] = loop.create_future()
        self._write_lock = asyncio.Lock()
        self._last_pong = loop.time()
        self._closing = False
        self._reader = loop.create_task(self._read_loop())
        self._pinger = loop.create_task(self._ping_loop())

    @classmethod
    async def connect(
        cls,
        address: str,
        token: str,
        target_pid: int | None,
        *,
        timeout: float,
        ping_interval: float = 1.0,
        pong_timeout: float | None = None,
        agent_ping_timeout: float | None = None,
        container_id: str | None = None,
        protocol_version: tuple[int, int] = (PROTOCOL_MAJOR, PROTOCOL_MINOR),
        target_probes: tuple[ProbeSpec, ...] = (),
    ) -> AgentClient:
        """Open a session and complete the Hello handshake, retrying while the agent is not
        reachable yet, for at most `timeout` seconds.

        target_pid / container_id: the target (neither: targetless). pong_timeout: declare the
        agent lost after this long without a Pong (default 5 ping intervals).
        agent_ping_timeout: how long the agent waits for our pings before ending the session
        (None: the agent's default). protocol_version: only tests change it.
        """
        target = agent_pb2.Target()
        if target_pid is not None:
            target.pid = target_pid
        elif container_id is not None:
            target.container_id = container_id
        hello = agent_pb2.ClientMessage(
            hello=agent_pb2.Hello(
                protocol=agent_pb2.ProtocolVersion(
                    major=protocol_version[0], minor=protocol_version[1]
                ),
                client_version=mirrord.__version__,
                target=target,
                ping_timeout_ms=int((agent_ping_timeout or 0) * 1000),
            )
        )
        metadata = ((AUTH_HEADER, bearer(token)),)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        last_error = "no answer"
        core_races = 0
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise AgentUnreachable(address, timeout, last_error)
            channel = grpc.aio.insecure_channel(address)
            # Without a request iterator, grpc.aio lets us write() (the stubs do not know).
            call: SessionCall = agent_pb2_grpc.AgentStub(channel).Session(  # type: ignore[call-arg]
                metadata=metadata
            )
            try:
                reply = await asyncio.wait_for(cls._handshake(call, hello), remaining)
            except (grpc.aio.AioRpcError, _Refused) as e:
                await channel.close(None)
                code, details = (
                    (e.code, e.details) if isinstance(e, _Refused) else (e.code(), e.details())
                )
                error = _map_handshake_error(code, details or "")
                if _lost_race(code, details or "", core_races):
                    core_races += 1
                    error = None
                if error is not None:
                    raise error from None
                last_error = details or code.name
                await asyncio.sleep(min(_RETRY_DELAY, max(0.0, deadline - loop.time())))
                continue
            except TimeoutError:
                call.cancel()
                await channel.close(None)
                raise AgentUnreachable(
                    address, timeout, f"no HelloReply from the agent ({last_error})"
                ) from None
            except BaseException:
                call.cancel()
                await channel.close(None)
                raise
            if reply is None:
                await channel.close(None)
                raise AgentError(f"the agent at {address} closed the session without a reply")
            log.info(
                "agent session %s: target pid %s, hostname %r",
                reply.session_id,
                reply.target_pid or "(targetless)",
                reply.hostname,
            )
            return cls(
                address,
                token,
                channel,
                call,
                reply,
                ping_interval,
                pong_timeout if pong_timeout is not None else 5 * ping_interval,
                target_probes,
            )

    @staticmethod
    async def _handshake(
        call: SessionCall, hello: agent_pb2.ClientMessage
    ) -> agent_pb2.HelloReply | None:
        try:
            await call.write(hello)
        except grpc.aio.AioRpcError as e:
            # The agent may refuse (a wrong token) before our hello is written; the write
            # then races its status and may say INTERNAL: the status it sent is the answer.
            code = await call.code()
            if code is None or code == grpc.StatusCode.OK:
                raise
            raise _Refused(code, await call.details() or e.details() or "") from None
        # read() raises AioRpcError for an error status; EOF means the call ended OK.
        msg = await call.read()
        if msg is EOF:
            return None
        assert isinstance(msg, agent_pb2.AgentMessage)
        if msg.WhichOneof("msg") != "hello":
            raise AgentError(f"the agent answered Hello with {msg.WhichOneof('msg')}")
        return msg.hello

    @property
    def channel(self) -> grpc.aio.Channel:
        """The agent channel, for feature clients' stubs (files, network…)."""
        return self._channel

    def metadata(self) -> tuple[tuple[str, str], ...]:
        """Token and session metadata every session-scoped call must carry."""
        return self._metadata()

    def _metadata(self) -> tuple[tuple[str, str], ...]:
        return (
            (AUTH_HEADER, bearer(self._token)),
            (SESSION_HEADER, self.hello.session_id),
        )

    def _set_lost(self, message: str) -> None:
        if self._closing or self.lost.done():
            return
        log.debug("%s", message)  # whoever owns the session tells the user, once
        self.lost.set_result(message)

    def lost_error(self) -> AgentLost | None:
        """The loss as an exception to raise, or None while the session is fine."""
        return AgentLost(self.lost.result()) if self.lost.done() else None

    async def _read_loop(self) -> None:
        try:
            while True:
                msg = await self._call.read()
                if msg is EOF:
                    self._set_lost(
                        f"the agent at {self.address} ended the session without a reason"
                    )
                    return
                assert isinstance(msg, agent_pb2.AgentMessage)
                kind = msg.WhichOneof("msg")
                if kind == "pong":
                    self._last_pong = asyncio.get_running_loop().time()
                elif kind == "bye":
                    self._set_lost(f"the agent ended the session: {msg.bye.reason}")
        except grpc.aio.AioRpcError as e:
            self._set_lost(
                f"lost the connection to the agent at {self.address}: "
                f"{e.code().name}: {e.details()}"
            )
        except asyncio.CancelledError:
            raise
        except Exception as e:
            self._set_lost(f"the session with the agent at {self.address} failed: {e!r}")

    async def _ping_loop(self) -> None:
        loop = asyncio.get_running_loop()
        seq = 0
        while not self.lost.done():
            await asyncio.sleep(self._ping_interval)
            silent = loop.time() - self._last_pong
            if silent > self._pong_timeout:
                self._set_lost(
                    f"the agent at {self.address} has not answered pings for {silent:.1f}s"
                )
                self._call.cancel()
                return
            seq += 1
            try:
                await self._write(agent_pb2.ClientMessage(ping=agent_pb2.Ping(seq=seq)))
            except (grpc.aio.AioRpcError, asyncio.InvalidStateError) as e:
                # The read loop usually reports the real cause first; this is the fallback.
                self._set_lost(f"cannot send to the agent at {self.address}: {e}")
                return

    async def _write(self, msg: agent_pb2.ClientMessage) -> None:
        # grpc.aio streams allow one pending write at a time.
        async with self._write_lock:
            await self._call.write(msg)

    async def get_env(self, timeout: float = 10.0) -> dict[str, str]:
        """The target's environment. For repeated names the first wins, as getenv() does."""
        if (lost := self.lost_error()) is not None:
            raise lost
        try:
            reply = await self._stub.GetEnv(
                agent_pb2.GetEnvRequest(), metadata=self._metadata(), timeout=timeout
            )
        except grpc.aio.AioRpcError as e:
            raise self._call_error("GetEnv", e) from None
        env: dict[str, str] = {}
        for var in reply.vars:
            env.setdefault(var.name, var.value)
        return env

    def _call_error(self, method: str, e: grpc.aio.AioRpcError) -> AgentError:
        code, details = e.code(), e.details() or ""
        if code == grpc.StatusCode.UNAUTHENTICATED:
            return AgentAuthFailed(details)
        if code == grpc.StatusCode.NOT_FOUND:
            return TargetNotFound(details)
        if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED):
            return AgentLost(f"{method}: the agent at {self.address} is unreachable: {details}")
        return AgentError(f"{method} failed: {code.name}: {details}")

    async def close(self, reason: str = "the client is done", timeout: float = 2.0) -> None:
        """Say Bye, wait (bounded) until the agent has ended the session and run its cleanups,
        then close the channel. Idempotent."""
        if self._closing:
            return
        self._closing = True
        self._pinger.cancel()
        if not self.lost.done():
            try:
                await asyncio.wait_for(self._say_bye(reason), timeout)
                # The stream ends only after the agent's cleanups ran.
                await asyncio.wait_for(asyncio.shield(self._reader), timeout)
            except (grpc.aio.AioRpcError, asyncio.InvalidStateError, TimeoutError) as e:
                log.debug("closing the session uncleanly: %r", e)
        self._reader.cancel()
        self._call.cancel()
        await self._channel.close(None)

    async def _say_bye(self, reason: str) -> None:
        await self._write(agent_pb2.ClientMessage(bye=agent_pb2.Bye(reason=reason)))
        async with self._write_lock:
            await self._call.done_writing()

    async def __aenter__(self) -> AgentClient:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()
