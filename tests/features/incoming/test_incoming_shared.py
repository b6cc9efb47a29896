"""#13: many developers on one target: several sessions of one agent take the same port of
the same pod at once, each with its own HTTP filter (HTTP/1.1 per request, HTTP/2 per
stream), mirrors beside them; unmatched requests reach the pod; a session that ends or
dies frees only its own share. Real agent, real iptables, real servers in real pods."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator

import pytest

from mirrord.agent.server import AgentServer
from mirrord.client import AgentClient
from mirrord.features.incoming.client import (
    HttpFilterSpec,
    IncomingClient,
    PortTaken,
    Subscription,
)
from mirrord.testpod import Network, Pod
from tests.features.incoming.h2_helpers import GRPC_SERVER, grpc_client, local_server, relay_all
from tests.features.incoming.incoming_helpers import (
    TOKEN,
    answer_all,
    answer_requests,
    mirrord_rules,
    request,
    send_requests_async,
)

pytestmark = pytest.mark.root


@contextlib.asynccontextmanager
async def sessions(agent: AgentServer, target: Pod, n: int) -> AsyncIterator[list[AgentClient]]:
    clients = [
        await AgentClient.connect(agent.address, TOKEN, target.main_pid, timeout=10.0)
        for _ in range(n)
    ]
    try:
        yield clients
    finally:
        for c in clients:
            await c.close()


def user(name: str) -> HttpFilterSpec:
    return HttpFilterSpec(header_filter=f"^x-user: {name}$")


def bodies(answers: list[str]) -> list[str]:
    return [a.rpartition("\r\n\r\n")[2] for a in answers]


def pod_paths(target: Pod) -> list[str]:
    return [line.split()[2] for line in target.read_log().splitlines() if line.startswith("REQ")]


async def test_two_sessions_split_one_keep_alive_connection(
    agent: AgentServer, target: Pod, client_pod: Pod
) -> None:
    async with sessions(agent, target, 2) as (a, b):
        sub_a = await IncomingClient(a).subscribe(8080, "steal", user("a"))
        sub_b = await IncomingClient(b).subscribe(8080, "steal", user("b"))
        seen_a: list[bytes] = []
        seen_b: list[bytes] = []
        serving = [
            asyncio.ensure_future(answer_all(sub_a, seen_a, b"A")),
            asyncio.ensure_future(answer_all(sub_b, seen_b, b"B")),
        ]
        users = ["a", "b", None, "b", "a", None]
        reqs = [request(f"/{i}", {"X-User": u} if u else {}) for i, u in enumerate(users)]
        answers = await send_requests_async(client_pod, target.address, 8080, reqs)
        assert bodies(answers) == ["A", "B", "pod", "B", "A", "pod"]
        assert pod_paths(target) == ["/2", "/5"]
        assert [h.split(b"\r\n")[0] for h in seen_a] == [b"GET /0 HTTP/1.1", b"GET /4 HTTP/1.1"]
        assert [h.split(b"\r\n")[0] for h in seen_b] == [b"GET /1 HTTP/1.1", b"GET /3 HTTP/1.1"]
        # One redirect (PREROUTING and the pod's loopback), not one per session.
        assert sum("mirrord:steal:8080" in r for r in mirrord_rules(target)) == 2
        for t in serving:
            t.cancel()
        await sub_a.close()
        await sub_b.close()


async def test_five_sessions_on_concurrent_keep_alive_connections(
    agent: AgentServer, target: Pod, client_pod: Pod
) -> None:
    async with sessions(agent, target, 5) as clients:
        subs = [
            await IncomingClient(c).subscribe(8080, "steal", user(f"u{i}"))
            for i, c in enumerate(clients)
        ]
        seen: list[list[bytes]] = [[] for _ in subs]
        serving = [
            asyncio.ensure_future(answer_all(s, seen[i], f"S{i}".encode()))
            for i, s in enumerate(subs)
        ]
        conns = []
        for c in range(3):
            names = [f"u{(c + i) % 6}" for i in range(12)]  # u5 matches no one: the pod
            conns.append([request(f"/{c}-{i}", {"X-User": n}) for i, n in enumerate(names)])
        results = await asyncio.gather(
            *(send_requests_async(client_pod, target.address, 8080, r) for r in conns)
        )
        for c, answers in enumerate(results):
            expected = ["pod" if (c + i) % 6 == 5 else f"S{(c + i) % 6}" for i in range(12)]
            assert bodies(answers) == expected
        assert sorted(pod_paths(target)) == sorted(
            f"/{c}-{i}" for c in range(3) for i in range(12) if (c + i) % 6 == 5
        )
        assert [len(s) for s in seen] == [6, 6, 6, 6, 6]
        for t in serving:
            t.cancel()
        for s in subs:
            await s.close()


async def test_a_session_that_dies_frees_only_its_share(
    agent: AgentServer, target: Pod, client_pod: Pod
) -> None:
    """Session A's client is cut off (its gRPC channel dropped, as when mirrord is
    SIGKILLed) while B answers a slow request: B's answer arrives whole, the redirect
    stays for B, A's requests now reach the pod; when B ends, no rule is left."""
    a = await AgentClient.connect(agent.address, TOKEN, target.main_pid, timeout=10.0)
    async with sessions(agent, target, 1) as (b,):
        sub_a = await IncomingClient(a).subscribe(8080, "steal", user("a"))
        sub_b = await IncomingClient(b).subscribe(8080, "steal", user("b"))
        seen_a: list[bytes] = []
        serving_a = asyncio.ensure_future(answer_all(sub_a, seen_a, b"A"))
        answered = asyncio.Event()

        async def slow_b() -> None:
            conn = await sub_b.accept()
            head = await conn.reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"GET /slow")
            await answered.wait()  # A dies meanwhile
            await conn.write(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nB-slow")
            await asyncio.gather(answer_requests(conn, [], b"B"), answer_all(sub_b, [], b"B"))

        serving_b = asyncio.ensure_future(slow_b())
        assert bodies(
            await send_requests_async(
                client_pod, target.address, 8080, [request("/a1", {"X-User": "a"})]
            )
        ) == ["A"]
        slow = asyncio.ensure_future(
            send_requests_async(
                client_pod,
                target.address,
                8080,
                [request("/slow", {"X-User": "b"}), request("/after", {"X-User": "a"})],
            )
        )
        await asyncio.sleep(0.5)
        serving_a.cancel()
        await a._channel.close()  # cut off, no goodbye
        for _ in range(200):  # the agent sees the stream drop and ends A's session
            if len(agent.registry) == 1:
                break
            await asyncio.sleep(0.05)
        assert len(agent.registry) == 1
        answered.set()
        # B's slow answer whole; A is gone, so its request went to the pod.
        assert bodies(await asyncio.wait_for(slow, 30)) == ["B-slow", "pod"]
        assert any("mirrord:steal:8080" in r for r in mirrord_rules(target))
        after = await send_requests_async(
            client_pod, target.address, 8080, [request("/b2", {"X-User": "b"})]
        )
        assert bodies(after) == ["B"]
        serving_b.cancel()
        await sub_b.close()
    with contextlib.suppress(Exception):
        await a.close()
    assert mirrord_rules(target) == []


async def test_conflicting_subscriptions_are_refused_naming_the_holder(
    agent: AgentServer, target: Pod
) -> None:
    async with sessions(agent, target, 3) as (a, b, c):
        sub_a = await IncomingClient(a).subscribe(8080, "steal", user("a"))
        with pytest.raises(PortTaken, match=r"a filtered steal by session .* add an HTTP filter"):
            await IncomingClient(b).subscribe(8080, "steal")
        await sub_a.close()
        whole = await IncomingClient(b).subscribe(8080, "steal")
        with pytest.raises(PortTaken, match="steals it without an HTTP filter"):
            await IncomingClient(c).subscribe(8080, "steal", user("c"))
        # A mirror reads copies of the packets: it takes nothing from the steal.
        mirror = await IncomingClient(c).subscribe(8080, "mirror")
        await mirror.close()
        await whole.close()


async def test_mirrors_and_a_filtered_steal_share_a_port(
    agent: AgentServer, target: Pod, client_pod: Pod
) -> None:
    async with sessions(agent, target, 3) as (m1, m2, s):
        mirrors = [await IncomingClient(m).subscribe(8080, "mirror") for m in (m1, m2)]
        steal = await IncomingClient(s).subscribe(8080, "steal", user("me"))
        copies: list[list[bytes]] = [[], []]

        async def copy(sub: Subscription, into: list[bytes]) -> None:
            async for conn in sub:
                while data := await conn.reader.read(65536):
                    into.append(data)

        tasks = [asyncio.ensure_future(copy(m, c)) for m, c in zip(mirrors, copies, strict=True)]
        seen: list[bytes] = []
        tasks.append(asyncio.ensure_future(answer_all(steal, seen, b"mine")))
        reqs = [request("/x", {"X-User": "me"}), request("/y")]
        answers = await send_requests_async(client_pod, target.address, 8080, reqs)
        assert bodies(answers) == ["mine", "pod"]
        assert pod_paths(target) == ["/y"]
        for into in copies:
            for _ in range(50):
                if b"GET /y" in b"".join(into):
                    break
                await asyncio.sleep(0.05)
            copied = b"".join(into)
            assert b"GET /x" in copied and b"GET /y" in copied  # every request, copied
        for t in tasks:
            t.cancel()
        for sub in (*mirrors, steal):
            await sub.close()


@pytest.fixture
def grpc_target(network: Network) -> Pod:
    return network.add_pod(
        "target", argv=[sys.executable, "-c", GRPC_SERVER, "8080", "pod"], wait_port=8080
    )


async def test_http2_streams_of_one_connection_go_to_their_sessions(
    grpc_target: Pod, network: Network
) -> None:
    client_pod = network.add_pod("client", argv=["/bin/sleep", "600"])
    server = AgentServer(TOKEN, listen="127.0.0.1:0", ping_timeout=2.0)
    await server.start()
    try:
        async with sessions(server, grpc_target, 2) as (a, b):
            sub_a = await IncomingClient(a).subscribe(8080, "steal", user("a"))
            sub_b = await IncomingClient(b).subscribe(8080, "steal", user("b"))
            with (
                local_server([sys.executable, "-c", GRPC_SERVER, "0", "A"]) as (port_a, _),
                local_server([sys.executable, "-c", GRPC_SERVER, "0", "B"]) as (port_b, _),
            ):
                filtered: list[bool] = []
                relaying = [
                    asyncio.ensure_future(relay_all(sub_a, port_a, filtered)),
                    asyncio.ensure_future(relay_all(sub_b, port_b, filtered)),
                ]
                calls = [["1", "a"], ["2", "b"], ["3", None], ["4", "a"], ["5", "b"]]
                try:
                    results = await asyncio.to_thread(
                        grpc_client, client_pod, grpc_target.address, 8080, calls
                    )
                finally:
                    for t in relaying:
                        t.cancel()
                    await asyncio.gather(*relaying, return_exceptions=True)
            assert filtered == [True, True]  # one connection each, read stream by stream
            assert [(r["answer"], r["side"]) for r in results] == [
                ("A:1:a", "A"),
                ("B:2:b", "B"),
                ("pod:3:-", "pod"),
                ("A:4:a", "A"),
                ("B:5:b", "B"),
            ]
            await sub_a.close()
            await sub_b.close()
    finally:
        await server.stop(grace=1.0)
    assert mirrord_rules(grpc_target) == []
