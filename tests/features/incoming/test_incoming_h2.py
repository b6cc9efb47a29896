"""HTTP/2 (prior knowledge) and gRPC with an HTTP filter, per stream: a real HTTP/2 server
in the target pod, a real one as the local program, a real client in a client pod that
sends concurrent streams on one connection; the real agent and iptables in between."""

from __future__ import annotations

import asyncio
import sys

import pytest

from mirrord.client import AgentClient
from mirrord.features.incoming.client import HttpFilterSpec, IncomingClient
from mirrord.testpod import Network, Pod
from tests.features.incoming.h2_helpers import (
    GRPC_SERVER,
    NODE_H2_SERVER,
    grpc_client,
    local_server,
    node_client,
    relay_all,
)

pytestmark = pytest.mark.root

SERVERS = {
    "node": ["node", "-e", NODE_H2_SERVER, "8080", "pod"],
    "grpc": [sys.executable, "-c", GRPC_SERVER, "8080", "pod"],
}


@pytest.fixture
def target(network: Network, request: pytest.FixtureRequest) -> Pod:
    return network.add_pod("target", argv=SERVERS[request.param], wait_port=8080)


def pod_requests(target: Pod) -> list[str]:
    return [line for line in target.read_log().splitlines() if line.startswith("REQ")]


@pytest.mark.parametrize("target", ["node"], indirect=True)
async def test_h2_streams_of_one_connection_split_by_header(
    session: AgentClient, target: Pod, client_pod: Pod
) -> None:
    sub = await IncomingClient(session).subscribe(
        8080, "steal", HttpFilterSpec(header_filter="^x-user: me$")
    )
    me = {"x-user": "me"}
    # Bodies above the 64 KiB default window: flow control is relayed both ways.
    reqs: list[tuple[str, dict[str, str], int]] = [
        ("/a", {}, 0),
        ("/b", me, 0),
        ("/c", {"x-user": "other"}, 200_000),
        ("/d", me, 300_000),
        ("/e", {}, 10),
        ("/f", me, 0),
    ]
    with local_server(["node", "-e", NODE_H2_SERVER, "0", "local"]) as (port, local):
        delivered: list[bool] = []
        relaying = asyncio.ensure_future(relay_all(sub, port, delivered))
        try:
            answers = await asyncio.to_thread(
                node_client, client_pod, target.address, 8080, list(reqs)
            )
        finally:
            await sub.close()
            relaying.cancel()
            await asyncio.gather(relaying, return_exceptions=True)
        local.kill()
        local_log = local.communicate()[0]
    expected = []
    for path, headers, size in reqs:
        side = "local" if headers == me else "pod"
        user = headers.get("x-user", "-")
        expected.append(
            {
                "status": 200,
                "from": side,
                "body": f"{side}:{path}:{user}:{size}",
                "trailers": side,
            }
        )
    assert answers == expected
    # Concurrent streams: the servers see them in any order.
    assert sorted(pod_requests(target)) == ["REQ /a -", "REQ /c other", "REQ /e -"]
    assert sorted(line for line in local_log.splitlines() if line.startswith("REQ")) == [
        "REQ /b me",
        "REQ /d me",
        "REQ /f me",
    ]
    assert delivered == [True]  # one filtered connection carried every matching stream


@pytest.mark.parametrize("target", ["grpc"], indirect=True)
async def test_grpc_calls_routed_by_metadata(
    session: AgentClient, target: Pod, client_pod: Pod
) -> None:
    sub = await IncomingClient(session).subscribe(
        8080, "steal", HttpFilterSpec(header_filter="^x-user: me$")
    )
    calls = [["one", "me"], ["two", None], ["fail", "me"], ["fail", None], ["three", "me"]]
    with local_server([sys.executable, "-c", GRPC_SERVER, "0", "local"]) as (port, _):
        delivered: list[bool] = []
        relaying = asyncio.ensure_future(relay_all(sub, port, delivered))
        try:
            results = await asyncio.to_thread(grpc_client, client_pod, target.address, 8080, calls)
        finally:
            await sub.close()
            relaying.cancel()
            await asyncio.gather(relaying, return_exceptions=True)
    assert results == [
        {"code": "OK", "answer": "local:one:me", "details": "", "side": "local"},
        {"code": "OK", "answer": "pod:two:-", "details": "", "side": "pod"},
        {"code": "NOT_FOUND", "answer": None, "details": "local says no", "side": "local"},
        {"code": "NOT_FOUND", "answer": None, "details": "pod says no", "side": "pod"},
        {"code": "OK", "answer": "local:three:me", "details": "", "side": "local"},
    ]
    assert sorted(pod_requests(target)) == ["REQ fail -", "REQ two -"]
    assert delivered == [True]
