"""Idle Connection streams: the client keeps a few streams open per subscription and the
agent hands each new connection to one of them, details and first bytes in the stream's
first message. Both sides fall back to announce + open when the other does not know them."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from mirrord.agent.incoming import service as incoming_service
from mirrord.agent.incoming.subscription import Announcement
from mirrord.agent.incoming.subscription import Subscription as AgentSubscription
from mirrord.agent.server import AgentServer
from mirrord.client import AgentClient
from mirrord.features.incoming.client import IDLE_STREAMS, IncomingClient, Subscription
from mirrord.testpod import Pod
from tests.features.incoming.incoming_helpers import (
    LOCAL_ANSWER,
    TOKEN,
    answer_requests,
    mirrord_rules,
    request,
    send_requests_async,
)

pytestmark = pytest.mark.root

# Run in the client pod: connect, wait for the server's greeting, answer it, print it.
SERVER_FIRST_CLIENT = r"""
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=20)
greeting = s.recv(100)
s.sendall(b"bye")
print(greeting.decode())
"""


@pytest.fixture
def idle_waiters(monkeypatch: pytest.MonkeyPatch) -> Callable[[int], Awaitable[None]]:
    """`await idle_waiters(n)`: until the (in-process) agent holds n idle streams waiting
    for a connection, so that the next connection deterministically takes one (the client
    opens its streams in the background)."""
    waiters: list[asyncio.Future[Announcement]] = []
    registered = asyncio.Event()
    original = AgentSubscription.wait_assigned

    def wait_assigned(self: AgentSubscription) -> asyncio.Future[Announcement] | None:
        waiter = original(self)
        if waiter is not None:
            waiters.append(waiter)
            registered.set()
        return waiter

    monkeypatch.setattr(AgentSubscription, "wait_assigned", wait_assigned)

    async def until(n: int) -> None:
        while sum(1 for w in waiters if not w.done()) < n:
            registered.clear()
            await registered.wait()

    return until


@pytest.fixture
def streams_opened(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the Connection streams the (in-process) agent is asked to open (request it
    before the agent: the servicer's methods are bound when it is registered)."""
    opened: list[int] = []
    original = incoming_service.IncomingService.Connection

    async def connection(self: incoming_service.IncomingService, *args: Any) -> Any:
        opened.append(1)
        async for msg in original(self, *args):
            yield msg

    monkeypatch.setattr(incoming_service.IncomingService, "Connection", connection)
    return opened


async def _agent(target: Pod, monkeypatch: pytest.MonkeyPatch, **kind: bool) -> AgentServer:
    monkeypatch.setattr(
        incoming_service,
        "IncomingService",
        functools.partial(incoming_service.IncomingService, **kind),
    )
    server = AgentServer(TOKEN, listen="127.0.0.1:0", ping_timeout=2.0)
    await server.start()
    return server


@pytest.fixture
async def old_agent(target: Pod, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[AgentServer]:
    """An agent that predates idle streams: no subscription_id, so none are opened."""
    server = await _agent(target, monkeypatch, idle_streams=False)
    yield server
    await server.stop(grace=1.0)
    assert mirrord_rules(target) == []


@pytest.fixture
async def agent_without_reuse(
    target: Pod, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[AgentServer]:
    """An agent with idle streams that predates their reuse: one connection per stream."""
    server = await _agent(target, monkeypatch, reuse_streams=False)
    yield server
    await server.stop(grace=1.0)
    assert mirrord_rules(target) == []


async def _steal_sequentially(
    sub: Subscription,
    client_pod: Pod,
    target: Pod,
    count: int,
    idle_waiters: Callable[[int], Awaitable[None]] | None = None,
) -> list[bool]:
    """`count` connections one after another, each answered locally; whether each one came
    on an idle stream (with idle_waiters: each waits for one to be ready)."""
    preopened: list[bool] = []
    for i in range(count):
        if idle_waiters is not None:
            await idle_waiters(1)
        seen: list[bytes] = []

        async def local_program(seen: list[bytes]) -> None:
            conn = await sub.accept()
            assert conn.mode == "steal"
            assert conn.remote[0] == client_pod.address
            assert conn.original_destination == (target.address, 8080)
            preopened.append(conn.preopened)
            await answer_requests(conn, seen)

        consumer = asyncio.ensure_future(local_program(seen))
        req = request(f"/{i}", {"Connection": "close"})
        answers = await send_requests_async(client_pod, target.address, 8080, [req])
        assert answers == [LOCAL_ANSWER.decode()]
        await asyncio.wait_for(consumer, 10)
        assert seen[0].startswith(f"GET /{i} HTTP/1.1\r\n".encode())
    return preopened


async def test_connections_come_on_idle_streams(
    session: AgentClient,
    target: Pod,
    client_pod: Pod,
    idle_waiters: Callable[[int], Awaitable[None]],
) -> None:
    sub = await IncomingClient(session).subscribe(8080, "steal")
    # More connections than idle streams: used streams are replaced.
    preopened = await _steal_sequentially(sub, client_pod, target, IDLE_STREAMS * 2, idle_waiters)
    assert preopened == [True] * (IDLE_STREAMS * 2)
    await sub.close()


async def test_streams_carry_one_connection_after_another(
    streams_opened: list[int],
    session: AgentClient,
    target: Pod,
    client_pod: Pod,
    idle_waiters: Callable[[int], Awaitable[None]],
) -> None:
    sub = await IncomingClient(session).subscribe(8080, "steal")
    await idle_waiters(IDLE_STREAMS)
    assert len(streams_opened) == IDLE_STREAMS
    # Sequential connections: each stream comes back to the pool when its connection is
    # over (the agent's `done`), so no new stream is opened for them.
    count = IDLE_STREAMS * 3
    preopened = await _steal_sequentially(sub, client_pod, target, count, idle_waiters)
    assert preopened == [True] * count
    assert len(streams_opened) == IDLE_STREAMS
    await sub.close()


async def test_mirrored_connections_reuse_streams_too(
    streams_opened: list[int],
    session: AgentClient,
    target: Pod,
    client_pod: Pod,
    idle_waiters: Callable[[int], Awaitable[None]],
) -> None:
    sub = await IncomingClient(session).subscribe(8080, "mirror")
    copies: list[bytes] = []

    async def local_program() -> None:
        while True:
            conn = await sub.accept()
            data = b""
            while chunk := await conn.reader.read(65536):
                data += chunk
            copies.append(data)
            await conn.close()

    consumer = asyncio.ensure_future(local_program())
    for i in range(IDLE_STREAMS * 2):
        await idle_waiters(1)
        req = request(f"/m{i}", {"Connection": "close"})
        answers = await send_requests_async(client_pod, target.address, 8080, [req])
        assert answers[0].endswith("pod")  # the pod's server answered
    for _ in range(100):
        if len(copies) == IDLE_STREAMS * 2:
            break
        await asyncio.sleep(0.05)
    assert [c.split(b" ")[1] for c in copies] == [
        f"/m{i}".encode() for i in range(IDLE_STREAMS * 2)
    ]
    assert len(streams_opened) == IDLE_STREAMS
    consumer.cancel()
    await sub.close()


async def test_an_agent_without_stream_reuse_gets_new_streams(
    streams_opened: list[int],
    agent_without_reuse: AgentServer,
    target: Pod,
    client_pod: Pod,
    idle_waiters: Callable[[int], Awaitable[None]],
) -> None:
    client = await AgentClient.connect(
        agent_without_reuse.address, TOKEN, target.main_pid, timeout=10.0, agent_ping_timeout=2.0
    )
    try:
        sub = await IncomingClient(client).subscribe(8080, "steal")
        count = IDLE_STREAMS * 2
        preopened = await _steal_sequentially(sub, client_pod, target, count, idle_waiters)
        assert preopened == [True] * count
        # Each stream ended with its connection (reused, IDLE_STREAMS would have been
        # enough); replacements kept the pool going.
        assert len(streams_opened) >= count
        await sub.close()
    finally:
        await client.close()


async def test_a_client_without_idle_streams_gets_announced_connections(
    session: AgentClient, target: Pod, client_pod: Pod
) -> None:
    sub = await IncomingClient(session, idle_streams=0).subscribe(8080, "steal")
    assert await _steal_sequentially(sub, client_pod, target, 3) == [False] * 3
    await sub.close()


async def test_an_agent_without_idle_streams_announces_connections(
    old_agent: AgentServer, target: Pod, client_pod: Pod
) -> None:
    client = await AgentClient.connect(
        old_agent.address, TOKEN, target.main_pid, timeout=10.0, agent_ping_timeout=2.0
    )
    try:
        sub = await IncomingClient(client).subscribe(8080, "steal")
        assert await _steal_sequentially(sub, client_pod, target, 3) == [False] * 3
        await sub.close()
    finally:
        await client.close()


async def test_more_simultaneous_connections_than_idle_streams(
    session: AgentClient, target: Pod, client_pod: Pod
) -> None:
    sub = await IncomingClient(session).subscribe(8080, "steal")
    count = IDLE_STREAMS * 3
    seen: list[bytes] = []

    async def local_program() -> None:
        answering = [asyncio.ensure_future(answer_requests(await sub.accept(), seen))]
        for _ in range(count - 1):
            answering.append(asyncio.ensure_future(answer_requests(await sub.accept(), seen)))
        await asyncio.gather(*answering)

    consumer = asyncio.ensure_future(local_program())
    answers = await asyncio.gather(
        *(
            send_requests_async(
                client_pod, target.address, 8080, [request(f"/{i}", {"Connection": "close"})]
            )
            for i in range(count)
        )
    )
    assert answers == [[LOCAL_ANSWER.decode()]] * count
    await asyncio.wait_for(consumer, 10)
    assert sorted(s.split(b" ")[1] for s in seen) == sorted(f"/{i}".encode() for i in range(count))
    await sub.close()


async def test_a_peer_waiting_for_the_server_to_speak_first(
    session: AgentClient,
    target: Pod,
    client_pod: Pod,
    idle_waiters: Callable[[int], Awaitable[None]],
) -> None:
    sub = await IncomingClient(session).subscribe(8080, "steal")
    await idle_waiters(1)

    async def local_program() -> bytes:
        conn = await sub.accept()
        assert conn.preopened
        await conn.write(b"hello")
        got = b""
        while data := await conn.reader.read(100):
            got += data
        await conn.close()
        return got

    consumer = asyncio.ensure_future(local_program())
    done = await asyncio.to_thread(
        client_pod.run,
        ["python3", "-c", SERVER_FIRST_CLIENT, target.address, "8080"],
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.decode().strip() == "hello"
    assert await asyncio.wait_for(consumer, 10) == b"bye"
    await sub.close()


async def test_idle_streams_end_with_the_subscription(
    session: AgentClient,
    target: Pod,
    client_pod: Pod,
    idle_waiters: Callable[[int], Awaitable[None]],
) -> None:
    incoming = IncomingClient(session)
    sub = await incoming.subscribe(8080, "steal")
    await sub.close()
    # The port is free again at once, and a new subscription's streams serve it.
    sub = await incoming.subscribe(8080, "steal")
    assert await _steal_sequentially(sub, client_pod, target, 2, idle_waiters) == [True, True]
    await sub.close()
