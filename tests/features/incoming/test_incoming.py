"""Incoming traffic with real pods, a real agent and real iptables rules in the target's
netns. The "local program" is a plain asyncio consumer of mirrord.features.incoming.client."""

from __future__ import annotations

import asyncio
import subprocess

import pytest

from mirrord.agent.server import AgentServer
from mirrord.client import AgentClient
from mirrord.features.incoming.client import HttpFilterSpec, IncomingClient, PortTaken, Subscription
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


def pod_requests(target: Pod) -> list[str]:
    return [line for line in target.read_log().splitlines() if line.startswith("REQ")]


async def test_steal_answers_from_local_and_pod_sees_nothing(
    session: AgentClient, target: Pod, client_pod: Pod
) -> None:
    sub = await IncomingClient(session).subscribe(8080, "steal")
    assert any("mirrord:steal:8080" in line for line in mirrord_rules(target))
    seen: list[bytes] = []

    async def local_program() -> None:
        conn = await sub.accept()
        assert conn.remote[0] == client_pod.address
        assert conn.original_destination == (target.address, 8080)
        await answer_requests(conn, seen)

    consumer = asyncio.ensure_future(local_program())
    answers = await send_requests_async(client_pod, target.address, 8080, [request("/stolen")])
    assert answers == [LOCAL_ANSWER.decode()]
    await asyncio.wait_for(consumer, 10)
    assert seen[0].startswith(b"GET /stolen HTTP/1.1\r\n")
    assert pod_requests(target) == []
    await sub.close()


async def test_mirror_pod_answers_byte_for_byte_and_local_gets_a_copy(
    session: AgentClient, target: Pod, client_pod: Pod
) -> None:
    req = request("/mirrored", {"Connection": "close"})
    direct = await send_requests_async(client_pod, target.address, 8080, [req])
    sub = await IncomingClient(session).subscribe(8080, "mirror")
    copies: list[bytes] = []

    async def local_program() -> None:
        conn = await sub.accept()
        assert conn.mode == "mirror"
        await conn.write(b"HTTP/1.1 500 dropped\r\n\r\n")  # the agent drops mirror answers
        while data := await conn.reader.read(65536):
            copies.append(data)
        await conn.close()

    consumer = asyncio.ensure_future(local_program())
    mirrored = await send_requests_async(client_pod, target.address, 8080, [req])
    await asyncio.wait_for(consumer, 10)
    # The Date header differs between two answers; everything else must be identical.
    assert [_without_date(a) for a in mirrored] == [_without_date(a) for a in direct]
    assert mirrored[0].endswith("\r\n\r\npod")
    assert b"".join(copies) == req.encode()
    assert len(pod_requests(target)) == 2
    await sub.close()


def _without_date(answer: str) -> str:
    return "\r\n".join(x for x in answer.split("\r\n") if not x.startswith("Date:"))


async def test_header_filter_splits_one_keep_alive_connection(
    session: AgentClient, target: Pod, client_pod: Pod
) -> None:
    sub = await IncomingClient(session).subscribe(
        8080, "steal", HttpFilterSpec(header_filter="^x-user: me$")
    )
    seen: list[bytes] = []

    async def local_program() -> None:
        conn = await sub.accept()
        assert conn.http_filtered
        await answer_requests(conn, seen)

    consumer = asyncio.ensure_future(local_program())
    reqs = [
        request("/1", {"X-User": "me"}),
        request("/2", {"X-User": "someone-else"}),
        request("/3"),
        request("/4", {"x-user": "ME"}),
    ]
    answers = await send_requests_async(client_pod, target.address, 8080, reqs)
    bodies = [a.rpartition("\r\n\r\n")[2] for a in answers]
    assert bodies == ["local", "pod", "pod", "local"]
    assert [line.split()[2] for line in pod_requests(target)] == ["/2", "/3"]
    await sub.close()
    await asyncio.wait_for(consumer, 10)
    assert [s.split(b" ")[1] for s in seen] == [b"/1", b"/4"]


async def test_node_traffic_is_not_stolen_unless_asked(
    session: AgentClient, target: Pod, client_pod: Pod
) -> None:
    incoming = IncomingClient(session)
    sub = await incoming.subscribe(8080, "steal")
    # The host is the node here: its request (like a kubelet probe) still reaches the pod.
    reader, writer = await asyncio.open_connection(target.address, 8080)
    writer.write(request("/healthz", {"Connection": "close"}).encode())
    answer = await reader.read()
    writer.close()
    assert answer.endswith(b"\r\n\r\npod")
    await sub.close()
    sub = await incoming.subscribe(8080, "steal", include_node_traffic=True)
    seen: list[bytes] = []
    consumer = asyncio.ensure_future(_answer_one(sub, seen))
    reader, writer = await asyncio.open_connection(target.address, 8080)
    writer.write(request("/healthz").encode())
    answer = await reader.readexactly(len(LOCAL_ANSWER))
    writer.close()
    assert answer == LOCAL_ANSWER
    await asyncio.wait_for(consumer, 10)
    await sub.close()


async def _answer_one(sub: Subscription, seen: list[bytes]) -> None:
    conn = await sub.accept()
    await answer_requests(conn, seen)


async def test_two_ports_coexist_and_a_second_steal_is_refused(
    agent: AgentServer, session: AgentClient, target: Pod, client_pod: Pod
) -> None:
    sub = await IncomingClient(session).subscribe(8080, "steal")
    other = await AgentClient.connect(agent.address, TOKEN, target.main_pid, timeout=10.0)
    try:
        other_incoming = IncomingClient(other)
        with pytest.raises(PortTaken, match="port 8080 of the target is already taken"):
            await other_incoming.subscribe(8080, "steal")
        sub2 = await other_incoming.subscribe(9090, "steal")
        rules = mirrord_rules(target)
        assert any("mirrord:steal:8080" in r for r in rules)
        assert any("mirrord:steal:9090" in r for r in rules)
        await sub2.close()
    finally:
        await other.close()
    rules = mirrord_rules(target)
    assert not any("9090" in r for r in rules)
    assert any("mirrord:steal:8080" in r for r in rules)
    await sub.close()


@pytest.mark.parametrize(
    ("existing", "nftables", "expected"),
    [
        (None, False, "iptables-legacy"),
        (None, True, "iptables-nft"),
        ("iptables-legacy", True, "iptables-legacy"),  # what the netns uses beats preference
        ("iptables-nft", False, "iptables-nft"),
    ],
)
async def test_backend_follows_the_netns_then_the_preference(
    session: AgentClient, target: Pod, existing: str | None, nftables: bool, expected: str
) -> None:
    if existing is not None:  # a rule someone else (a CNI, a mesh) put there
        done = target.run([existing, "-A", "INPUT", "-p", "udp", "--dport", "9", "-j", "ACCEPT"])
        assert done.returncode == 0, done.stderr
    sub = await IncomingClient(session).subscribe(8080, "steal", nftables=nftables)
    assert sub.backend == expected
    dump = target.run([f"{expected}-save", "-t", "nat"]).stdout.decode()
    assert "mirrord:steal:8080" in dump
    await sub.close()
    await session.close()
    assert mirrord_rules(target) == []


# Run in the client pod: one keep-alive request, its answer, then the connection stays open
# for a while before it closes.
KEEP_OPEN_CLIENT = r"""
import socket, sys, time
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=20)
s.sendall(sys.argv[3].encode())
got = b""
while not got.endswith(b"pod"):
    got += s.recv(4096)
time.sleep(3)
s.close()
print(got.decode().split("\r\n")[0])
"""


async def test_mirror_copy_of_an_open_connection_arrives_before_it_ends(
    session: AgentClient, target: Pod, client_pod: Pod
) -> None:
    # The copy is handed over after the pod's first answer (or the peer's EOF, or a few
    # milliseconds): a keep-alive connection's copy flows while it is still open.
    req = request("/kept-open")
    sub = await IncomingClient(session).subscribe(8080, "mirror")
    peer = asyncio.ensure_future(
        asyncio.to_thread(
            client_pod.run,
            ["python3", "-c", KEEP_OPEN_CLIENT, target.address, "8080", req],
            timeout=30,
        )
    )
    conn = await asyncio.wait_for(sub.accept(), 10)
    first = await asyncio.wait_for(conn.reader.readexactly(len(req)), 10)
    assert first == req.encode()
    assert not peer.done()  # the peer's connection is still open
    done = await peer
    assert done.stdout.decode().strip() == "HTTP/1.1 200 OK", done.stderr
    assert await asyncio.wait_for(conn.reader.read(), 10) == b""  # then its EOF
    await conn.close()
    await sub.close()


# Run in the client pod: one keep-alive connection; a GET, then (after a line on stdin)
# another GET on the same connection; prints each body.
TWO_GETS = r"""
import socket, sys
s = socket.create_connection((sys.argv[1], 8080), timeout=20)
f = s.makefile("rb")
def get(path):
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
    length = 0
    while (line := f.readline()) != b"\r\n":
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    return f.read(length).decode()
print(get("/before"), flush=True)
sys.stdin.readline()
print(get("/during"), flush=True)
"""


async def test_a_connection_made_before_the_steal_keeps_reaching_the_pod(
    session: AgentClient, target: Pod, client_pod: Pod
) -> None:
    """The pod's netns has no conntrack until our rules arrive, so the next packet of a
    connection it already had looked new and was redirected to the agent's listener,
    which reset it: every steal start reset the keep-alive connections in flight. Only
    SYNs are redirected now: old connections finish with the pod, new ones are stolen."""
    proc = client_pod.spawn(
        ["python3", "-c", TWO_GETS, target.address],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stdin is not None
    assert (await asyncio.to_thread(proc.stdout.readline)).strip() == b"pod"
    sub = await IncomingClient(session).subscribe(8080, "steal", include_node_traffic=True)
    seen: list[bytes] = []
    consumer = asyncio.ensure_future(_answer_one(sub, seen))
    proc.stdin.write(b"go\n")
    proc.stdin.flush()
    # The old connection: still the pod's (it used to be reset).
    assert (await asyncio.to_thread(proc.stdout.readline)).strip() == b"pod"
    assert await asyncio.to_thread(proc.wait, 20) == 0
    answers = await send_requests_async(client_pod, target.address, 8080, [request("/new")])
    assert answers == [LOCAL_ANSWER.decode()]  # a new connection is stolen
    await asyncio.wait_for(consumer, 10)
    await sub.close()
