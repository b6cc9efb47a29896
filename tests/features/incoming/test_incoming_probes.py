"""#13: traffic from the node is taken like any other; a Kubernetes target's probes stay
with the pod, precisely. The host is the node here (the pods' bridge gateway), as for a
kubelet probe or a NodePort Service with SNAT. Real agent, real iptables, real servers."""

from __future__ import annotations

import asyncio
import sys

import pytest

from mirrord.client import AgentClient
from mirrord.client.probes import ProbeSpec
from mirrord.features.incoming.client import IncomingClient
from mirrord.testpod import Network, Pod
from tests.features.incoming.h2_helpers import GRPC_SERVER, grpc_client, local_server, relay_all
from tests.features.incoming.incoming_helpers import (
    answer_all,
    mirrord_rules,
    request,
    send_requests_async,
)

pytestmark = pytest.mark.root

HEALTHZ = ProbeSpec("http", 8080, "readiness probe", "/healthz")


def bodies(answers: list[str]) -> list[str]:
    return [a.rpartition("\r\n\r\n")[2] for a in answers]


def pod_paths(target: Pod) -> list[str]:
    return [line.split()[2] for line in target.read_log().splitlines() if line.startswith("REQ")]


async def test_the_nodes_requests_are_stolen_like_any_other(
    session: AgentClient, target: Pod, client_pod: Pod
) -> None:
    """A plain curl from the host to the pod was answered by the pod, silently."""
    sub = await IncomingClient(session).subscribe(8080, "steal", include_node_traffic=True)
    assert not any("mirrord:node" in line for line in mirrord_rules(target))
    seen: list[bytes] = []
    consumer = asyncio.ensure_future(answer_all(sub, seen))
    from_node = await send_requests_async(None, target.address, 8080, [request("/a")])
    from_pod = await send_requests_async(client_pod, target.address, 8080, [request("/b")])
    assert bodies(from_node) == bodies(from_pod) == ["local"]
    assert pod_paths(target) == []
    await sub.close()
    consumer.cancel()


async def test_an_http_probes_requests_from_the_node_stay_with_the_pod(
    session: AgentClient, target: Pod, client_pod: Pod
) -> None:
    """On one keep-alive connection from the node, the probe's path goes to the pod and
    every other request to the program; the same path from another pod is stolen."""
    sub = await IncomingClient(session).subscribe(
        8080, "steal", include_node_traffic=True, probes=[HEALTHZ]
    )
    seen: list[bytes] = []
    consumer = asyncio.ensure_future(answer_all(sub, seen))
    reqs = [request("/healthz"), request("/api"), request("/healthz?verbose=1"), request("/x")]
    from_node = await send_requests_async(None, target.address, 8080, reqs)
    assert bodies(from_node) == ["pod", "local", "pod", "local"]
    from_pod = await send_requests_async(client_pod, target.address, 8080, [request("/healthz")])
    assert bodies(from_pod) == ["local"]
    assert pod_paths(target) == ["/healthz", "/healthz?verbose=1"]
    await sub.close()
    consumer.cancel()
    assert sorted(s.split(b" ")[1] for s in seen) == [b"/api", b"/healthz", b"/x"]


async def test_a_tcp_probe_keeps_the_nodes_connections_to_its_port(
    session: AgentClient, target: Pod, client_pod: Pod
) -> None:
    probe = ProbeSpec("tcp", 8080, "liveness probe")
    sub = await IncomingClient(session).subscribe(
        8080, "steal", include_node_traffic=True, probes=[probe]
    )
    assert any("mirrord:node" in line for line in mirrord_rules(target))
    seen: list[bytes] = []
    consumer = asyncio.ensure_future(answer_all(sub, seen))
    assert bodies(await send_requests_async(None, target.address, 8080, [request("/n")])) == ["pod"]
    from_pod = await send_requests_async(client_pod, target.address, 8080, [request("/p")])
    assert bodies(from_pod) == ["local"]
    await sub.close()
    consumer.cancel()


async def test_mirror_copies_the_nodes_requests_too(session: AgentClient, target: Pod) -> None:
    sub = await IncomingClient(session).subscribe(
        8080, "mirror", include_node_traffic=True, probes=[HEALTHZ]
    )
    copies: list[bytes] = []

    async def local_program() -> None:
        conn = await sub.accept()
        while data := await conn.reader.read(65536):
            copies.append(data)

    consumer = asyncio.ensure_future(local_program())
    req = request("/healthz", {"Connection": "close"})
    assert bodies(await send_requests_async(None, target.address, 8080, [req])) == ["pod"]
    await asyncio.wait_for(consumer, 10)
    assert b"".join(copies) == req.encode()
    await sub.close()


@pytest.fixture
def grpc_target(network: Network) -> Pod:
    return network.add_pod(
        "target", argv=[sys.executable, "-c", GRPC_SERVER, "8080", "pod"], wait_port=8080
    )


async def test_a_grpc_probes_health_checks_from_the_node_stay_with_the_pod(
    grpc_target: Pod, network: Network
) -> None:
    from mirrord.agent.server import AgentServer
    from tests.features.incoming.incoming_helpers import TOKEN

    client_pod = network.add_pod("client", argv=["/bin/sleep", "600"])
    server = AgentServer(TOKEN, listen="127.0.0.1:0", ping_timeout=2.0)
    await server.start()
    try:
        session = await AgentClient.connect(server.address, TOKEN, grpc_target.main_pid, timeout=10)
        probe = ProbeSpec("grpc", 8080, "liveness probe")
        sub = await IncomingClient(session).subscribe(
            8080, "steal", include_node_traffic=True, probes=[probe]
        )
        calls = [["health", None], ["one", None], ["health", None]]
        with local_server([sys.executable, "-c", GRPC_SERVER, "0", "local"]) as (port, _):
            filtered: list[bool] = []
            relaying = asyncio.ensure_future(relay_all(sub, port, filtered))
            try:
                from_node = await asyncio.to_thread(
                    grpc_client, None, grpc_target.address, 8080, calls
                )
                from_pod = await asyncio.to_thread(
                    grpc_client, client_pod, grpc_target.address, 8080, [["health", None]]
                )
            finally:
                await sub.close()
                relaying.cancel()
                await asyncio.gather(relaying, return_exceptions=True)
        assert [(r["code"], r["side"]) for r in from_node] == [
            ("OK", "pod"),
            ("OK", "local"),
            ("OK", "pod"),
        ]
        assert [(r["code"], r["side"]) for r in from_pod] == [("OK", "local")]
        assert filtered == [True, False]  # the node's connection, read per stream
        await session.close()
    finally:
        await server.stop(grace=1.0)
    assert mirrord_rules(grpc_target) == []
