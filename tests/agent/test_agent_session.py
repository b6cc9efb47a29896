"""The agent in-process, with real target processes in their own namespaces (root)."""

import asyncio
import os
from collections.abc import Callable

import grpc
import grpc.aio
import pytest

from mirrord.agent.namespaces import NamespaceWorker
from mirrord.agent.server import AgentServer
from mirrord.agent.session import AgentSession
from mirrord.client import (
    AgentAuthFailed,
    AgentClient,
    AgentUnreachable,
    ProtocolMismatch,
    TargetNotFound,
)
from mirrord.v1 import agent_pb2, agent_pb2_grpc
from mirrord.wire.protocol import PROTOCOL_MAJOR, PROTOCOL_MINOR
from tests.agent.agent_helpers import TOKEN, Target


async def connect(agent: AgentServer, pid: int | None, **kw: object) -> AgentClient:
    return await AgentClient.connect(agent.address, TOKEN, pid, timeout=5.0, **kw)  # type: ignore[arg-type]


def track_cleanup(agent: AgentServer, session_id: str) -> asyncio.Event:
    """Register a cleanup on the agent's side of the session; the event says it ran."""
    ran = asyncio.Event()
    session = agent.registry.get(session_id)
    assert session is not None
    session.on_close(ran.set, "test marker")
    return ran


async def wait(event: asyncio.Event, timeout: float = 5.0) -> None:
    await asyncio.wait_for(event.wait(), timeout)


def open_session(
    channel: grpc.aio.Channel, md: tuple[tuple[str, str], ...]
) -> "grpc.aio.StreamStreamCall[agent_pb2.ClientMessage, agent_pb2.AgentMessage]":
    # grpc.aio allows call.write() when no request iterator is given; the stubs do not know.
    return agent_pb2_grpc.AgentStub(channel).Session(metadata=md)  # type: ignore[call-arg]


def hello_msg(pid: int | None, major: int = PROTOCOL_MAJOR) -> agent_pb2.ClientMessage:
    target = agent_pb2.Target(pid=pid) if pid is not None else agent_pb2.Target()
    return agent_pb2.ClientMessage(
        hello=agent_pb2.Hello(
            protocol=agent_pb2.ProtocolVersion(major=major, minor=PROTOCOL_MINOR), target=target
        )
    )


# --- handshake and env ---------------------------------------------------------------


async def test_handshake_enters_target_namespaces(agent: AgentServer, target: Target) -> None:
    client = await connect(agent, target.pid)
    try:
        target_netns = os.stat(f"/proc/{target.pid}/ns/net").st_ino
        assert client.hello.target_pid == target.pid
        assert client.hello.hostname == "pod-x"
        assert client.hello.net_ns_inode == target_netns
        assert client.hello.net_ns_inode != os.stat("/proc/self/ns/net").st_ino
        assert client.hello.protocol.major == PROTOCOL_MAJOR
        assert client.hello.session_id
        # The agent itself (its other threads) stays in the host's namespaces.
        assert os.uname().nodename != "pod-x"
    finally:
        await client.close()


async def test_get_env_is_the_targets_env_exactly(agent: AgentServer, target: Target) -> None:
    async with await connect(agent, target.pid) as client:
        assert await client.get_env() == target.env
        assert list((await client.get_env()).keys()) == list(target.env.keys())  # order kept


async def test_targetless_uses_agents_namespaces(agent: AgentServer, root: None) -> None:
    async with await connect(agent, None) as client:
        assert client.hello.target_pid == 0
        assert client.hello.hostname == os.uname().nodename
        assert client.hello.net_ns_inode == os.stat("/proc/self/ns/net").st_ino
        env = await client.get_env()
        assert env.get("PATH") == os.environ.get("PATH")


async def test_two_sessions_are_independent(agent: AgentServer, target: Target) -> None:
    async with await connect(agent, target.pid) as a, await connect(agent, None) as b:
        assert a.hello.session_id != b.hello.session_id
        assert a.hello.hostname == "pod-x"
        assert b.hello.hostname == os.uname().nodename
        assert len(agent.registry) == 2
    assert len(agent.registry) == 0


# --- refusals ------------------------------------------------------------------------


async def test_wrong_token_refused(agent: AgentServer, target: Target) -> None:
    with pytest.raises(AgentAuthFailed, match="refused our token"):
        await AgentClient.connect(agent.address, "wrong", target.pid, timeout=5.0)


async def test_missing_token_unauthenticated(agent: AgentServer, target: Target) -> None:
    async with grpc.aio.insecure_channel(agent.address) as channel:
        stub = agent_pb2_grpc.AgentStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await stub.GetEnv(agent_pb2.GetEnvRequest())
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "authorization" in (e.value.details() or "")
        call = open_session(channel, ())
        # The refusal may already be there when the hello is written: either call raises,
        # and a write that loses that race says only grpc's "Internal error from Core";
        # the call's own status is the refusal.
        with pytest.raises(grpc.aio.AioRpcError):
            await call.write(hello_msg(target.pid))
            await call.read()
        assert await call.code() == grpc.StatusCode.UNAUTHENTICATED
    assert len(agent.registry) == 0


async def test_protocol_mismatch_names_both_versions(agent: AgentServer, target: Target) -> None:
    with pytest.raises(ProtocolMismatch) as e:
        await connect(agent, target.pid, protocol_version=(PROTOCOL_MAJOR + 1, 3))
    assert f"{PROTOCOL_MAJOR + 1}.3" in str(e.value)
    assert f"{PROTOCOL_MAJOR}.{PROTOCOL_MINOR}" in str(e.value)


async def test_unknown_pid_not_found(agent: AgentServer, root: None) -> None:
    with pytest.raises(TargetNotFound, match="4194303"):
        await connect(agent, 4194303)  # above any pid_max in use


async def test_unknown_container_not_found(agent: AgentServer, root: None) -> None:
    with pytest.raises(TargetNotFound, match="no process of container"):
        await connect(agent, None, container_id="containerd://" + "ab" * 32)


async def test_get_env_needs_a_live_session(agent: AgentServer) -> None:
    md = (("authorization", f"Bearer {TOKEN}"), ("mirrord-session", "nope"))
    async with grpc.aio.insecure_channel(agent.address) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await agent_pb2_grpc.AgentStub(channel).GetEnv(agent_pb2.GetEnvRequest(), metadata=md)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND


async def test_unreachable_agent_is_clear(root: None) -> None:
    import socket

    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(AgentUnreachable, match=rf"127\.0\.0\.1:{port} within 0\.5s"):
        await AgentClient.connect(f"127.0.0.1:{port}", TOKEN, None, timeout=0.5)


# --- session end and cleanup -----------------------------------------------------------


async def test_cleanup_on_bye(agent: AgentServer, target: Target) -> None:
    client = await connect(agent, target.pid)
    ran = track_cleanup(agent, client.hello.session_id)
    await client.close()
    assert ran.is_set()  # close() waits for the agent to end the stream, after cleanup
    await client.close()  # idempotent
    assert not client.lost.done()  # our own close is not a loss
    assert len(agent.registry) == 0


async def test_cleanup_on_stream_end(agent: AgentServer, target: Target) -> None:
    md = (("authorization", f"Bearer {TOKEN}"),)
    async with grpc.aio.insecure_channel(agent.address) as channel:
        call = open_session(channel, md)
        await call.write(hello_msg(target.pid))
        reply = await call.read()
        assert isinstance(reply, agent_pb2.AgentMessage)
        ran = track_cleanup(agent, reply.hello.session_id)
        await call.done_writing()  # half-close, no Bye
        await wait(ran)
        assert await call.code() == grpc.StatusCode.OK


async def test_cleanup_on_client_cancel(agent: AgentServer, target: Target) -> None:
    md = (("authorization", f"Bearer {TOKEN}"),)
    async with grpc.aio.insecure_channel(agent.address) as channel:
        call = open_session(channel, md)
        await call.write(hello_msg(target.pid))
        reply = await call.read()
        assert isinstance(reply, agent_pb2.AgentMessage)
        ran = track_cleanup(agent, reply.hello.session_id)
        call.cancel()
        await wait(ran)


async def test_cleanup_on_ping_timeout(agent: AgentServer, target: Target) -> None:
    # The client promises pings every 0.4s at most but sends them every 30s.
    client = await connect(agent, target.pid, agent_ping_timeout=0.4, ping_interval=30.0)
    ran = track_cleanup(agent, client.hello.session_id)
    await wait(ran)
    message = await asyncio.wait_for(client.lost, 5.0)
    assert "ping timeout" in message
    await client.close()


async def test_pings_keep_the_session_alive(agent: AgentServer, target: Target) -> None:
    client = await connect(agent, target.pid, agent_ping_timeout=0.5, ping_interval=0.1)
    await asyncio.sleep(1.5)
    assert not client.lost.done()
    assert await client.get_env() == target.env
    await client.close()


async def test_target_death_ends_session(agent: AgentServer, target: Target) -> None:
    client = await connect(agent, target.pid)
    ran = track_cleanup(agent, client.hello.session_id)
    target.process.kill()
    target.process.wait()
    message = await asyncio.wait_for(client.lost, 5.0)
    assert f"target process {target.pid} exited" in message
    await wait(ran)
    await client.close()


async def test_agent_stop_ends_sessions(agent: AgentServer, target: Target) -> None:
    client = await connect(agent, target.pid)
    ran = track_cleanup(agent, client.hello.session_id)
    await agent.stop("maintenance")
    await wait(ran)
    assert "maintenance" in await asyncio.wait_for(client.lost, 5.0)
    await client.close()


# --- the cleanup stack itself --------------------------------------------------------


async def test_cleanups_run_once_in_reverse_order_despite_errors(root: None) -> None:
    worker = NamespaceWorker(None, "t")
    await worker.start()
    session = AgentSession(None, worker, 1.0)
    order: list[str] = []

    def add(name: str) -> Callable[[], None]:
        return lambda: order.append(name)

    async def async_cleanup() -> None:
        order.append("async")

    def boom() -> None:
        raise RuntimeError("cleanup failed")

    session.on_close(add("first"))
    session.on_close(boom)
    session.on_close(async_cleanup)
    session.on_close(add("last"))
    await session.close()
    await session.close()
    assert order == ["last", "async", "first"]
    assert worker.closed  # registered first, so shut down last
    with pytest.raises(RuntimeError):
        session.on_close(add("late"))


async def test_worker_runs_jobs_inside_the_target(target: Target) -> None:
    worker = NamespaceWorker(target.pid, "t")
    entered = await worker.start()
    try:
        assert entered.hostname == "pod-x"
        inode = await worker.run(lambda: os.stat("/proc/thread-self/ns/net").st_ino)
        assert inode == os.stat(f"/proc/{target.pid}/ns/net").st_ino
        assert os.stat("/proc/thread-self/ns/net").st_ino != inode  # not this thread
    finally:
        worker.shutdown()
